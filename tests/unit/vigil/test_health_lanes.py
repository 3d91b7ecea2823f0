"""The health model watches the alarm lane's session as well as the telemetry session."""

from __future__ import annotations

import time
from pathlib import Path

from tests.unit.vigil.test_health import FakeMqtt, make


def test_a_stalled_alarm_lane_is_a_stalled_ingest(tmp_path: Path) -> None:
    mon, platform = make(tmp_path)
    alarm = FakeMqtt()
    platform.clients = lambda: [platform.mqtt, alarm]  # type: ignore[attr-defined]
    assert mon.step() == []
    alarm.stalled_since = time.monotonic() - 60
    alarm.last_not_durable = "rules journal: disk full"
    fired = mon.step()
    assert [t.rule for t in fired] == ["vigil_ingest"] and "rules journal" in fired[0].summary_en
    alarm.stalled_since = None
    assert [t.rule for t in mon.step()] == ["vigil_ingest"]  # resolved
    assert mon.report()["status"] != "failing"


def test_an_alarm_lane_cut_from_the_broker_counts_as_broker_down(tmp_path: Path) -> None:
    mon, platform = make(tmp_path)
    alarm = FakeMqtt()
    alarm.connected = False
    platform.clients = lambda: [platform.mqtt, alarm]  # type: ignore[attr-defined]
    assert {c.name: c.ok for c in mon.evaluate()}["broker"]  # just cut: not yet past broker_down_s
    mon._down_since["broker_down"] -= 3600  # an hour ago
    assert not {c.name: c.ok for c in mon.evaluate()}["broker"]
    alarm.connected = True
    assert {c.name: c.ok for c in mon.evaluate()}["broker"]
