"""The health model notices its own wall clock stepping against the monotonic clock (NTP step, `date -s`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.unit.vigil.test_health import FakeAlerting, FakeMqtt, FakePlatform, FakeStorage
from vigil.config import VigilConfig
from vigil.health import HealthConfig, HealthMonitor


def test_a_wall_clock_step_fails_the_clock_check_for_its_quiet_time(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    platform = FakePlatform(VigilConfig(node="n1", state_dir=str(tmp_path)), FakeMqtt(),
                            {"alerting": FakeAlerting(), "storage": FakeStorage()})
    (tmp_path / "n1").mkdir()
    mon = HealthMonitor(platform, HealthConfig(disk_min_free_bytes=0, clock_step_quiet_s=0.2))  # type: ignore[arg-type]
    assert mon.step() == []
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)  # the wall clock jumps, the monotonic one does not
    fired = mon.step()
    assert [(t.rule, t.status) for t in fired] == [("vigil_clock", "firing")]
    assert "platform clock stepped +7200 s" in fired[0].summary_en
    assert mon.step() == []  # one alert per incident; a slew-free wall clock keeps its new offset
    time.sleep(0.3)
    assert [(t.rule, t.status) for t in mon.step()] == [("vigil_clock", "resolved")]
    monkeypatch.setattr(time, "time", lambda: real() - 600)
    fired = mon.step()
    assert [(t.rule, t.status) for t in fired] == [("vigil_clock", "firing")]
    assert "stepped -7800 s" in fired[0].summary_en
