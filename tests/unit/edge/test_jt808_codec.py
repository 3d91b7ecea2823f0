"""JT/T 808 framing: escaping, checksum, headers, stream splitting and split-packet reassembly."""

from __future__ import annotations

import pytest

from edge.jt808.codec import (
    MAX_BODY,
    FrameSplitter,
    Jt808DecodeError,
    Jt808Frame,
    ProtocolVersion,
    RejectionReason,
    SplitPacketAssembler,
    StreamNoise,
    checksum,
    decode_frame,
    encode_frame,
    encode_phone,
    encode_split_frames,
    escape,
    unescape,
)

PHONE = "13800138000"


def content(frame: bytes) -> bytes:
    """The bytes between the two flags."""
    assert frame[0] == 0x7E and frame[-1] == 0x7E
    return frame[1:-1]


def decode(frame: bytes) -> Jt808Frame:
    return decode_frame(content(frame))


def reason_of(raw: bytes) -> tuple[RejectionReason, bool]:
    with pytest.raises(Jt808DecodeError) as info:
        decode_frame(raw)
    return info.value.reason, info.value.header is not None


# ---------------------------------------------------------------------------- escaping / checksum

def test_escape_matches_the_standard_example() -> None:
    # JT/T 808 4.4.2: 30 7e 08 7d 55 is sent as 30 7d 02 08 7d 01 55.
    assert escape(bytes.fromhex("307e087d55")) == bytes.fromhex("307d02087d0155")
    assert unescape(bytes.fromhex("307d02087d0155")) == bytes.fromhex("307e087d55")


@pytest.mark.parametrize("raw", [
    b"", b"\x00", b"\x7d", b"\x7e", b"\x7d\x7e", b"\x7d\x01\x02", b"\x7e\x7e\x7d\x7d", bytes(range(256)),
])
def test_escape_round_trips(raw: bytes) -> None:
    escaped = escape(raw)
    assert 0x7E not in escaped
    assert unescape(escaped) == raw


@pytest.mark.parametrize("bad", ["7d03", "7d", "017d", "7d7d01", "7d7d02", "307d00", "7d01017d"])
def test_unescape_refuses_dangling_escape(bad: str) -> None:
    with pytest.raises(Jt808DecodeError) as info:
        unescape(bytes.fromhex(bad))
    assert info.value.reason is RejectionReason.BAD_ESCAPE


def test_unescape_refuses_flag_inside_frame() -> None:
    with pytest.raises(Jt808DecodeError) as info:
        unescape(b"\x01\x7e\x02")
    assert info.value.reason is RejectionReason.BAD_ESCAPE


def test_checksum_is_xor_of_all_bytes() -> None:
    assert checksum(b"") == 0
    assert checksum(bytes.fromhex("0102")) == 0x03
    assert checksum(bytes.fromhex("ff0f")) == 0xF0


def test_heartbeat_frame_matches_hand_computed_bytes() -> None:
    # 0002 | 0000 | 013800138000 | 0001, check code worked out by hand: A9.
    assert encode_frame(0x0002, PHONE, 1) == bytes.fromhex("7e000200000138001380000001a97e")


# ---------------------------------------------------------------------------- headers

def test_decode_2013_header() -> None:
    frame = decode(encode_frame(0x0200, PHONE, 513, b"\x01\x02\x03"))
    h = frame.header
    assert (h.msg_id, h.body_length, h.version, h.phone, h.serial) == (0x0200, 3, ProtocolVersion.V2013,
                                                                       "013800138000", 513)
    assert h.device_id == PHONE and not h.is_split and h.encryption == 0 and h.protocol_version == 0
    assert frame.body == b"\x01\x02\x03"


def test_decode_2019_header() -> None:
    frame = decode(encode_frame(0x0200, "12345678901234567", 7, b"\xaa", version=ProtocolVersion.V2019,
                                protocol_version=1))
    h = frame.header
    assert h.version is ProtocolVersion.V2019 and h.protocol_version == 1
    assert h.phone == "00012345678901234567" and h.device_id == "12345678901234567"
    assert frame.body == b"\xaa"


