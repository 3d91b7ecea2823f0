"""Every console label exists in Chinese and English, and every value the platform sends has one.

The tables are read from ``console/static/js/i18n.js`` itself (its two object literals), so a key
added to one language only, an enum value added to ``broker/contracts.py`` without a label, a new
audit action, work-order stage, rule category or state-changing console route without a label fails here.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from alerting.config import UserRole
from alerting.surface import NOTIFICATION_STATUSES
from alerting.workorders.desk import ACTIONS as WO_ACTIONS
from alerting.workorders.model import Stage
from broker.contracts import AlertStatus, Channel, Kind, RejectReason, Severity
from console.web import build_app
from edge.hj212.codes import DATA_FLAGS
from edge.modbus.tagmap import Quality

ROOT = Path(__file__).resolve().parents[3]
I18N = ROOT / "console" / "static" / "js" / "i18n.js"
JS = ROOT / "console" / "static" / "js"
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*:\s*"((?:[^"\\]|\\.)*)"')
_LEFTOVER = re.compile(r"^[\s,]*$")


def table(name: str) -> dict[str, str]:
    """The ``const <name> = { ... };`` object literal of i18n.js as a dict (keys and string values only)."""
    text = I18N.read_text(encoding="utf-8")
    m = re.search(rf"^const {name} = \{{\n(.*?)\n\}};$", text, re.S | re.M)
    assert m is not None, f"no table {name} in {I18N}"
    body = "\n".join(line for line in m.group(1).splitlines() if not line.strip().startswith("//"))
    out: dict[str, str] = {}
    for k, v in _PAIR.findall(body):
        assert k not in out, f"{name}.{k} defined twice"
        out[k] = v
    # Everything in the literal must be a key: "value" pair; anything else would be silently skipped.
    assert _LEFTOVER.match(_PAIR.sub("", body)), f"unparsed text in {name}: {_PAIR.sub('', body).strip()[:200]!r}"
    return out


ZH, EN = table("zh"), table("en")
INTENTIONALLY_EMPTY = {("en", "rows")}  # "1-50 of 120" needs no word after the count in English


def need(key: str) -> None:
    missing = [lang for lang, tab in (("zh", ZH), ("en", EN)) if key not in tab]
    assert not missing, f"label {key!r} missing in {missing}"


def test_tables_parse_to_a_sensible_size() -> None:
    assert len(ZH) > 300 and len(EN) > 300
    assert ZH["kind_elevator"] == "电梯" and EN["kind_elevator"] == "Elevator"


def test_every_key_has_both_languages_and_no_empty_text() -> None:
    assert set(ZH) - set(EN) == set(), f"only in zh: {sorted(set(ZH) - set(EN))}"
    assert set(EN) - set(ZH) == set(), f"only in en: {sorted(set(EN) - set(ZH))}"
    empty = [(lang, k) for lang, tab in (("zh", ZH), ("en", EN)) for k, v in tab.items() if not v.strip()]
    assert set(empty) <= INTENTIONALLY_EMPTY, empty


def test_chinese_labels_of_enums_are_chinese() -> None:
    # A zh label copied from the English one would pass the key check but still show English.
    prefixes = ("kind_", "sev_", "st_", "ind_", "role_", "cat_", "act_", "wo_", "mute_", "nk_", "ch_", "rej_", "wd_",
                "aud_", "q_")
    latin = [k for k, v in ZH.items() if k.startswith(prefixes) and not re.search(r"[\u4e00-\u9fff]", v)]
    assert latin == []


@pytest.mark.parametrize(("prefix", "values"), [
    ("kind", [k.value for k in Kind]),
    ("sev", [s.value for s in Severity]),
    ("st", [s.value for s in AlertStatus]),
    ("tab", [s.value for s in AlertStatus]),
    ("ch", [c.value for c in Channel]),
    ("rej", [r.value for r in RejectReason]),
    ("role", list(typing.get_args(UserRole))),
    ("wo", list(typing.get_args(Stage))),
    ("n", list(NOTIFICATION_STATUSES)),
    ("wd", [str(d) for d in range(7)]),
    ("q", list(DATA_FLAGS)),
    ("q", list(typing.get_args(Quality))),
])
def test_every_enum_value_has_a_label(prefix: str, values: list[str]) -> None:
    assert values
    for v in values:
        need(f"{prefix}_{v}")


def _sources(folder: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / folder).rglob("*.py")))


def test_every_alert_audit_action_has_a_label() -> None:
    src = _sources("alerting")
    actions = set(re.findall(r'\baction="([a-z_]+)"', src))
    assert {"created", "acknowledged", "ack_overdue", "resolve_overdue", "escalated"} <= actions
    # Work orders write wo_<action> events: the desk's actions and the events the system writes.
    wo_src = (ROOT / "alerting" / "workorders" / "desk.py").read_text(encoding="utf-8")
    system = set(re.findall(r'_event\([^,()]+,\s*[^,()]+,\s*"system",\s*"([a-z_]+)"', wo_src))
    assert {"created", "dispatched"} <= system
    actions |= {f"wo_{a}" for a in (*WO_ACTIONS, *system)}
    for a in sorted(actions):
        need(f"act_{a}")


def test_every_notification_and_mute_kind_has_a_label() -> None:
    src = _sources("alerting")
    kinds = set(re.findall(r'\bkind="([a-z_]+)"', src)) | set(re.findall(r'_queue_for\(\[[^\]]*\],\s*"([a-z_]+)"', src))
    # A group flush's kind (repeat / firing / resolved) and an escalation rung's (repeat / escalation) are chosen
    # by a conditional expression: every literal on such a line is a kind.
    lines = re.findall(r"kind ?= ?(.+ if (?:fl\.repeat|rep) else .+)\n", src)
    assert len(lines) >= 2, "the group notification's or the escalation's kinds moved; update this test"
    for line in lines:
        kinds |= set(re.findall(r'"([a-z_]+)"', line))
    assert {"firing", "resolved", "repeat", "overdue", "digest", "escalation"} <= kinds
    for k in sorted(kinds):
        need(f"nk_{k}")
    mutes = set(re.findall(r'MuteReason\("([a-z_]+)"', (ROOT / "alerting" / "muting.py").read_text(encoding="utf-8")))
    assert mutes == {"silence", "maintenance", "inhibition"}
    for k in sorted(mutes):
        need(f"mute_{k}")


def test_every_rule_category_and_industry_has_a_label() -> None:
    cats: set[str] = set()
    for f in sorted((ROOT / "rules" / "packs").glob("*.yaml")):
        for rule in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("rules", []):
            c = (rule.get("labels") or {}).get("category")
            if c:
                cats.add(str(c))
    assert len(cats) > 10
    for c in sorted(cats):
        need(f"cat_{c}")
    industries: set[str] = set()
    for folder in ("deploy", "vigil", "simulators", "console"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".yaml", ".yml"):
                industries |= set(re.findall(r'industry(?:="|: ?"?)([a-z_]+)', p.read_text(encoding="utf-8")))
    assert {"elevator", "emission", "safety"} <= industries
    for i in sorted(industries):
        need(f"ind_{i}")


def audit_key(action: str) -> str:
    """Mirror of i18n.js ``auditKey``."""
    return "aud_" + re.sub(r"[^a-z0-9]+", "_", action.lower()).strip("_")


def test_every_state_changing_console_route_has_an_audit_label() -> None:
    app = build_app(None)  # type: ignore[arg-type]  # only the route table is read
    actions = {"login", "logout"}
    for r in app.router.routes():
        if r.method in ("GET", "HEAD", "OPTIONS") or r.resource is None:
            continue
        if r.resource.canonical in ("/api/login", "/api/logout"):
            continue
        actions.add(f"{r.method} {r.resource.canonical}")
    assert "POST /api/maintenance" in actions
    for a in sorted(actions):
        need(audit_key(a))


def test_every_literal_key_the_pages_ask_for_exists() -> None:
    used: set[str] = set()
    for p in sorted(JS.glob("*.js")):
        used |= set(re.findall(r'\bt\("([a-z0-9_]+)"\s*[,)]', p.read_text(encoding="utf-8")))
    assert len(used) > 100
    assert sorted(used - set(ZH)) == []


def test_views_do_not_concatenate_kind_keys_without_a_fallback() -> None:
    # t("kind_" + x) shows the raw key "kind_foo" for an unknown kind; kindLabel()/label() fall back to the value.
    offenders = [p.name for p in JS.glob("*.js") if re.search(r't\("(kind|ind|role|cat)_"\s*\+', p.read_text("utf-8"))]
    assert offenders == []
