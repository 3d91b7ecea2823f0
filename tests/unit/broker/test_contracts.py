"""Contract validation: every refusal reason, tolerance of extra fields, topic parsing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
import pytest

from broker.contracts import (
    MAX_PAYLOAD_BYTES,
    Alert,
    AlertStatus,
    Channel,
    DeviceEvent,
    Kind,
    Rejected,
    RejectReason,
    Severity,
    Telemetry,
    Transition,
    alert_topic,
    decode_alert,
    decode_device_message,
    decode_transition,
    device_topic,
    encode,
    format_ts,
    make_dead_letter,
    parse_device_topic,
)

TOPIC = "vigil/v1/elevator/elev-001/telemetry"
GOOD = b'{"v":1,"ts":"2026-11-26T05:49:02.123Z","metrics":{"speed_mps":1.2,"door":"closed","floor":3}}'


def test_valid_telemetry_is_decoded_with_identity_from_topic() -> None:
    msg = decode_device_message(TOPIC, GOOD, received_at=12.5)
    assert msg.kind is Kind.ELEVATOR and msg.device_id == "elev-001" and msg.channel is Channel.TELEMETRY
    assert isinstance(msg.payload, Telemetry)
    assert msg.payload.metrics == {"speed_mps": 1.2, "door": "closed", "floor": 3}
    assert msg.payload.ts == datetime(2026, 11, 26, 5, 49, 2, 123000, tzinfo=UTC)
    assert msg.received_at == 12.5


def test_unknown_extra_fields_are_tolerated() -> None:
    payload = b'{"ts":"2026-11-26T05:49:02Z","metrics":{"x":1},"firmware":"2.1","extra":{"a":[1,2]}}'
    msg = decode_device_message(TOPIC, payload)
    assert msg.payload.metrics == {"x": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"x" * (MAX_PAYLOAD_BYTES + 1), RejectReason.TOO_LARGE),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02Z","metrics":{"door":"\xff\xfe"}}', RejectReason.NOT_UTF8),
        (TOPIC, b"\xc3\x28", RejectReason.NOT_UTF8),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02Z","metrics":', RejectReason.MALFORMED_JSON),
        (TOPIC, b"not json", RejectReason.MALFORMED_JSON),
        (TOPIC, b'{"metrics":{}}', RejectReason.SCHEMA),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02Z"}', RejectReason.SCHEMA),
        (TOPIC, b'{"ts":1764136142,"metrics":{}}', RejectReason.SCHEMA),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02","metrics":{}}', RejectReason.SCHEMA),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02Z","metrics":{"speed":[1]}}', RejectReason.SCHEMA),
        (TOPIC, b'{"ts":"2026-11-26T05:49:02Z","metrics":{"bad name":1}}', RejectReason.SCHEMA),
        (TOPIC, b"[]", RejectReason.SCHEMA),
        (TOPIC, b'{"v":2,"ts":"2026-11-26T05:49:02Z","metrics":{}}', RejectReason.UNSUPPORTED_VERSION),
        ("vigil/v1/toaster/t1/telemetry", GOOD, RejectReason.UNKNOWN_KIND),
        ("vigil/v1/elevator/e1/gossip", GOOD, RejectReason.BAD_TOPIC),
        ("vigil/v1/elevator/e1/command", GOOD, RejectReason.BAD_TOPIC),
        ("vigil/v1/elevator/e1", GOOD, RejectReason.BAD_TOPIC),
        ("other/v1/elevator/e1/telemetry", GOOD, RejectReason.BAD_TOPIC),
        ("vigil/v1/elevator/-bad id/telemetry", GOOD, RejectReason.BAD_TOPIC),
    ],
)
def test_bad_messages_are_refused_with_the_right_reason(topic: str, payload: bytes, reason: RejectReason) -> None:
    with pytest.raises(Rejected) as info:
        decode_device_message(topic, payload)
    assert info.value.reason is reason
    assert info.value.detail


def test_schema_detail_names_the_field() -> None:
    with pytest.raises(Rejected) as info:
        decode_device_message(TOPIC, b'{"ts":"2026-11-26T05:49:02Z","metrics":{"speed":[1]}}')
    assert "$.metrics" in info.value.detail


def test_event_and_status_channels_decode_their_types() -> None:
    ev = decode_device_message(
        "vigil/v1/camera/cam-1/event",
        b'{"ts":"2026-11-26T05:49:02Z","type":"intrusion","state":"start","zone":"fence","measure":0.8}',
    )
    assert isinstance(ev.payload, DeviceEvent) and ev.payload.zone == "fence"
    with pytest.raises(Rejected) as info:
        decode_device_message("vigil/v1/camera/cam-1/event", b'{"ts":"2026-11-26T05:49:02Z","type":"x","state":"maybe"}')
    assert info.value.reason is RejectReason.SCHEMA
    st = decode_device_message("vigil/v1/camera/cam-1/status", b'{"online":false}')
    assert st.payload.online is False  # type: ignore[union-attr]


def test_dead_letter_keeps_text_or_base64_and_truncates() -> None:
    dl = make_dead_letter("ingest", TOPIC, b"\xff" * 10, RejectReason.NOT_UTF8, "bad")
    assert dl.payload_encoding == "base64" and base64.b64decode(dl.payload) == b"\xff" * 10
    big = make_dead_letter("ingest", TOPIC, b"a" * 100_000, RejectReason.TOO_LARGE, "big")
    assert big.truncated and big.size == 100_000 and len(big.payload) == 4096


def test_alert_and_transition_round_trip() -> None:
    now = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    tr = Transition(ts=now, fingerprint="f", rule="r", status="firing", severity=Severity.MAJOR,
                    kind=Kind.ELEVATOR, device_id="e1", values={"speed_mps": 2.3})
    assert decode_transition(encode(tr)) == tr
    al = Alert(id="a1", fingerprint="f", rule="r", severity=Severity.CRITICAL, status=AlertStatus.FIRING,
               kind=Kind.ELEVATOR, device_id="e1", summary="s", starts_at=now, updated_at=now)
    assert decode_alert(encode(al)) == al
    assert msgspec.json.decode(encode(al))["status"] == "firing"


def test_topics_and_time_format() -> None:
    assert device_topic(Kind.VEHICLE, "13800001111", Channel.EVENT) == "vigil/v1/vehicle/13800001111/event"
    assert alert_topic("elevator", "e1", "a9") == "vigil/v1/alerts/elevator/e1/a9"
    assert parse_device_topic("vigil/v1/emission/MN001/status").channel is Channel.STATUS
    assert format_ts(datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
