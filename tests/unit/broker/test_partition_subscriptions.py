"""Partition assignment and per-device subscriptions (pure logic: clients are not connected)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from broker.contracts import Channel
from broker.ingest import (
    ALARM_FILTERS,
    DEVICE_LEVEL_FILTER,
    DeviceIngest,
    RegisteredDevices,
    device_filter,
    partition_devices,
    partition_of,
)
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry

KINDS = ("elevator", "emission", "vehicle", "camera")


def fleet(n: int) -> dict[str, str]:
    return {f"dev-{i:05d}": KINDS[i % len(KINDS)] for i in range(n)}


def write_registry(path: Path, devices: dict[str, str], mtime: float | None = None) -> None:
    path.write_text(yaml.safe_dump({"devices": [{"id": d, "kind": k} for d, k in devices.items()]}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def partition_ingest(path: Path, index: int, count: int, *, alarm: bool = True) -> DeviceIngest:
    registry = DeviceRegistry.load(path)
    known = RegisteredDevices(path, registry.devices, kinds={d.id: d.kind.value for d in registry.devices.values()})
    main = MqttClient("mqtt://127.0.0.1:1", f"unit-p{index}")
    lane = MqttClient("mqtt://127.0.0.1:1", f"unit-p{index}-alarm") if alarm else None
    ingest = DeviceIngest(main, "unit", known_device=known, alarm_mqtt=lane, partition=(index, count))
    ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, lambda batch: None)
    return ingest


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_device_lands_in_exactly_one_partition(count: int) -> None:
    devices = fleet(5000)
    parts = [partition_devices(devices, i, count) for i in range(count)]
    assert sum(len(p) for p in parts) == len(devices)
    merged: dict[str, str] = {}
    for p in parts:
        assert not merged.keys() & p.keys()
        merged.update(p)
    assert merged == devices
    if count > 1:
        # CRC-32 spreads a sequential fleet evenly enough: no partition gets under half its share.
        assert min(len(p) for p in parts) > len(devices) / count / 2


def test_the_assignment_is_the_same_in_every_process_and_release() -> None:
    # Fixed values: a change of hash would move devices (and their rule state) between partitions.
    assert [partition_of(f"dev-{i:05d}", 2) for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert [partition_of(d, 4) for d in ("el-0001", "el-0002", "el-0003", "el-0004")] == [0, 2, 0, 3]
    assert partition_devices({"el-0001": "elevator", "el-0002": "elevator"}, 0, 4) == {"el-0001": "elevator"}


def test_a_partition_subscribes_only_its_devices_and_forgets_the_catch_all(tmp_path: Path) -> None:
    devices = fleet(400)
    path = tmp_path / "registry.yaml"
    write_registry(path, devices)
    ingests = [partition_ingest(path, i, 2) for i in range(2)]
    seen: set[str] = set()
    for index, ingest in enumerate(ingests):
        mine = partition_devices(devices, index, 2)
        assert ingest.subscribed == mine
        assert ingest.mqtt.topic_filters == {device_filter(k, d) for d, k in mine.items()}
        assert ingest.alarm_mqtt is not None
        assert ingest.alarm_mqtt.topic_filters == {device_filter(k, d, ch) for d, k in mine.items()
                                                   for ch in ("event", "status")}
        # Filters an earlier layout may have left in the persistent session are dropped on connect.
        assert DEVICE_LEVEL_FILTER in ingest.mqtt._stale
        assert set(ALARM_FILTERS) <= ingest.alarm_mqtt._stale
        others = {device_filter(k, d) for d, k in devices.items() if d not in mine}
        assert others <= ingest.mqtt._stale
        assert not ingest.mqtt._stale & ingest.mqtt.topic_filters
        seen |= mine.keys()
    assert seen == devices.keys()


def test_without_the_alarm_lane_one_filter_per_device_carries_every_channel(tmp_path: Path) -> None:
    devices = fleet(50)
    path = tmp_path / "registry.yaml"
    write_registry(path, devices)
    ingest = partition_ingest(path, 1, 3, alarm=False)
    assert ingest.mqtt.topic_filters == {device_filter(k, d) for d, k in partition_devices(devices, 1, 3).items()}


def test_a_registry_change_resubscribes(tmp_path: Path) -> None:
    devices = fleet(300)
    path = tmp_path / "registry.yaml"
    write_registry(path, devices, mtime=1_000_000)
    ingest = partition_ingest(path, 0, 2)
    assert ingest.fleet is not None
    assert not ingest.fleet.check()  # unchanged file: nothing to do
    before = dict(ingest.subscribed)
    # Remove some devices, add new ones, change one device's kind.
    changed = {d: k for d, k in devices.items() if not d.endswith("7")}
    changed.update({f"new-{i:03d}": "sensor" for i in range(100)})
    moved = next(d for d in before if d in changed)
    changed[moved] = "camera" if changed[moved] != "camera" else "sensor"
    write_registry(path, changed, mtime=1_000_100)
    assert ingest.fleet.check()
    mine = partition_devices(changed, 0, 2)
    assert ingest.subscribed == mine
    assert ingest.mqtt.topic_filters == {device_filter(k, d) for d, k in mine.items()}
    assert ingest.alarm_mqtt is not None
    assert ingest.alarm_mqtt.topic_filters == {device_filter(k, d, ch) for d, k in mine.items()
                                               for ch in ("event", "status")}
    assert device_filter(before[moved], moved) not in ingest.mqtt.topic_filters
    assert any(d.startswith("new-") for d in mine)  # new devices of this partition are heard
    # A message of a newly registered device of this partition is accepted and routed to the handler.
    new_dev = next(d for d in mine if d.startswith("new-"))
    topic = f"vigil/v1/sensor/{new_dev}/telemetry"
    assert ingest.mqtt._route(topic) == (ingest.on_batch,)
    ingest.on_batch([Message(topic, b'{"ts": "2026-12-01T08:00:00Z", "metrics": {"x": 1.0}}', 1, False, 0.0)])
    assert ingest.accepted == 1


def test_a_broken_registry_file_keeps_the_subscriptions(tmp_path: Path) -> None:
    devices = fleet(40)
    path = tmp_path / "registry.yaml"
    write_registry(path, devices, mtime=1_000_000)
    ingest = partition_ingest(path, 1, 2)
    before = ingest.mqtt.topic_filters
    path.write_text("devices: [{id: 'bad id with spaces', kind: toaster}]\n")
    os.utime(path, (1_000_200, 1_000_200))
    assert ingest.fleet is not None and not ingest.fleet.check()
    assert ingest.mqtt.topic_filters == before


def test_without_a_registry_a_partition_reads_everything_and_drops_the_rest() -> None:
    main = MqttClient("mqtt://127.0.0.1:1", "unit-plain")
    ingest = DeviceIngest(main, "unit", partition=(0, 2))
    ingest.add_consumer({Channel.TELEMETRY}, lambda batch: None)
    assert ingest.fleet is None
    assert main.topic_filters == {DEVICE_LEVEL_FILTER}


def test_route_index_matches_like_the_mqtt_rules() -> None:
    client = MqttClient("mqtt://127.0.0.1:1", "unit-route")
    calls: list[str] = []

    def a(batch: list[Message]) -> None:
        calls.append("a")

    def b(batch: list[Message]) -> None:
        calls.append("b")

    client.subscribe_many([device_filter("elevator", f"el-{i}") for i in range(1000)], a)
    client.subscribe("vigil/v1/+/+/event", b)
    client.subscribe("vigil/v1/elevator/el-1/status", b)
    client.subscribe("other/#", a)
    assert client._route("vigil/v1/elevator/el-5/telemetry") == (a,)
    assert client._route("vigil/v1/elevator/el-5/event") == (a, b)
    assert client._route("vigil/v1/elevator/el-1/status") == (a, b)
    assert client._route("vigil/v1/elevator/el-9999/telemetry") == ()
    assert client._route("vigil/v1/elevator/el-5") == ()
    assert client._route("other/x/y") == (a,)
    client.unsubscribe_many([device_filter("elevator", "el-5")], a)
    assert client._route("vigil/v1/elevator/el-5/telemetry") == ()
    assert client._route("vigil/v1/elevator/el-5/event") == (b,)
