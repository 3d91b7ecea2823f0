"""Secret masking, storm control, handling figures, templates, config validation."""

from __future__ import annotations

import pytest

from alerting.config import AlertingConfigError, load_config
from alerting.figures import handling_figures
from alerting.lifecycle import AlertRecord
from alerting.stages import StormControl
from alerting.templates import MessageTemplates, mask_text, mask_url
from broker.contracts import AlertStatus, Kind, Severity


@pytest.mark.parametrize(("url", "masked"), [
    ("json://127.0.0.1:8086/vigil/notify", "json://***@127.0.0.1:8086/..."),
    ("mailto://user:secretpw@smtp.example.com:587?to=a@b.c", "mailto://***@smtp.example.com:587/..."),
    ("tgram://123456789:AAbbCCddEEff/12345", "tgram://***@***/..."),
    ("wecombot://abcdef0123456789", "wecombot://***@***"),
    ("dingtalk://token_secret_value/", "dingtalk://***@***"),
    ("mqtt://user:pw@localhost:1883/vigil/x", "mqtt://***@localhost:1883/..."),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "secret" not in mask_url(url) and "AAbb" not in mask_url(url)


def test_mask_text_hides_pieces() -> None:
    url = "mailto://user:hunter22@smtp.example.com/?to=a@b.c"
    assert "hunter22" not in mask_text(f"failed {url} and again hunter22", [url])


def test_storm_control_digest() -> None:
    s = StormControl(max_per_minute=3, digest_s=60)
    assert [s.admit("p", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    s.hold("p", "alert 4", 3)
    assert s.due_digests(62) == []
    assert s.due_digests(63) == [("p", ["alert 4"])]
    assert s.admit("p", 61)  # the window slid past the first send
    assert s.held() == 0


def rec(aid: str, start: float, *, acked: float | None = None, ended: float | None = None, unit: str = "u1",
        industry: str = "elevator") -> AlertRecord:
    return AlertRecord(id=aid, fingerprint=aid, rule="r", severity=Severity.CRITICAL,
                       status=AlertStatus.RESOLVED if ended else AlertStatus.FIRING, kind=Kind.ELEVATOR,
                       device_id="d", site="s1", unit=unit, industry=industry, starts_at=start, updated_at=start,
                       acknowledged_at=acked, ends_at=ended, ack_by=start + 60, resolve_by=start + 1800)


def test_handling_figures() -> None:
    f = handling_figures([
        rec("a", 0, acked=30, ended=600),          # on time
        rec("b", 0, acked=90, ended=600),          # acked late
        rec("c", 0, acked=10, ended=3600, unit="u2", industry="emission"),  # resolved late
        rec("d", 1000),                            # open, still inside both deadlines at now=1030
    ], now=1030)
    assert f["total"] == 4 and f["closed"] == 3 and f["closure_rate"] == 0.75
    assert f["on_time_rate"] == pytest.approx(1 / 3)
    assert f["mtta_s"] == pytest.approx((30 + 90 + 10) / 3)
    assert f["mttr_s"] == pytest.approx((600 + 600 + 3600) / 3)
    assert f["by"]["unit"] == {"u1": 3, "u2": 1} and f["by"]["industry"]["emission"] == 1
    assert handling_figures([], 0)["closure_rate"] is None


def test_templates_zh_and_en() -> None:
    t = MessageTemplates("http://console:8080/", "Asia/Shanghai")
    r = rec("a1", 1_790_000_000)
    zh = t.render("firing", [r], [], "zh")
    en = t.render("escalation", [r, rec("a2", 1_790_000_000)], [], "en", step=2)
    assert zh.title.startswith("[紧急] 告警") and "http://console:8080/alerts/a1" in zh.body
    assert en.title.startswith("[CRITICAL] Escalated") and "(+1)" in en.title and "step 2" in en.title


def test_config_defaults_and_errors() -> None:
    cfg = load_config({})
    assert cfg.route.routes[0].escalation == "135" and cfg.locale == "zh"
    with pytest.raises(AlertingConfigError, match="unknown"):
        load_config({"route": {"receivers": ["nope"]}})
    with pytest.raises(AlertingConfigError, match="bogus"):
        load_config({"bogus": 1})
    with pytest.raises(AlertingConfigError, match="person"):
        load_config({"route": {"receivers": ["console-log"]},
                     "escalation_policies": [{"name": "p", "steps": [{"delay_s": 0, "targets": ["person:x"]}]}]})


def test_documented_example_config_is_valid() -> None:
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).parents[3] / "docs" / "alerting.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert block is not None
    cfg = load_config(yaml.safe_load(block.group(1))["alerting"])
    assert [p.name for p in cfg.escalation_policies] == ["135", "standard"]
    assert cfg.rosters[0].handovers == ["08:00", "20:00"]


def test_template_overrides_and_validation() -> None:
    t = MessageTemplates("http://c", overrides={"zh": {"line": "{sev}|{device_id}|{link}", "firing": "报警"}})
    r = t.render("firing", [rec("a1", 1_790_000_000)], [], "zh")
    assert r.title.startswith("[紧急] 报警") and r.body == "[紧急]|d|http://c/alerts/a1"
    with pytest.raises(AlertingConfigError, match="bad field"):
        load_config({"templates": {"zh": {"line": "{nope}"}}})
    with pytest.raises(AlertingConfigError, match="unknown template"):
        load_config({"templates": {"en": {"title": "x"}}})
