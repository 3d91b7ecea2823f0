"""DeviceIngest's alarm lane split and device partitions (pure logic: batches handed in directly)."""

from __future__ import annotations

import json

import pytest

from broker.contracts import Channel, DeviceMessage, RejectReason
from broker.ingest import ALARM_FILTERS, DEVICE_LEVEL_FILTER, DeviceIngest, partition_of
from broker.mqtt import Message, MqttClient

TELEMETRY = json.dumps({"ts": "2026-12-01T08:00:00Z", "metrics": {"speed_mps": 1.0}}).encode()
EVENT = json.dumps({"ts": "2026-12-01T08:00:00Z", "type": "trapped_passenger"}).encode()
STATUS = json.dumps({"ts": "2026-12-01T08:00:00Z", "online": True}).encode()


def msg(device: str, channel: str, payload: bytes) -> Message:
    return Message(f"vigil/v1/elevator/{device}/{channel}", payload, 1, False, 0.0)


def make(alarm: bool = False, partition: tuple[int, int] | None = None) -> tuple[DeviceIngest, list[DeviceMessage]]:
    got: list[DeviceMessage] = []
    main = MqttClient("mqtt://127.0.0.1:1", "unit-main")
    lane = MqttClient("mqtt://127.0.0.1:1", "unit-alarm") if alarm else None
    ingest = DeviceIngest(main, "unit", alarm_mqtt=lane, partition=partition)
    ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, got.extend)
    return ingest, got


def test_the_alarm_lane_subscribes_events_and_status_and_the_main_session_skips_them() -> None:
    ingest, got = make(alarm=True)
    assert ingest.alarm_mqtt is not None
    assert set(ingest.alarm_mqtt._sub_qos) == set(ALARM_FILTERS)
    assert set(ingest.mqtt._sub_qos) == {DEVICE_LEVEL_FILTER}
    ingest.on_batch([msg("el-1", "telemetry", TELEMETRY), msg("el-1", "event", EVENT), msg("el-1", "status", STATUS)])
    assert [m.channel for m in got] == [Channel.TELEMETRY]
    ingest.on_alarm_batch([msg("el-1", "event", EVENT), msg("el-1", "status", STATUS)])
    assert [m.channel for m in got] == [Channel.TELEMETRY, Channel.EVENT, Channel.STATUS]
    assert ingest.accepted == 3


def test_without_the_lane_one_session_carries_every_channel() -> None:
    ingest, got = make(alarm=False)
    ingest.on_batch([msg("el-1", "telemetry", TELEMETRY), msg("el-1", "event", EVENT)])
    assert [m.channel for m in got] == [Channel.TELEMETRY, Channel.EVENT]


def test_bad_messages_on_the_alarm_lane_are_still_refused_and_counted() -> None:
    ingest, got = make(alarm=True)
    ingest.on_alarm_batch([msg("el-1", "event", b"{not json"), Message("vigil/v1/toaster/t-1/event", EVENT, 1, False, 0.0)])
    ingest.on_alarm_batch([Message("vigil/v1/toaster/t-1/event", EVENT, 1, False, 0.0)])  # cached parse, same verdict
    assert got == []
    assert ingest.rejected[RejectReason.UNKNOWN_KIND] == 2
    assert sum(ingest.rejected.values()) == 3


def test_partitions_split_a_fleet_without_overlap_and_keep_each_devices_order() -> None:
    devices = [f"el-{i:04d}" for i in range(2000)]
    batch = [msg(d, "telemetry", TELEMETRY) for _ in range(3) for d in devices]
    seen: list[list[str]] = []
    for index in range(3):
        ingest, got = make(partition=(index, 3))
        ingest.on_batch(batch)
        seen.append([m.device_id for m in got])
        assert ingest.other_partition == len(batch) - len(got)
    sets = [set(s) for s in seen]
    assert set.union(*sets) == set(devices)
    assert sum(len(s) for s in sets) == len(devices)  # each device in exactly one partition
    assert all(len(s) > 400 for s in sets)  # roughly even
    for index, names in enumerate(seen):
        assert all(partition_of(d, 3) == index for d in names)
        # Every device of the partition, three times, in publish order.
        assert names == [d for _ in range(3) for d in devices if partition_of(d, 3) == index]


def test_partition_of_is_stable_across_processes() -> None:
    # CRC-32, not Python's salted hash(): pinned, so every process and release agrees on the split.
    assert [partition_of(f"el-{i:04d}", 4) for i in range(1, 9)] == [0, 2, 0, 3, 1, 3, 1, 0]


@pytest.mark.parametrize("bad", [(2, 2), (-1, 2), (0, 0)])
def test_an_impossible_partition_is_refused(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="partition"):
        make(partition=bad)


@pytest.mark.parametrize(("value", "ok"), [("0/2", True), ("1/2", True), ("2/2", False), ("1-2", False), ("x", False)])
def test_the_partition_setting_is_checked_when_the_config_is_read(value: str, ok: bool) -> None:
    from vigil.config import ConfigError, parse_config
    from vigil.runtime import parse_partition

    raw = {"mqtt": {"partition": value}}
    if ok:
        cfg = parse_config(raw)
        assert cfg.mqtt.alarm_lane is True  # on by default
        assert parse_partition(cfg.mqtt.partition) == tuple(int(x) for x in value.split("/"))
    else:
        with pytest.raises(ConfigError, match="partition"):
            parse_config(raw)
