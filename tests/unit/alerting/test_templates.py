"""Every shipped notification template renders title and body from one context (no ``?``, no raw fields)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerting.lifecycle import AlertRecord
from alerting.templates import KIND_TITLES, LINE, MessageTemplates
from broker.contracts import AlertStatus, Channel, DeviceMessage, Kind, Severity, Telemetry
from rules.engine import RuleEngine
from rules.loader import load_rule_text

START = 1_790_000_000.0


def probe_alert(summary: str = "探针 {device_id}", summary_en: str = "probe {device_id}") -> AlertRecord:
    return AlertRecord(id="a-1", fingerprint="fp", rule="probe_down", severity=Severity.MAJOR,
                       status=AlertStatus.FIRING, kind=Kind.SENSOR, device_id="probe-7", site="plant-2",
                       unit="env-office", industry="emission", starts_at=START, updated_at=START,
                       summary=summary, summary_en=summary_en, ack_by=START + 300, resolve_by=START + 3600)


CASES = [(loc, kind) for loc in KIND_TITLES for kind in KIND_TITLES[loc]]


@pytest.mark.parametrize(("locale", "kind"), CASES)
def test_shipped_title_and_line_share_one_context(locale: str, kind: str) -> None:
    t = MessageTemplates("http://console.example", "Asia/Shanghai")
    firing, resolved = ([], [probe_alert()]) if kind == "resolved" else ([probe_alert()], [])
    out = t.render(kind, firing, resolved, locale, step=2 if kind == "escalation" else None)
    for text in (out.title, out.body):
        assert "{" not in text and " ?" not in text, text
    expected = "探针 probe-7" if locale == "zh" else "probe probe-7"
    assert expected in out.body
    if kind != "digest":
        assert expected in out.title and "probe-7" in out.title
    assert "http://console.example/alerts/a-1" in out.body and "plant-2" in out.body


@pytest.mark.parametrize("locale", sorted(LINE))
def test_shipped_line_names_only_context_fields(locale: str) -> None:
    t = MessageTemplates("http://c")
    ctx = t.context(probe_alert(), locale)
    line = t.line(probe_alert(), locale)
    assert ctx["device_id"] in line and ctx["ack_by"] in line and ctx["sev"] in line


def test_title_override_uses_the_same_fields_as_the_body() -> None:
    t = MessageTemplates("http://c", overrides={"zh": {"firing": "探针 {device_id} 告警", "line": "{summary}|{rule}"}})
    out = t.render("firing", [probe_alert(summary="探针离线")], [], "zh")
    assert out.title.startswith("[重要] 探针 probe-7 告警: 探针离线 - probe-7")
    assert out.body == "探针离线|probe_down"


def test_unknown_field_is_left_as_written_not_replaced_by_a_question_mark() -> None:
    t = MessageTemplates("http://c", overrides={"en": {"line": "{summary} {nope}"}})
    assert t.line(probe_alert(summary_en="x"), "en") == "x {nope}"


def test_rule_summary_with_device_id_renders_in_the_transition() -> None:
    rules, errors = load_rule_text("""\
rules:
  - name: probe_hot
    kind: sensor
    severity: major
    condition: "temp > 50"
    summary: "探针 {device_id}"
    summary_en: "probe {device_id} ({kind})"
""", "probe.yaml")
    assert errors == []
    now = datetime.now(UTC)
    msg = DeviceMessage(Kind.SENSOR, "probe-7", Channel.TELEMETRY, Telemetry(ts=now, metrics={"temp": 80.0}),
                        now.timestamp())
    out = RuleEngine(rules).process([msg], now.timestamp())
    assert [(t.summary, t.summary_en) for t in out] == [("探针 probe-7", "probe probe-7 (sensor)")]
