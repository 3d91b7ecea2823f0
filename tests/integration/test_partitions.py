"""Two platform partitions on a real Mosquitto: each receives only its devices, together all of them.

The real runtime (``build_platform`` with ``mqtt.partition``, a registry file, the alarm lane) runs
twice in this process. Partition 0's persistent session is first created by an older layout that
read every device topic; the partition must drop that filter, so the broker sends each process only
its own devices (nothing arrives to be dropped: ``other_partition`` stays 0). Per-device order is
checked on the sequence numbers; a device added to the registry file is heard by its partition
after the re-read. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
import yaml

from broker.contracts import Channel, DeviceMessage, Telemetry
from broker.ingest import DEVICE_LEVEL_FILTER, partition_of
from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from vigil.config import VigilConfig
from vigil.runtime import Platform, build_platform, run_platform

DEVICES = [f"el-{i:03d}" for i in range(60)]
PER_DEVICE = 100


class Received:
    """What one partition's ingest handed its stages: (device, channel, seq) in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Channel, int]] = []

    def __call__(self, batch: list[DeviceMessage]) -> None:
        for dm in batch:
            seq = dm.payload.seq if isinstance(dm.payload, Telemetry) and dm.payload.seq is not None else -1
            self.items.append((dm.device_id, dm.channel, seq))

    def devices(self) -> set[str]:
        return {d for d, _, _ in self.items}


def write_registry(path: Path, devices: list[str]) -> None:
    path.write_text(yaml.safe_dump({"devices": [{"id": d, "kind": "elevator"} for d in devices]}))


def config(tmp_path: Path, url: str, index: int) -> VigilConfig:
    return msgspec.convert({
        "node": f"part-{index}", "state_dir": str(tmp_path / "state"), "services": ["rules"],
        "registry": str(tmp_path / "registry.yaml"),
        "mqtt": {"url": url, "client_id": f"vigil-part-p{index}", "partition": f"{index}/2"},
        "rules": {"packs": [], "paths": []},
        "health": {"enabled": False},
    }, VigilConfig)


async def publish(url: str, items: list[tuple[str, str, int]]) -> None:
    pub = MqttClient(url, "partition-test-fleet", clean_start=True, max_pending=2000)
    await pub.start()
    try:
        for device, channel, seq in items:
            if channel == "telemetry":
                body: dict[str, object] = {"ts": "2026-12-01T08:00:00Z", "seq": seq, "metrics": {"speed_mps": 1.0}}
            else:
                body = {"ts": "2026-12-01T08:00:00Z", "type": "door_fault", "state": "start", "event_id": f"e{seq}"}
            await pub.publish(f"vigil/v1/elevator/{device}/{channel}", json.dumps(body).encode())
        await pub.flush()
    finally:
        await pub.stop()


async def heard(url: str, received: list[Received], devices: list[str], timeout: float = 30.0) -> None:
    """Publish a warm-up event for each device until its partition has heard it (subscriptions in place)."""
    async with asyncio.timeout(timeout):
        for device in devices:
            part = received[partition_of(device, 2)]
            while device not in part.devices():
                await publish(url, [(device, "event", 0)])
                await asyncio.sleep(0.1)


async def old_layout_session(url: str) -> None:
    """Partition 0's client id as it was before partitioning: one filter for every device topic."""
    old = MqttClient(url, "vigil-part-p0")
    old.subscribe(DEVICE_LEVEL_FILTER, lambda batch: None)
    await old.start()
    await asyncio.sleep(0.3)
    await old.stop()


@pytest.mark.timeout(180)
async def test_two_partitions_each_receive_only_their_devices(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    url = mosquitto.url
    write_registry(tmp_path / "registry.yaml", DEVICES)
    await old_layout_session(url)
    registry = DeviceRegistry.load(tmp_path / "registry.yaml")
    platforms: list[Platform] = []
    received: list[Received] = []
    for index in range(2):
        platform = build_platform(config(tmp_path, url, index), registry)
        got = Received()
        platform.ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, got)
        platforms.append(platform)
        received.append(got)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_platform(p, stop)) for p in platforms]
    try:
        async with asyncio.timeout(30):
            while not all(p.mqtt.connected and p.alarm_mqtt is not None and p.alarm_mqtt.connected
                          for p in platforms):
                await asyncio.sleep(0.02)
        await heard(url, received, [DEVICES[0], DEVICES[1], DEVICES[-1]])
        for got in received:
            got.items.clear()
        dropped_before = [p.ingest.other_partition for p in platforms]
        read_before = [(p.mqtt.counters["received"], p.alarm_mqtt.counters["received"] if p.alarm_mqtt else 0)
                       for p in platforms]

        # Interleaved devices, telemetry numbered per device, an event in the middle of each device's run.
        items = [(d, "telemetry", n) for n in range(PER_DEVICE) for d in DEVICES]
        items[len(items) // 2:len(items) // 2] = [(d, "event", 1) for d in DEVICES]
        await publish(url, items)
        async with asyncio.timeout(60):
            while sum(len(g.items) for g in received) < len(items):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # anything extra (a duplicate, another partition's device) would show now

        for index, (platform, got) in enumerate(zip(platforms, received, strict=True)):
            mine = {d for d in DEVICES if partition_of(d, 2) == index}
            assert got.devices() == mine
            # The broker sent this process nothing of the other partition's devices: its telemetry session
            # read exactly its devices' messages (their events too: one filter per device carries every
            # channel), the alarm lane exactly their events.
            assert platform.ingest.other_partition == dropped_before[index]
            assert platform.alarm_mqtt is not None
            assert platform.mqtt.counters["received"] - read_before[index][0] == len(mine) * (PER_DEVICE + 1)
            assert platform.alarm_mqtt.counters["received"] - read_before[index][1] == len(mine)
            per_device: dict[str, list[int]] = defaultdict(list)
            events: dict[str, int] = defaultdict(int)
            for device, channel, seq in got.items:
                if channel is Channel.TELEMETRY:
                    per_device[device].append(seq)
                else:
                    events[device] += 1
            assert all(per_device[d] == list(range(PER_DEVICE)) for d in mine)  # all, once, in order
            assert all(events[d] == 1 for d in mine)  # events came on the alarm lane's per-device filters
        assert sum(len(g.items) for g in received) == len(items)

        # A device added to the registry file is heard by its partition once the file is re-read.
        added = [f"el-new-{i}" for i in range(6)]
        write_registry(tmp_path / "registry.yaml", DEVICES + added)
        for platform in platforms:
            assert platform.ingest.fleet is not None
            platform.ingest.fleet.check()
        await heard(url, received, added)
        for device in added:
            assert device in received[partition_of(device, 2)].devices()
            assert device not in received[1 - partition_of(device, 2)].devices()
        assert [p.ingest.other_partition for p in platforms] == dropped_before
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

