"""The health model's decisions: one firing and one resolved transition per incident, retried if not taken."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.contracts import Kind, Transition
from tests.support.mqtt_fake import FakeMqtt
from vigil.config import VigilConfig
from vigil.health import HealthConfig, HealthMonitor, prometheus_text
from vigil.runtime import LoopMonitor


@dataclass
class FakeAlerting:
    taken: list[Transition] = field(default_factory=list)
    refuse: bool = False
    counters: dict[str, int] = field(default_factory=dict)
    by_fingerprint: dict[str, str] = field(default_factory=dict)

    def on_local_transitions(self, items: list[tuple[Transition, bytes]]) -> None:
        if self.refuse:
            raise OSError(28, "No space left on device")
        self.taken.extend(t for t, _ in items)

    def stats(self) -> dict[str, float]:
        return {}


@dataclass
class FakeStorage:
    st: dict[str, float] = field(default_factory=lambda: {"outbox_pending_bytes": 0.0, "outbox_max_bytes": 100.0,
                                                          "backend_unavailable_s": 0.0, "outbox_dropped": 0.0})

    def stats(self) -> dict[str, float]:
        return self.st


@dataclass
class FakePlatform:
    config: VigilConfig
    mqtt: FakeMqtt
    stages: dict[str, Any]
    monitor: LoopMonitor = field(default_factory=LoopMonitor)

    def stats(self, peek: bool = False) -> dict[str, Any]:
        return {"storage": self.stages["storage"].stats(), "mqtt": {"connected": self.mqtt.connected}}


def make(tmp_path: Path) -> tuple[HealthMonitor, FakePlatform]:
    platform = FakePlatform(VigilConfig(node="n1", state_dir=str(tmp_path)), FakeMqtt(),
                            {"alerting": FakeAlerting(), "storage": FakeStorage()})
    (tmp_path / "n1").mkdir()
    cfg = HealthConfig(backend_down_s=10, disk_min_free_bytes=0)
    return HealthMonitor(platform, cfg), platform  # type: ignore[arg-type]


def test_one_firing_and_one_resolved_transition_per_incident(tmp_path: Path) -> None:
    mon, platform = make(tmp_path)
    alerting = platform.stages["alerting"]
    assert mon.step() == []
    platform.stages["storage"].st["backend_unavailable_s"] = 30.0
    fired = mon.step()
    assert [(t.rule, t.status, t.kind, t.device_id) for t in fired] == [("vigil_influxdb", "firing", Kind.VIGIL, "n1")]
    assert mon.step() == []  # still failing: nothing new
    platform.stages["storage"].st["backend_unavailable_s"] = 0.0
    assert [(t.rule, t.status) for t in mon.step()] == [("vigil_influxdb", "resolved")]
    assert [t.status for t in alerting.taken] == ["firing", "resolved"]
    assert platform.mqtt.topics() == ["vigil/v1/transitions/vigil/n1"] * 2
    assert mon.report()["status"] == "ok"


def test_an_alert_the_local_alerting_could_not_take_is_raised_again(tmp_path: Path) -> None:
    mon, platform = make(tmp_path)
    alerting = platform.stages["alerting"]
    alerting.refuse = True
    platform.stages["storage"].st["outbox_pending_bytes"] = 95.0
    assert [t.rule for t in mon.step()] == ["vigil_outbox"]
    alerting.refuse = False
    assert [t.rule for t in mon.step()] == ["vigil_outbox"]
    assert [t.rule for t in alerting.taken] == ["vigil_outbox"]
    text = prometheus_text(mon)
    assert 'vigil_health_check_ok{node="n1",check="outbox",severity="major"} 0' in text
    assert mon.report()["status"] == "degraded"


def test_a_stalled_ingest_is_critical_and_names_the_reason(tmp_path: Path) -> None:
    import time

    mon, platform = make(tmp_path)
    platform.mqtt.stalled_since = time.monotonic() - 60
    platform.mqtt.last_not_durable = "storage outbox: disk nearly full"
    fired = mon.step()
    assert [t.rule for t in fired] == ["vigil_ingest"] and "disk nearly full" in fired[0].summary_en
    assert mon.report()["status"] == "failing"


def test_status_of_a_node_that_does_not_answer_is_exit_code_2(tmp_path: Path, capsys: Any) -> None:
    from vigil.health import status_main

    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"node: gone\nstate_dir: {tmp_path / 'state'}\n")
    assert status_main(str(cfg), None, False) == 2
    assert "no health endpoint" in capsys.readouterr().err
