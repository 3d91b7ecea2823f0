"""StorageService handlers without a broker: what they append, site lookup, refusals, subscriptions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from broker.contracts import (
    ALERTS_FILTER,
    DEAD_LETTER_FILTER,
    Channel,
    DeviceEvent,
    DeviceMessage,
    DeviceStatus,
    Kind,
    RejectReason,
    Telemetry,
    decode_dead_letter,
    encode,
    make_dead_letter,
)
from broker.ingest import DeviceIngest
from broker.mqtt import Message
from broker.registry import Device, DeviceRegistry, Site
from storage.backends import PointsRefused
from storage.config import OutboxConfig, StorageConfig
from storage.service import StorageService
from tests.support.mqtt_fake import FakeMqtt

TS = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def make(tmp_path: Path, **kw: object) -> tuple[StorageService, FakeMqtt]:
    mqtt = FakeMqtt()
    reg = DeviceRegistry.build([Site(id="tower-a")], [Device(id="el-1", kind=Kind.ELEVATOR, site="tower-a")], [])
    cfg = msgspec.structs.replace(StorageConfig(outbox=OutboxConfig(fsync="off")), **kw)
    service = StorageService(cfg, mqtt=mqtt, ingest=DeviceIngest(mqtt), registry=reg,  # type: ignore[arg-type]
                             state_dir=tmp_path)
    service.attach()
    return service, mqtt


def pending(service: StorageService) -> list[str]:
    batch = service.outbox.peek(10_000)
    return [] if batch is None else [line.decode() for line in batch.split_lines()]


def telemetry(device: str, site: str | None = None) -> DeviceMessage:
    return DeviceMessage(Kind.ELEVATOR, device, Channel.TELEMETRY,
                         Telemetry(ts=TS, site=site, metrics={"speed_mps": 1.0}))


def device_messages() -> list[Message]:
    """One telemetry, one event and one status message as the broker delivers them."""
    return [
        Message("vigil/v1/elevator/el-1/telemetry", encode(Telemetry(ts=TS, metrics={"floor": 2})), 1, False, 1.0),
        Message("vigil/v1/elevator/el-1/event", encode(DeviceEvent(ts=TS, type="overspeed")), 1, False, 1.0),
        Message("vigil/v1/elevator/el-1/status", encode(DeviceStatus(ts=TS, online=True)), 1, False, 1.0),
    ]


def test_attach_consumes_all_device_channels_and_subscribes_both_topics(tmp_path: Path) -> None:
    service, mqtt = make(tmp_path)
    assert {ALERTS_FILTER, DEAD_LETTER_FILTER} <= mqtt.topic_filters
    service.ingest.on_batch(device_messages())
    assert [line.split(",", 1)[0] for line in pending(service)] == ["telemetry_elevator", "events", "status"]


def test_store_flags_narrow_what_is_kept(tmp_path: Path) -> None:
    service, mqtt = make(tmp_path, store_events=False, store_status=False, store_dead_letters=False)
    assert ALERTS_FILTER in mqtt.topic_filters and DEAD_LETTER_FILTER not in mqtt.topic_filters
    service.ingest.on_batch(device_messages())
    assert [line.split(",", 1)[0] for line in pending(service)] == ["telemetry_elevator"]


def test_site_comes_from_the_payload_then_the_registry(tmp_path: Path) -> None:
    service, _ = make(tmp_path)
    service.on_device_messages([telemetry("el-1"), telemetry("el-1", site="depot"), telemetry("el-9")])
    lines = pending(service)
    assert lines[0].startswith("telemetry_elevator,device=el-1,kind=elevator,site=tower-a ")
    assert lines[1].startswith("telemetry_elevator,device=el-1,kind=elevator,site=depot ")
    assert lines[2].startswith("telemetry_elevator,device=el-9,kind=elevator ")
    assert service.stats()["stored_telemetry"] == 3


def test_bad_alert_payload_is_dead_lettered_and_an_empty_one_ignored(tmp_path: Path) -> None:
    service, mqtt = make(tmp_path)
    service.on_alerts([Message("vigil/v1/alerts/elevator/el-1/a1", b"", 1, True, 0.0),
                       Message("vigil/v1/alerts/elevator/el-1/a2", b'{"id": 3}', 1, False, 0.0)])
    assert pending(service) == []
    assert service.stats()["stored_undecodable"] == 1
    topic, payload = mqtt.published[0].topic, mqtt.published[0].payload
    letter = decode_dead_letter(payload)
    assert topic == "vigil/v1/deadletter/storage" and letter.reason == RejectReason.SCHEMA


def test_dead_letters_are_stored(tmp_path: Path) -> None:
    service, mqtt = make(tmp_path)
    letter = make_dead_letter("ingest", "vigil/v1/x", b"\xff\xfe", RejectReason.NOT_UTF8, "invalid UTF-8", TS)
    service.on_dead_letters([Message("vigil/v1/deadletter/ingest", encode(letter), 1, False, 0.0),
                             Message("vigil/v1/deadletter/ingest", b"nonsense", 1, False, 0.0)])
    lines = pending(service)
    assert len(lines) == 1 and lines[0].startswith("dead_letters,reason=not_utf8,stage=ingest ")
    assert 'payload_encoding="base64"' in lines[0]
    assert mqtt.published == []  # an undecodable dead letter is counted, never re-published


@pytest.mark.parametrize(("line", "republished"), [
    (b'telemetry_sensor,device=s1 level="x" 1', True),
    (b'dead_letters,reason=schema,stage=ingest topic="t" 1', False),  # no loop
])
def test_refused_lines_are_kept_and_dead_lettered_once(tmp_path: Path, line: bytes, republished: bool,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    service, mqtt = make(tmp_path)
    service._on_refused(line, PointsRefused("field type conflict", 400))
    record = json.loads((tmp_path / "rejected.jsonl").read_text())
    assert record["line"] == line.decode() and record["status"] == 400
    assert "refused a point" in caplog.text
    assert len(mqtt.published) == (1 if republished else 0)
    if republished:
        letter = decode_dead_letter(mqtt.published[0].payload)
        assert letter.stage == "storage" and letter.payload == line.decode()
