"""Property-based fuzzing of the HJ 212 decoder: never an unhandled exception, always a reason."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.contracts import decode_device_message, encode
from edge.hj212.codec import (
    Hj212Error,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    Hj212Reject,
    Hj212Rejection,
    crc16,
    decode_frame,
    encode_frame,
    encode_packet,
    parse_packet,
)
from edge.hj212.gateway import Hj212Counters, Hj212Session, SessionPolicy, packet_to_telemetry

VALID = encode_frame(
    "QN=20160801090000001;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&DataTime=20160801080000;w00000-Cou=63.0,w00000-Avg=17.5,w00000-Flag=N;w01018-Avg=40.1,w01018-Flag=N&&"
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from the protocol's own alphabet finds deeper paths than random bytes alone.
_TOKENS = st.sampled_from(["##", "0101", "QN=", "ST=", "CN=", "PW=", "MN=", "Flag=", "PNUM=", "PNO=", "CP=&&",
                           "&&", ";", ",", "=", "-", "DataTime=", "20160801080000", "2011", "2061", "a21026-Rtd=",
                           "-Flag=", "N", "7", "5", "1.5", "\r\n", "中", "\xff", "1C80", "-ZsAvg=", "SB1-RS="])
protocol_text = st.lists(_TOKENS, max_size=40).map("".join)


def _check_results(results: list[Hj212Frame | Hj212Rejection]) -> None:
    for result in results:
        if isinstance(result, Hj212Rejection):
            assert isinstance(result.reason, Hj212Reject) and result.detail
        else:
            assert isinstance(result.segment, str)


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_reader_never_raises_on_any_bytes(data: bytes, cuts: list[int]) -> None:
    reader = Hj212FrameReader()
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        _check_results(reader.feed(data[pos:pos + step]))
        assert reader.buffered <= 1024 + 12 + 700
        pos, i = pos + step, i + 1


@FUZZ
@given(protocol_text)
def test_any_segment_parses_or_is_rejected_with_a_reason(text: str) -> None:
    try:
        packet = parse_packet(text)
    except Hj212Error as exc:
        assert isinstance(exc.reason, Hj212Reject) and exc.detail
        return
    try:
        mapping = packet_to_telemetry(packet)
    except Hj212Error as exc:
        assert isinstance(exc.reason, Hj212Reject) and exc.detail
        return
    for message in mapping.messages:
        assert decode_device_message(f"vigil/v1/emission/{packet.mn}/telemetry", encode(message)).payload == message


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255))
def test_single_byte_corruption_is_caught_or_harmless(index: int, value: int) -> None:
    corrupted = VALID[:index] + bytes([value]) + VALID[index + 1:]
    try:
        frame = decode_frame(corrupted)
    except Hj212Error as exc:
        assert exc.reason in set(Hj212Reject)
        return
    # Only an unchanged frame (or a changed CRC case) may pass.
    assert frame.segment.encode() == VALID[6:-6]


@FUZZ
@given(st.binary(max_size=2000))
def test_session_never_raises_and_only_publishes_valid_contract_messages(data: bytes) -> None:
    counters = Hj212Counters()
    session = Hj212Session(SessionPolicy(accept_unknown_devices=True), counters)
    out = session.receive(VALID + data + VALID, now=0.0)
    assert all(r.detail for r in out.rejections)
    for publication in out.publications:
        message = decode_device_message(publication.topic, publication.payload)
        assert message.device_id


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_names = st.builds(lambda head, tail, suffix: head + tail + (f"-{suffix}" if suffix else ""),
                   st.sampled_from("aw"), st.text(_ALNUM, max_size=6), st.sampled_from(["", "Rtd", "Avg", "Flag", "X"]))
_values = st.text(_ALNUM + ".+- ", max_size=10).map(str.strip)
_items = st.lists(st.lists(st.tuples(_names, _values), min_size=1, max_size=4).map(tuple), max_size=6).map(tuple)


@FUZZ
@given(
    qn=st.integers(0, 10**17 - 1).map(lambda n: f"{n:017d}"),
    st_=st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2),
    cn=st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    pw=st.text(_ALNUM, max_size=8),
    mn=st.binary(min_size=12, max_size=12).map(lambda b: b.hex().upper()),
    flag=st.sampled_from([0, 1, 4, 5]),
    cp=_items,
)
def test_encode_then_decode_round_trips(qn: str, st_: str, cn: str, pw: str, mn: str, flag: int,
                                        cp: tuple[tuple[tuple[str, str], ...], ...]) -> None:
    packet = Hj212Packet(st=st_, cn=cn, mn=mn, flag=flag, qn=qn, pw=pw, cp=cp)
    assert parse_packet(decode_frame(encode_packet(packet)).segment) == packet


@FUZZ
@given(st.binary(max_size=600))
def test_fast_crc_equals_the_appendix_a_algorithm(data: bytes) -> None:
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    assert crc16(data) == reg


_DOWNLINK_TOKENS = st.sampled_from([
    "CN=1013;", "CN=9011;", "CN=9012;", "CN=2061;", "CN=2011;", "QnRtn=1", "ExeRtn=1", "PolId=a21026",
    "DataTime=20160801080000", "DataTime=20160801110000", "DataTime=20160802000000", "Flag=9;", "Flag=4;", "Flag=5;",
])


@FUZZ
@given(st.lists(st.tuples(_DOWNLINK_TOKENS, _DOWNLINK_TOKENS, _DOWNLINK_TOKENS, _DOWNLINK_TOKENS), max_size=12),
       st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=5))
def test_downlink_tracking_never_raises_on_any_logger_traffic(parts: list[tuple[str, ...]], polls: list[float]) -> None:
    from edge.hj212.downlink import DownlinkTracker

    tracker = DownlinkTracker()
    session = Hj212Session(SessionPolicy(accept_unknown_devices=True), Hj212Counters(), downlink=tracker)
    frames = b""
    for n, (cn, flag, a, b) in enumerate(parts):
        cn = cn if cn.startswith("CN=") else "CN=2011;"
        flag = flag if flag.startswith("Flag=") else "Flag=5;"
        frames += encode_frame(f"QN=20160801090000{n:03d};ST=31;{cn}PW=1;MN=010000A8900016F000169DC0;{flag}"
                               f"CP=&&{a};{b}&&")
    session.receive(frames, now=0.0)
    for now in sorted(polls):
        for outgoing in tracker.poll(now):
            assert parse_packet(decode_frame(outgoing.frame).segment).cn in ("1012", "2061")
    assert all(record.to_event() for record in tracker.take_audit())
