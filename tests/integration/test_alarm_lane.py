"""The alarm lane: a device event published behind a telemetry backlog reaches the rules engine first.

Real Mosquitto, the real platform runtime (rules stage). 20,000 telemetry messages and then one
event are queued in the platform's persistent sessions while it is stopped; on start, the event
must reach the rules engine (and fire its rule) before the telemetry backlog has drained. The
control case (alarm lane off) shows the backlog is real: on one session the event comes last.
No timing is asserted, only the order of arrival.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from broker.contracts import Channel, DeviceMessage
from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from vigil.config import VigilConfig
from vigil.runtime import Platform, build_platform, run_platform

BACKLOG = 20_000
DEVICES = 200
PROBE = "el-probe"
RULE = """
rules:
  - name: lane_probe
    kind: elevator
    severity: critical
    condition:
      event: {type: lane_probe, resolve_after: 10min}
    summary: "探针 {device_id}"
    summary_en: "probe {device_id}"
"""


@dataclass
class Arrivals:
    """What the ingest handed the stages, in order."""

    telemetry: int = 0
    telemetry_before_event: int | None = None
    rule_fired_on_arrival: bool = False
    platform: Platform | None = None
    seen: list[str] = field(default_factory=list)

    def __call__(self, batch: list[DeviceMessage]) -> None:
        for dm in batch:
            if dm.channel is Channel.TELEMETRY:
                self.telemetry += 1
            elif dm.device_id == PROBE and self.telemetry_before_event is None:
                self.telemetry_before_event = self.telemetry
                # The rules stage is an earlier consumer of the same batch: its engine has the event.
                assert self.platform is not None
                rules = self.platform.stages["rules"]
                self.rule_fired_on_arrival = (PROBE, "lane_probe") in rules.engine.firing()  # type: ignore[attr-defined]


def _config(tmp_path: Path, url: str, alarm_lane: bool) -> VigilConfig:
    (tmp_path / "probe.yaml").write_text(RULE)
    return msgspec.convert({
        "node": "lane", "state_dir": str(tmp_path / "state"), "services": ["rules"],
        "mqtt": {"url": url, "client_id": "vigil-lane-test", "alarm_lane": alarm_lane},
        "rules": {"packs": [], "paths": [str(tmp_path / "probe.yaml")], "tick_interval_s": 0.5},
        "health": {"enabled": False},
    }, VigilConfig)


async def _run_until(platform: Platform, done: asyncio.Event | None = None, timeout: float = 120.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_platform(platform, stop))
    try:
        async with asyncio.timeout(timeout):
            while not platform.mqtt.connected:
                await asyncio.sleep(0.02)
            if done is not None:
                await done.wait()
            else:
                await asyncio.sleep(0.3)  # subscriptions in place
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _queue_backlog(url: str) -> None:
    pub = MqttClient(url, "lane-test-fleet", clean_start=True, max_pending=5000)
    await pub.start()
    try:
        for i in range(BACKLOG):
            body = {"ts": "2026-12-01T08:00:00Z", "seq": i, "metrics": {"speed_mps": 1.0}}
            await pub.publish(f"vigil/v1/elevator/el-{i % DEVICES:03d}/telemetry", json.dumps(body).encode())
        event = {"ts": "2026-12-01T08:00:01Z", "type": "lane_probe", "state": "start", "event_id": "p1"}
        await pub.publish(f"vigil/v1/elevator/{PROBE}/event", json.dumps(event).encode())
        await pub.flush()
    finally:
        await pub.stop()


async def _drain(tmp_path: Path, url: str, alarm_lane: bool) -> Arrivals:
    registry = DeviceRegistry.from_data({})
    config = _config(tmp_path, url, alarm_lane)
    # First start creates the persistent sessions and their subscriptions; then the platform stops.
    await _run_until(build_platform(config, registry))
    await _queue_backlog(url)
    platform = build_platform(config, registry)
    arrivals = Arrivals(platform=platform)
    done = asyncio.Event()

    def record(batch: list[DeviceMessage]) -> None:
        arrivals(batch)
        if arrivals.telemetry >= BACKLOG and arrivals.telemetry_before_event is not None:
            done.set()

    platform.ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT}, record)
    await _run_until(platform, done)
    return arrivals


@pytest.mark.timeout(300)
async def test_event_overtakes_a_telemetry_backlog(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    arrivals = await _drain(tmp_path, mosquitto.url, alarm_lane=True)
    assert arrivals.telemetry == BACKLOG  # nothing lost, nothing twice
    assert arrivals.telemetry_before_event is not None
    assert arrivals.telemetry_before_event < BACKLOG, "the event waited for the whole telemetry backlog"
    assert arrivals.rule_fired_on_arrival


@pytest.mark.timeout(300)
async def test_without_the_lane_the_event_waits_behind_the_backlog(tmp_path: Path,
                                                                   mosquitto: MosquittoProcess) -> None:
    # The control: one session delivers in publish order, so the event comes after all telemetry.
    arrivals = await _drain(tmp_path, mosquitto.url, alarm_lane=False)
    assert arrivals.telemetry == BACKLOG
    assert arrivals.telemetry_before_event == BACKLOG
    assert arrivals.rule_fired_on_arrival
