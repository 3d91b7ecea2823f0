"""Property-based fuzzing of the JT/T 809 decoder and session: never a crash, always a reason, bounded memory."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.contracts import decode_device_message
from edge.jt809.codec import Jt809DecodeError, Jt809StreamSplitter, RejectionReason, decode_frame, encode_frame, escape, unescape
from edge.jt809.directory import LowerPlatform, StaticPlatforms, StaticVehicles
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    MsgId,
    WarnInfo,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
    build_warn,
    parse_envelope,
    parse_gnss,
    parse_history,
    parse_login,
    parse_logout,
    parse_vehicle_registration,
    parse_warn,
)
from edge.jt809.session import Jt809Limits, Jt809Platform

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACCESS = 4242
LOWER = LowerPlatform(ACCESS, 1, "pw")
WHEN = datetime(2026, 12, 3, 9, 0, tzinfo=CHINA)


def refused_with_reason(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Jt809DecodeError as exc:
        assert isinstance(exc.reason, RejectionReason) and exc.detail


@FUZZ
@given(st.binary(max_size=3000))
def test_decode_frame_never_raises_anything_else(data: bytes) -> None:
    refused_with_reason(decode_frame, data)


@FUZZ
@given(st.lists(st.sampled_from([0x5A, 0x5B, 0x5D, 0x5E, 0x01, 0x02, 0x00]), max_size=60))
def test_escape_round_trips_and_hides_the_flags(raw_bytes: list[int]) -> None:
    raw = bytes(raw_bytes)
    escaped = escape(raw)
    assert b"\x5b" not in escaped and b"\x5d" not in escaped
    assert unescape(escaped) == raw


@FUZZ
@given(st.binary(max_size=400))
def test_body_parsers_never_raise_anything_else(body: bytes) -> None:
    for parser in (parse_envelope, parse_gnss, parse_history, parse_login, parse_logout, parse_warn,
                   parse_vehicle_registration):
        refused_with_reason(parser, body)


@FUZZ
@given(st.lists(st.binary(max_size=500), max_size=30))
def test_splitter_is_bounded(chunks: list[bytes]) -> None:
    splitter = Jt809StreamSplitter(max_frame=256)
    for chunk in chunks:
        for item in splitter.feed(chunk):
            if isinstance(item, bytes):
                assert len(item) <= 512
        assert splitter.buffered <= 512


def _valid_stream() -> bytes:
    frames = [encode_frame(MsgId.UP_CONNECT_REQ, 1, ACCESS, build_login(LoginRequest(1, "pw", "1.2.3.4", 0)))]
    for i in range(4):
        g = GnssData(False, WHEN + timedelta(seconds=30 * i), 120_000_000, 30_000_000, 50, 50, 10, 0, 0, 3, i % 2)
        frames.append(encode_frame(MsgId.UP_EXG_MSG, 2 + i, ACCESS, build_envelope(
            "浙A1", 2, DataType.UP_EXG_MSG_REAL_LOCATION, build_gnss(g))))
    frames.append(encode_frame(MsgId.UP_EXG_MSG, 9, ACCESS, build_envelope(
        "浙A1", 2, DataType.UP_EXG_MSG_HISTORY_LOCATION, build_history([g, g]))))
    frames.append(encode_frame(MsgId.UP_WARN_MSG, 10, ACCESS, build_envelope(
        "浙A1", 2, DataType.UP_WARN_MSG_ADPT_INFO, build_warn(WarnInfo(1, 3, WHEN, 1, "x")))))
    frames.append(encode_frame(MsgId.UP_LINKTEST_REQ, 11, ACCESS, b""))
    return b"".join(frames)


VALID = _valid_stream()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=12),
       st.lists(st.integers(1, 64), min_size=1, max_size=40), st.binary(max_size=200))
def test_mutated_streams_never_crash_a_session(flips: list[tuple[int, int]], sizes: list[int], noise: bytes) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    stream = noise + bytes(data)
    platform = Jt809Platform(StaticPlatforms({ACCESS: LOWER}), StaticVehicles.of({("浙A1", 2): "veh-1"}),
                             limits=Jt809Limits(max_frame=1024))
    session = platform.new_session("10.0.0.1:1")
    i = k = refused = 0
    while i < len(stream):
        size = sizes[k % len(sizes)]
        out = session.feed(stream[i:i + size], float(k))
        refused += len(out.rejections)
        for pub in out.publications:
            decode_device_message(pub.topic, pub.payload)  # every publication is a valid contract message
            assert "/veh-1/" in pub.topic
        for reply in out.replies:
            assert decode_frame(reply[1:-1]).header.msg_id in (MsgId.UP_CONNECT_RSP, MsgId.UP_LINKTEST_RSP)
        if not session.authenticated:
            assert not out.publications
        assert session.buffered <= 2 * 1024
        if out.close:
            break
        i += size
        k += 1
    assert sum(platform.counters.rejected.values()) == refused  # every refusal counted, none silent
    session.close()
