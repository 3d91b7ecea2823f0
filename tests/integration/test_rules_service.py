"""RulesService against a real Mosquitto: telemetry in, transitions out, restarts without loss or duplicates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.contracts import (
    TRANSITIONS_FILTER,
    Channel,
    Kind,
    Telemetry,
    Transition,
    decode_transition,
    device_topic,
    encode,
)
from broker.ingest import DeviceIngest
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from broker.registry import Device, DeviceRegistry, Site
from rules.config import RulesConfig
from rules.service import RulesService

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
REGISTRY = DeviceRegistry.build(
    [Site(id="tower-1", name="一号楼")],
    [Device(id="el-1", kind=Kind.ELEVATOR, site="tower-1", name="1号梯", attributes={"rated_speed_mps": 2.0})],
    [],
)
CONFIG = RulesConfig(packs=["elevator"], tick_interval_s=0.05, snapshot_interval_s=3600, reload_interval_s=0)


class Running:
    """A RulesService with its own MQTT client, running in a task."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.mqtt = MqttClient(url, "vigil-rules-test")
        self.ingest = DeviceIngest(self.mqtt, "rules")
        self.service = RulesService(CONFIG, mqtt=self.mqtt, ingest=self.ingest, registry=REGISTRY,
                                    state_dir=state_dir)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.service.attach()
        await self.mqtt.start()
        self.task = asyncio.create_task(self.service.run(), name="rules-run")

    async def stop(self, graceful: bool = True) -> None:
        assert self.task is not None
        if graceful:
            await asyncio.sleep(0.3)  # let queued publishes go out
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.mqtt.stop()
        else:
            # A crash: no final snapshot, no clean disconnect; only the journal survives.
            self.service.store.snapshot_path.unlink(missing_ok=True)
            self.service.store.save = lambda engine: None  # type: ignore[method-assign]
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            # A dead process: its client stops and its TCP connection drops without a DISCONNECT.
            tasks = self.mqtt._tasks
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock = self.mqtt._sock
            self.mqtt._remove_socket()
            if sock is not None:
                sock.close()


@pytest.fixture
async def watcher(mosquitto: MosquittoProcess) -> AsyncIterator[tuple[MqttClient, list[Transition]]]:
    """A publisher/observer client collecting every transition."""
    seen: list[Transition] = []

    def on_transitions(batch: list[Message]) -> None:
        seen.extend(decode_transition(m.payload) for m in batch)

    client = MqttClient(mosquitto.url, "vigil-rules-watcher", clean_start=True)
    client.subscribe(TRANSITIONS_FILTER, on_transitions)
    await client.start()
    yield client, seen
    await client.stop()


async def send_speed(client: MqttClient, second: float, speed: float) -> None:
    tel = Telemetry(ts=T0 + timedelta(seconds=second), metrics={"speed_mps": speed, "door": "closed"})
    await client.publish(device_topic(Kind.ELEVATOR, "el-1", Channel.TELEMETRY), encode(tel))


async def wait_for(seen: list[Transition], count: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while len(seen) < count:
            await asyncio.sleep(0.02)


async def test_overspeed_fires_then_resolves(mosquitto: MosquittoProcess, tmp_path: Path,
                                             watcher: tuple[MqttClient, list[Transition]]) -> None:
    client, seen = watcher
    svc = Running(mosquitto.url, tmp_path / "state")
    await svc.start()
    # rated 2.0 from the registry: fires above 2.3 held 2 s, clears below 2.1.
    for second, speed in [(0, 1.0), (1, 2.4), (2, 2.5), (3, 2.45), (4, 2.2), (5, 2.0)]:
        await send_speed(client, second, speed)
    await wait_for(seen, 2)
    await asyncio.sleep(0.2)
    await svc.stop()
    assert [t.status for t in seen] == ["firing", "resolved"]
    firing, resolved = seen
    assert firing.rule == "elevator_overspeed" and firing.device_id == "el-1" and firing.site == "tower-1"
    assert firing.source_ts == T0 + timedelta(seconds=3)
    assert firing.started_at == T0 + timedelta(seconds=1)
    assert firing.received_at is not None and firing.received_at > 0
    assert firing.values["speed_mps"] == 2.45 and firing.values["rated"] == 2.0
    assert "1号梯" in firing.summary and firing.summary_en
    assert resolved.source_ts == T0 + timedelta(seconds=5)
    assert resolved.fingerprint == firing.fingerprint


@pytest.mark.parametrize("graceful", [True, False], ids=["stop", "crash"])
async def test_restart_mid_pending_neither_loses_nor_duplicates(
        mosquitto: MosquittoProcess, tmp_path: Path, watcher: tuple[MqttClient, list[Transition]],
        graceful: bool) -> None:
    client, seen = watcher
    state = tmp_path / "state"
    first = Running(mosquitto.url, state)
    await first.start()
    await send_speed(client, 0, 2.4)
    await send_speed(client, 1, 2.4)  # pending since t=0, not yet held 2 s
    await asyncio.sleep(0.5)
    await first.stop(graceful)
    assert seen == []

    second = Running(mosquitto.url, state)
    await second.start()
    await send_speed(client, 2, 2.4)  # held 2 s since t=0 (the pending start survived the restart)
    await wait_for(seen, 1)
    assert seen[0].status == "firing" and seen[0].started_at == T0
    await second.stop(graceful)

    third = Running(mosquitto.url, state)
    await third.start()
    await send_speed(client, 3, 2.6)  # still over: the firing alert survived, no duplicate
    await send_speed(client, 4, 1.0)
    await wait_for(seen, 2)
    await asyncio.sleep(0.3)
    await third.stop()
    assert [t.status for t in seen] == ["firing", "resolved"]


async def test_periodic_snapshots_are_written_while_running(mosquitto: MosquittoProcess, tmp_path: Path,
                                                            watcher: tuple[MqttClient, list[Transition]]) -> None:
    client, _ = watcher
    state = tmp_path / "state"
    mqtt = MqttClient(mosquitto.url, "vigil-rules-snap")
    service = RulesService(RulesConfig(packs=["elevator"], tick_interval_s=0.05, snapshot_interval_s=0.2,
                                       reload_interval_s=0),
                           mqtt=mqtt, ingest=DeviceIngest(mqtt, "rules"), registry=REGISTRY, state_dir=state)
    service.attach()
    await mqtt.start()
    task = asyncio.create_task(service.run())
    try:
        await send_speed(client, 0, 2.4)
        async with asyncio.timeout(15):
            while service.store.snapshots < 2 or service.engine.counters.messages < 1:
                await asyncio.sleep(0.05)
        assert (state / "rules-state.json").exists()
        assert service.stats()["handler_errors"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mqtt.stop()
    from rules.engine import PENDING, RuleEngine
    from rules.state import StateStore

    again = RuleEngine(service.engine.rules.values(), REGISTRY)
    StateStore(state).restore(again)
    assert again.devices["el-1"].rules["elevator_overspeed"].phase == PENDING