def test_decode_split_header() -> None:
    h = decode(encode_frame(0x0704, PHONE, 10, b"x", packet=(3, 2))).header
    assert h.is_split and (h.packet_total, h.packet_index) == (3, 2)


def test_body_with_flag_bytes_survives_the_wire() -> None:
    body = bytes([0x7E, 0x7D, 0x01, 0x02]) * 10
    frame = encode_frame(0x0200, PHONE, 0x7E7D, body)
    assert 0x7E not in content(frame)
    assert decode(frame).body == body and decode(frame).header.serial == 0x7E7D


def test_encode_refuses_oversized_body_and_bad_phone() -> None:
    with pytest.raises(ValueError):
        encode_frame(0x0200, PHONE, 1, bytes(MAX_BODY + 1))
    with pytest.raises(ValueError):
        encode_phone("12a", ProtocolVersion.V2013)
    with pytest.raises(ValueError):
        encode_phone("1" * 13, ProtocolVersion.V2013)


def _raw(header: bytes, body: bytes = b"") -> bytes:
    data = header + body
    return escape(data + bytes((checksum(data),)))


@pytest.mark.parametrize(("raw", "reason", "has_header"), [
    (b"", RejectionReason.TOO_SHORT, False),
    (bytes(12), RejectionReason.TOO_SHORT, False),
    # 2019 flag set but only 2013-sized header
    (_raw(bytes.fromhex("0002 4000 013800138000 0001".replace(" ", ""))), RejectionReason.TOO_SHORT, False),
    # split flag set, no room for total/index
    (_raw(bytes.fromhex("0002 2000 013800138000 0001".replace(" ", ""))), RejectionReason.TOO_SHORT, False),
    (bytes.fromhex("000200000138001380000001aa"), RejectionReason.BAD_CHECKSUM, True),
    (_raw(bytes.fromhex("0002 0005 013800138000 0001".replace(" ", ""))), RejectionReason.LENGTH_MISMATCH, True),
    (_raw(bytes.fromhex("0002 0000 0138001380a0 0001".replace(" ", ""))), RejectionReason.BAD_PHONE, False),
    # All zeros: there is nobody to reply to, so the refusal carries no header.
    (_raw(bytes.fromhex("0002 0000 000000000000 0001".replace(" ", ""))), RejectionReason.BAD_PHONE, False),
    (_raw(bytes.fromhex("0002 2000 013800138000 0001 0002 0003".replace(" ", ""))),
     RejectionReason.BAD_SPLIT_HEADER, True),
    (_raw(bytes.fromhex("0002 2000 013800138000 0001 0002 0000".replace(" ", ""))),
     RejectionReason.BAD_SPLIT_HEADER, True),
    (_raw(bytes.fromhex("0002 0400 013800138000 0001".replace(" ", ""))), RejectionReason.ENCRYPTED, True),
    (bytes.fromhex("0002007d03"), RejectionReason.BAD_ESCAPE, False),
])
def test_decode_refusals(raw: bytes, reason: RejectionReason, has_header: bool) -> None:
    assert reason_of(raw) == (reason, has_header)


# ---------------------------------------------------------------------------- stream splitting

def _frames(splitter: FrameSplitter, data: bytes, step: int) -> list[bytes | StreamNoise]:
    out: list[bytes | StreamNoise] = []
    for i in range(0, len(data), step):
        out.extend(splitter.feed(data[i:i + step]))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_splitter_finds_frames_at_any_read_size(step: int) -> None:
    frames = [encode_frame(0x0200, PHONE, i, bytes([0x7E, i])) for i in range(5)]
    stream = b"".join(frames)
    assert _frames(FrameSplitter(), stream, step) == [content(f) for f in frames]


def test_splitter_reports_garbage_before_the_first_flag_and_tolerates_shared_flags() -> None:
    a, b = encode_frame(0x0002, PHONE, 1), encode_frame(0x0002, PHONE, 2)
    out = FrameSplitter().feed(b"GET / HTTP/1.1\r\n" + a + b[1:])  # second frame shares the flag
    assert isinstance(out[0], StreamNoise) and out[0].reason is RejectionReason.GARBAGE
    assert out[1:] == [content(a), content(b)]


