"""DeviceIngest decides per topic once (skip, other partition, refuse, decode) and per message the same way."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from broker.contracts import Channel, DeviceMessage, RejectReason
from broker.ingest import DeviceIngest, RegisteredDevices, partition_of
from broker.mqtt import Message, MqttClient

TELEMETRY = json.dumps({"ts": "2026-12-01T08:00:00Z", "metrics": {"speed_mps": 1.0}}).encode()
EVENT = json.dumps({"ts": "2026-12-01T08:00:00Z", "type": "trapped_passenger"}).encode()


def msg(topic: str, payload: bytes = TELEMETRY) -> Message:
    return Message(topic, payload, 1, False, 0.0)


def make(**kwargs: object) -> tuple[DeviceIngest, list[DeviceMessage]]:
    got: list[DeviceMessage] = []
    ingest = DeviceIngest(MqttClient("mqtt://127.0.0.1:1", "unit-plans"), "unit", **kwargs)  # type: ignore[arg-type]
    ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, got.extend)
    return ingest, got


def test_platform_topics_and_commands_are_skipped_every_time_without_a_verdict() -> None:
    ingest, got = make(alarm_mqtt=MqttClient("mqtt://127.0.0.1:1", "unit-lane"))
    batch = [msg("vigil/v1/transitions/elevator/el-1"), msg("vigil/v1/elevator/el-1/command"),
             msg("vigil/v1/alerts/elevator/el-1"), msg("vigil/v1/elevator/el-1/telemetry"),
             msg("vigil/v1/elevator/el-1/event", EVENT)]
    for _ in range(3):  # the first batch fills the per-topic cache; the others read it
        ingest.on_batch(batch)
        ingest.on_alarm_batch(batch)
    # The main lane leaves the event to the alarm lane; the alarm lane takes whatever its filters deliver.
    assert [m.channel for m in got] == [Channel.TELEMETRY, Channel.TELEMETRY, Channel.EVENT] * 3
    assert ingest.accepted == 9 and not ingest.rejected


def test_refused_topics_are_refused_and_counted_for_every_message() -> None:
    ingest, got = make()
    batch = [msg("vigil/v1/toaster/t-1/telemetry"), msg("vigil/v1/elevator/bad id/telemetry"),
             msg("vigil/v1/elevator/el-1/telemetry", b"{broken")]
    ingest.on_batch(batch)
    ingest.on_batch(batch)
    assert got == []
    assert ingest.rejected == {RejectReason.UNKNOWN_KIND: 2, RejectReason.BAD_TOPIC: 2, RejectReason.MALFORMED_JSON: 2}


def test_other_partitions_messages_are_counted_per_message_not_per_topic() -> None:
    devices = [f"el-{i:03d}" for i in range(40)]
    ingest, got = make(partition=(1, 2))
    batch = [msg(f"vigil/v1/elevator/{d}/telemetry") for d in devices]
    ingest.on_batch(batch)
    ingest.on_batch(batch)
    mine = [d for d in devices if partition_of(d, 2) == 1]
    assert [m.device_id for m in got] == mine * 2
    assert ingest.other_partition == 2 * (len(devices) - len(mine))


def test_a_registry_change_is_heard_by_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("devices:\n  - {id: el-1, kind: elevator}\n")
    known = RegisteredDevices(path, ["el-1"], check_every_s=0.0)
    ingest, got = make(known_device=known)
    batch = [msg("vigil/v1/elevator/el-1/telemetry"), msg("vigil/v1/elevator/el-2/telemetry")]
    ingest.on_batch(batch)
    assert [m.device_id for m in got] == ["el-1"]
    assert ingest.rejected == {RejectReason.UNKNOWN_DEVICE: 1}
    path.write_text("devices:\n  - {id: el-1, kind: elevator}\n  - {id: el-2, kind: elevator}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    ingest.on_batch(batch)
    assert [m.device_id for m in got] == ["el-1", "el-1", "el-2"]
    assert known.reloads == 1 and ingest.rejected == {RejectReason.UNKNOWN_DEVICE: 1}


def test_a_plain_callable_still_decides_per_message() -> None:
    seen: list[str] = []

    def known(device_id: str) -> bool:
        seen.append(device_id)
        return device_id != "el-2"

    ingest, got = make(known_device=known)
    ingest.on_batch([msg(f"vigil/v1/elevator/el-{i}/telemetry") for i in (1, 2, 3)])
    assert seen == ["el-1", "el-2", "el-3"]
    assert [m.device_id for m in got] == ["el-1", "el-3"]
    assert ingest.rejected == {RejectReason.UNKNOWN_DEVICE: 1}
