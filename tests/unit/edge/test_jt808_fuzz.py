"""Property-based fuzzing of the JT/T 808 decoder: never an unhandled exception, always a reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.contracts import decode_device_message
from edge.jt808.codec import (
    FrameSplitter,
    Jt808DecodeError,
    ProtocolVersion,
    RejectionReason,
    StreamNoise,
    decode_frame,
    encode_frame,
    escape,
    unescape,
)
from edge.jt808.messages import (
    BatchKind,
    LocationReport,
    MsgId,
    build_batch_location,
    build_location,
    parse_auth,
    parse_batch_location,
    parse_location,
    parse_register,
)
from edge.jt808.session import Jt808Platform, StaticTerminalRegistry

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PHONE = "013800138000"


def refused_with_reason(fn: Callable[..., Any], *args: Any) -> None:
    """Call a parser: it returns, or raises Jt808DecodeError with a known reason; nothing else."""
    try:
        fn(*args)
    except Jt808DecodeError as exc:
        assert isinstance(exc.reason, RejectionReason) and exc.detail


@FUZZ
@given(st.binary(max_size=2200))
def test_decode_frame_never_raises_anything_else(data: bytes) -> None:
    refused_with_reason(decode_frame, data)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(list(ProtocolVersion)))
def test_body_parsers_never_raise_anything_else(body: bytes, version: ProtocolVersion) -> None:
    refused_with_reason(parse_location, body)
    refused_with_reason(parse_batch_location, body)
    refused_with_reason(parse_register, body, version)
    refused_with_reason(parse_auth, body, version)


@FUZZ
@given(st.binary(max_size=500))
def test_escape_round_trips(data: bytes) -> None:
    assert unescape(escape(data)) == data


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_splitter_is_bounded_and_loses_nothing_silently(chunks: list[bytes]) -> None:
    splitter = FrameSplitter(max_frame=100)
    for chunk in chunks:
        for item in splitter.feed(chunk):
            if isinstance(item, StreamNoise):
                assert item.size > 0 and isinstance(item.reason, RejectionReason)
            else:
                assert item and 0x7E not in item and len(item) <= 100
        assert splitter.buffered <= 100


reports = st.builds(
    LocationReport,
    alarm_flags=st.integers(0, 2**32 - 1),
    status_flags=st.integers(0, 2**32 - 1),
    latitude=st.integers(-90_000_000, 90_000_000).map(lambda v: v / 1e6),
    longitude=st.integers(-180_000_000, 180_000_000).map(lambda v: v / 1e6),
    altitude_m=st.integers(0, 65535),
    speed_kmh=st.integers(0, 65535).map(lambda v: v / 10),
    heading_deg=st.integers(0, 359),
    time=st.datetimes(datetime(2000, 1, 2), datetime(2099, 12, 30)).map(lambda d: d.replace(microsecond=0,
                                                                                             tzinfo=UTC)),
    extras=st.dictionaries(st.integers(0, 255), st.binary(max_size=8), max_size=4),
)


@FUZZ
@given(reports)
def test_location_round_trip(report: LocationReport) -> None:
    parsed = parse_location(build_location(report))
    assert parsed.alarm_flags == report.alarm_flags and parsed.time == report.time
    assert abs(parsed.latitude - report.latitude) < 1e-9 and abs(parsed.longitude - report.longitude) < 1e-9
    assert parsed.speed_kmh == report.speed_kmh and dict(parsed.extras) == report.extras


def _stream() -> list[bytes]:
    t0 = datetime(2026, 11, 26, tzinfo=UTC)
    base = LocationReport(3, 3, 30.2, 120.1, 5, 50.0, 10, t0, {0x01: b"\x00\x00\x01\x00"})
    frames = [encode_frame(MsgId.LOCATION, PHONE, i, build_location(
        LocationReport(i % 4, 3, 30.2 + i / 1e4, 120.1, 5, 50.0, 10, t0 + timedelta(seconds=i), {})))
        for i in range(4)]
    frames.append(encode_frame(MsgId.BATCH_LOCATION, PHONE, 9, build_batch_location([base], BatchKind.NORMAL)))
    frames.append(encode_frame(MsgId.HEARTBEAT, PHONE, 10, version=ProtocolVersion.V2013))
    return frames


VALID = _stream()


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 200), st.integers(0, 255)), max_size=12),
    st.lists(st.binary(max_size=40), max_size=4),
    st.integers(1, 97),
)
def test_session_survives_mutated_streams_and_publishes_only_valid_contract_messages(
        edits: list[tuple[int, int, int]], junk: list[bytes], read_size: int) -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({"13800138000"})))
    session = plat.new_session("fuzz")
    session.device_id = "13800138000"  # as if authenticated: exercise the data paths
    frames = [bytearray(f) for f in VALID]
    for which, pos, value in edits:
        frame = frames[which]
        frame[pos % len(frame)] = value
    stream = b"".join(bytes(f) for f in frames) + b"".join(junk)
    rejections = 0
    for i in range(0, len(stream), read_size):
        out = session.feed(stream[i:i + read_size], float(i))
        for pub in out.publications:
            decode_device_message(pub.topic, pub.payload)  # raises if not a valid contract message
        for rej in out.rejections:
            assert isinstance(rej.reason, RejectionReason) and rej.detail
        for reply in out.replies:
            decode_frame(reply[1:-1])  # every reply is itself a valid frame
        rejections += len(out.rejections)
    rejections += len(session.tick(1e9).rejections)
    assert sum(plat.counters.rejected.values()) == rejections
    if not edits and not junk:
        assert rejections == 0 and plat.counters.telemetry == len(VALID) - 1


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=120), max_size=10))
def test_unauthenticated_session_never_publishes(chunks: list[bytes]) -> None:
    plat = Jt808Platform(StaticTerminalRegistry())
    session = plat.new_session("fuzz")
    for chunk in chunks:
        out = session.feed(chunk, 0.0)
        assert not out.publications