def test_splitter_drops_overlong_runs_and_resynchronises() -> None:
    splitter = FrameSplitter(max_frame=50)
    good = encode_frame(0x0002, PHONE, 9)
    out = splitter.feed(b"\x7e" + b"\x01" * 60)
    assert [type(o) for o in out] == [StreamNoise]
    assert isinstance(out[0], StreamNoise) and out[0].reason is RejectionReason.FRAME_TOO_LONG
    assert splitter.buffered == 0
    assert splitter.feed(b"\x02" * 500) == []  # still discarding, buffers nothing
    assert splitter.buffered == 0
    assert splitter.feed(b"\x03" + good) == [content(good)]


def test_splitter_drops_overlong_closed_frame() -> None:
    splitter = FrameSplitter(max_frame=10)
    out = splitter.feed(b"\x7e" + b"\x01" * 11 + b"\x7e" + b"\x01\x02\x7e")
    assert isinstance(out[0], StreamNoise) and out[0].reason is RejectionReason.FRAME_TOO_LONG
    assert out[1:] == [b"\x01\x02"]


def test_splitter_without_any_flag_is_bounded() -> None:
    splitter = FrameSplitter(max_frame=100)
    out = _frames(splitter, b"\x00" * 1000, 30)
    assert out and all(isinstance(o, StreamNoise) and o.reason is RejectionReason.GARBAGE for o in out[:1])
    assert splitter.buffered <= 100


# ---------------------------------------------------------------------------- split packets

def _packets(body: bytes, first_serial: int = 100, size: int = 10) -> list[Jt808Frame]:
    return [decode(f) for f in encode_split_frames(0x0704, PHONE, first_serial, body, packet_size=size)]


def test_reassembly_in_and_out_of_order() -> None:
    body = bytes(range(35))
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 0, 1]):
        asm = SplitPacketAssembler()
        packets = _packets(body)
        results = [asm.add(packets[i], 0.0) for i in order]
        assert results[:-1] == [None, None, None]
        whole = results[-1]
        assert whole is not None and whole.body == body and whole.reassembled
        assert whole.header.serial == 100 and whole.header.body_length == 35
        assert asm.pending == 0


def test_reassembly_ignores_duplicates_and_keeps_messages_apart() -> None:
    asm = SplitPacketAssembler()
    a, b = _packets(b"A" * 20, 1), _packets(b"B" * 20, 50)
    assert asm.add(a[0], 0) is None
    assert asm.add(a[0], 0) is None
    assert asm.add(b[1], 0) is None
    whole_a = asm.add(a[1], 0)
    whole_b = asm.add(b[0], 0)
    assert whole_a is not None and whole_a.body == b"A" * 20
    assert whole_b is not None and whole_b.body == b"B" * 20


def test_reassembly_across_serial_wrap() -> None:
    asm = SplitPacketAssembler()
    packets = _packets(b"W" * 30, 0xFFFF)
    assert [p.header.serial for p in packets] == [0xFFFF, 0, 1]
    assert asm.add(packets[2], 0) is None and asm.add(packets[0], 0) is None
    whole = asm.add(packets[1], 0)
    assert whole is not None and whole.body == b"W" * 30


def test_reassembly_expires_unfinished_messages() -> None:
    asm = SplitPacketAssembler(timeout_s=30)
    asm.add(_packets(b"x" * 30)[0], now=0.0)
    assert asm.expire(now=29.0) == []
    expired = asm.expire(now=31.0)
    assert [h.msg_id for h in expired] == [0x0704] and asm.pending == 0


def test_reassembly_is_bounded() -> None:
    asm = SplitPacketAssembler(max_pending=2, max_packets=3)
    with pytest.raises(Jt808DecodeError) as info:
        asm.add(_packets(b"x" * 40)[0], 0)  # 4 packets > 3
    assert info.value.reason is RejectionReason.SPLIT_OVERFLOW
    asm.add(_packets(b"a" * 20, 1)[0], 0)
    asm.add(_packets(b"b" * 20, 10)[0], 1)
    with pytest.raises(Jt808DecodeError) as info:
        asm.add(_packets(b"c" * 20, 20)[0], 2)
    assert info.value.reason is RejectionReason.SPLIT_OVERFLOW
    assert asm.pending == 2  # the oldest was dropped, the new one kept
