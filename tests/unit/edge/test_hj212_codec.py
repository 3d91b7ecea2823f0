"""HJ 212 codec: CRC, framing, data segment, split packets and replies (pure, no I/O)."""

from __future__ import annotations

import pytest

from edge.hj212.codec import (
    ExeRtn,
    Hj212Error,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    Hj212Reject,
    Hj212Rejection,
    QnRtn,
    build_segment,
    crc16,
    data_reply,
    decode_frame,
    encode_frame,
    encode_packet,
    execution_reply,
    notify_reply,
    parse_packet,
    request_reply,
    split_packet,
)
from edge.hj212.reassembly import SplitPacketAssembler

# Appendix A's example, byte for byte.
STANDARD_SEGMENT = (
    "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)
STANDARD_FRAME = b"##0101" + STANDARD_SEGMENT.encode() + b"1C80\r\n"

# Table C.17 (hourly data upload), without the standard's trailing ellipsis.
HOURLY_SEGMENT = (
    "QN=20160801090000001;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&DataTime=20160801080000;w00000-Cou=63.0,w00000-Min=16.4,w00000-Avg=17.5,w00000-Max=20.1,"
    "w00000-Flag=N;w01001-Min=7.1,w01001-Avg=7.5,w01001-Max=7.8,w01001-Flag=N;w01018-Cou=63.0,"
    "w01018-Min=40.1,w01018-Avg=40.1,w01018-Max=40.1,w01018-Flag=N&&"
)


def crc16_by_the_book(data: bytes) -> int:
    """Appendix A's C function transcribed literally (bit by bit), as the reference."""
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            check = reg & 1
            reg >>= 1
            if check:
                reg ^= 0xA001
    return reg


def test_standard_example_frame_verifies() -> None:
    frame = decode_frame(STANDARD_FRAME)
    assert frame.segment == STANDARD_SEGMENT
    assert frame.crc == 0x1C80
    assert crc16(STANDARD_SEGMENT.encode()) == 0x1C80
    assert encode_frame(STANDARD_SEGMENT) == STANDARD_FRAME


def test_standard_example_packet_fields() -> None:
    packet = parse_packet(STANDARD_SEGMENT)
    assert (packet.qn, packet.st, packet.cn, packet.pw, packet.mn) == (
        "20160801085857223", "32", "1062", "100000", "010000A8900016F000169DC0")
    assert packet.flag == 5 and packet.version == 1 and packet.ack_requested and not packet.is_split
    assert packet.cp == ((("RtdInterval", "30"),),)
    assert build_segment(packet) == STANDARD_SEGMENT


@pytest.mark.parametrize("data", [b"", b"a", b"##", STANDARD_SEGMENT.encode(), bytes(range(256)), "中文".encode()])
def test_table_crc_equals_appendix_a_algorithm(data: bytes) -> None:
    assert crc16(data) == crc16_by_the_book(data)


def test_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS of "123456789" is 0x4B37; the standard's variant gives something else.
    assert crc16(b"123456789") != 0x4B37
    assert crc16(b"123456789") == crc16_by_the_book(b"123456789")


def test_lowercase_crc_is_accepted() -> None:
    frame = STANDARD_FRAME.replace(b"1C80", b"1c80")
    assert decode_frame(frame).crc == 0x1C80


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (STANDARD_FRAME.replace(b"1C80", b"1C81"), Hj212Reject.BAD_CRC),
        (STANDARD_FRAME.replace(b"1C80", b"1CZ0"), Hj212Reject.BAD_CRC),
        (STANDARD_FRAME.replace(b"Flag=5", b"Flag=4"), Hj212Reject.BAD_CRC),
        (STANDARD_FRAME.replace(b"##0101", b"##0100"), Hj212Reject.BAD_LENGTH),
        (STANDARD_FRAME.replace(b"##0101", b"##01a1"), Hj212Reject.BAD_LENGTH),
        (STANDARD_FRAME.replace(b"\r\n", b"\n\n"), Hj212Reject.BAD_LENGTH),
        (b"##2000" + b"x" * 2000 + b"0000\r\n", Hj212Reject.OVERSIZED),
        (b"hello" + STANDARD_FRAME, Hj212Reject.BAD_HEADER),
        (STANDARD_FRAME[:-3], Hj212Reject.BAD_LENGTH),
    ],
)
def test_bad_frames_are_rejected_with_reason(raw: bytes, reason: Hj212Reject) -> None:
    with pytest.raises(Hj212Error) as info:
        decode_frame(raw)
    assert info.value.reason is reason
    assert info.value.detail


def test_non_utf8_segment_is_rejected() -> None:
    segment = b"QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&x=\xff&&"
    raw = b"##%04d%s%04X\r\n" % (len(segment), segment, crc16(segment))
    with pytest.raises(Hj212Error) as info:
        decode_frame(raw)
    assert info.value.reason is Hj212Reject.NOT_UTF8


def test_reader_handles_byte_by_byte_delivery_and_back_to_back_frames() -> None:
    reader = Hj212FrameReader()
    stream = STANDARD_FRAME + b"\r\n" + STANDARD_FRAME
    results: list[Hj212Frame | Hj212Rejection] = []
    for i in range(len(stream)):
        results += reader.feed(stream[i:i + 1])
    assert [type(r) for r in results] == [Hj212Frame, Hj212Frame]
    assert reader.buffered == 0


def test_reader_resynchronises_after_garbage_and_bad_frames() -> None:
    reader = Hj212FrameReader()
    bad_crc = STANDARD_FRAME.replace(b"1C80", b"0000")
    bad_len = STANDARD_FRAME.replace(b"##0101", b"##0090")
    results = reader.feed(b"\x00\xffjunk" + bad_crc + bad_len + STANDARD_FRAME + b"##9999")
    reasons = [r.reason if isinstance(r, Hj212Rejection) else "frame" for r in results]
    assert reasons == [Hj212Reject.BAD_HEADER, Hj212Reject.BAD_CRC, Hj212Reject.BAD_LENGTH, "frame",
                       Hj212Reject.OVERSIZED]
    assert reader.buffered == 0


def test_reader_buffer_is_bounded() -> None:
    reader = Hj212FrameReader(max_data_length=1024)
    reader.feed(b"##1024")
    reader.feed(b"x" * 5000)
    assert reader.buffered <= 1024 + 12


def test_stray_line_ends_between_frames_are_not_rejections() -> None:
    assert all(isinstance(r, Hj212Frame) for r in Hj212FrameReader().feed(b"\r\n\r\n" + STANDARD_FRAME + b"\r\n"))


def test_chinese_text_with_byte_length() -> None:
    segment = "QN=20160801085857223;ST=32;CN=3020;PW=123456;MN=A1;Flag=4;CP=&&i11001-Info=//运行正常//&&"
    frame = decode_frame(encode_frame(segment))
    assert parse_packet(frame.segment).get("i11001-Info") == "//运行正常//"


def test_chinese_text_with_character_length_is_tolerated() -> None:
    segment = "QN=20160801085857223;ST=32;CN=3020;PW=123456;MN=A1;Flag=4;CP=&&i11001-Info=//运行正常//&&"
    data = segment.encode()
    raw = b"##%04d%s%04X\r\n" % (len(segment), data, crc16(data))
    assert len(segment) != len(data)
    assert decode_frame(raw).segment == segment


def test_hourly_example_parses_every_field() -> None:
    packet = parse_packet(HOURLY_SEGMENT)
    assert packet.cn == "2061"
    assert packet.cp[0] == (("DataTime", "20160801080000"),)
    assert packet.cp[1][0] == ("w00000-Cou", "63.0")
    assert len(list(packet.fields())) == 1 + 5 + 4 + 5
    assert packet.get("w01018-Flag") == "N"


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=4", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=4CP=&&&&", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&a;b=1&&", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST=32;ST=32;CN=2011;MN=A;CP=&&&&", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST;CN=2011;MN=A;CP=&&&&", Hj212Reject.SYNTAX),
        ("QN=20160801085857223;ST=32;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.MISSING_FIELD),
        ("QN=20160801085857223;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.MISSING_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;Flag=4;CP=&&&&", Hj212Reject.MISSING_FIELD),
        ("ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.MISSING_FIELD),
        ("QN=2016;ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=3;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=20x1;PW=1;MN=A;Flag=4;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=a/b;Flag=4;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=256;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=x;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=12;CP=&&&&", Hj212Reject.UNSUPPORTED_VERSION),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=9;CP=&&zq81F0a9c&&", Hj212Reject.UNSUPPORTED_VERSION),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=6;CP=&&&&", Hj212Reject.MISSING_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=6;PNUM=2;PNO=3;CP=&&&&", Hj212Reject.BAD_FIELD),
        ("QN=20160801085857223;ST=32;CN=2011;PW=1;MN=A;Flag=6;PNUM=2;PNO=0;CP=&&&&", Hj212Reject.BAD_FIELD),
    ],
)
def test_bad_segments_are_rejected_with_reason(segment: str, reason: Hj212Reject) -> None:
    with pytest.raises(Hj212Error) as info:
        parse_packet(segment)
    assert info.value.reason is reason


def test_2005_packet_without_qn_and_flag() -> None:
    packet = parse_packet("ST=32;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20040516021000;011-Rtd=50.0&&")
    assert packet.version == 0 and packet.qn is None and not packet.ack_requested
    assert packet.get("011-Rtd") == "50.0"


def test_comma_slip_in_header_as_in_the_standards_examples() -> None:
    packet = parse_packet("QN=20160801085857534,ST=32;CN=2031;PW=123456;MN=A1;Flag=5;CP=&&DataTime=20160801000000&&")
    assert packet.qn == "20160801085857534" and packet.st == "32"


def test_blank_cp_items_are_skipped() -> None:
    assert parse_packet("QN=20160801085857223;ST=91;CN=9013;PW=1;MN=A;Flag=4;CP=&& &&").cp == ()


def test_password_is_not_in_repr() -> None:
    assert "100000" not in repr(parse_packet(STANDARD_SEGMENT))


def test_data_reply_matches_the_standard() -> None:
    packet = parse_packet(HOURLY_SEGMENT)
    reply = decode_frame(data_reply(packet))
    assert reply.segment == ("QN=20160801090000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;"
                             "Flag=4;CP=&&&&")


def test_request_execution_and_notify_replies() -> None:
    packet = parse_packet(STANDARD_SEGMENT)
    assert parse_packet(decode_frame(request_reply(packet, QnRtn.READY)).segment).get("QnRtn") == "1"
    assert parse_packet(decode_frame(request_reply(packet, QnRtn.PW_ERROR)).segment).get("QnRtn") == "3"
    executed = parse_packet(decode_frame(execution_reply(packet, ExeRtn.SUCCESS)).segment)
    assert (executed.cn, executed.get("ExeRtn"), executed.flag) == ("9012", "1", 4)
    assert parse_packet(decode_frame(notify_reply(packet)).segment).cn == "9013"


def test_replies_to_2005_packets_keep_version_0() -> None:
    packet = parse_packet("ST=32;CN=2011;PW=1;MN=B;Flag=1;CP=&&DataTime=20040516021000&&")
    reply = parse_packet(decode_frame(data_reply(packet)).segment)
    assert reply.flag == 0 and reply.qn is None


# ---------------------------------------------------------------------------- split packets

SPLIT_1 = ("QN=20160801085857534;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=7;PNUM=2;PNO=1;"
           "CP=&&DataTime=20160801080000;w00000-Cou=63.0,w00000-Min=16.4,w00000-Avg=17.5,w00000-Max=20.1,"
           "w00000-Flag=N;w01001-Min=7.1,w01001-Avg=7.5,w01001-Max=7.8,w01001-Flag=N&&")
SPLIT_2 = ("QN=20160801085857535;ST=32;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=7;PNUM=2;PNO=2;"
           "CP=&&DataTime=20160801080000;w01018-Cou=63.0,w01018-Min=40.1,w01018-Avg=40.1,w01018-Max=40.1,"
           "w01018-Flag=N&&")


def test_split_example_of_table_c50_reassembles() -> None:
    assembler = SplitPacketAssembler()
    first, dropped = assembler.add(parse_packet(SPLIT_1), now=0.0)
    assert first is None and not dropped and assembler.open_sequences == 1
    whole, dropped = assembler.add(parse_packet(SPLIT_2), now=1.0)
    assert whole is not None and not dropped and assembler.open_sequences == 0
    assert whole.pnum is None and not whole.is_split and whole.qn == "20160801085857534"
    assert [k for k, _ in whole.fields()].count("DataTime") == 1
    assert whole.get("w01018-Avg") == "40.1" and whole.get("w00000-Cou") == "63.0"


def test_split_parts_in_reverse_order_and_resend() -> None:
    assembler = SplitPacketAssembler()
    assert assembler.add(parse_packet(SPLIT_2), 0.0)[0] is None
    assert assembler.add(parse_packet(SPLIT_2), 0.5)[0] is None
    whole, _ = assembler.add(parse_packet(SPLIT_1), 1.0)
    assert whole is not None and whole.cp[1][0] == ("w00000-Cou", "63.0")


def test_split_sequence_times_out() -> None:
    assembler = SplitPacketAssembler(timeout_s=10)
    assembler.add(parse_packet(SPLIT_1), 0.0)
    assert assembler.expire(5.0) == []
    [dropped] = assembler.expire(11.0)
    assert dropped.reason is Hj212Reject.SPLIT_INCOMPLETE and "PNO 1" in dropped.detail
    assert assembler.open_sequences == 0


def test_split_sequence_restarted_by_new_first_part() -> None:
    assembler = SplitPacketAssembler()
    assembler.add(parse_packet(SPLIT_1), 0.0)
    again = parse_packet(SPLIT_1.replace("857534", "999534"))
    whole, dropped = assembler.add(again, 1.0)
    assert whole is None and [d.reason for d in dropped] == [Hj212Reject.SPLIT_INCOMPLETE]


def test_split_open_sequences_are_bounded() -> None:
    assembler = SplitPacketAssembler(max_open=2)
    dropped_all = []
    for i in range(4):
        _, dropped = assembler.add(parse_packet(SPLIT_1.replace("MN=010000A8900016F000169DC0", f"MN=D{i}")), i)
        dropped_all += dropped
    assert assembler.open_sequences == 2 and len(dropped_all) == 2


def test_split_packet_round_trip() -> None:
    packet = parse_packet(HOURLY_SEGMENT)
    parts = split_packet(packet, max_cp_chars=60)
    assert len(parts) == 3 and all(p.is_split and p.pnum == 3 for p in parts)
    assembler = SplitPacketAssembler()
    results = [assembler.add(parse_packet(decode_frame(encode_packet(p)).segment), 0.0)[0] for p in parts]
    whole = results[-1]
    assert results[:-1] == [None, None] and whole is not None
    assert whole.cp == packet.cp and whole.flag == packet.flag


def test_split_limit_on_parts() -> None:
    packet = Hj212Packet(st="32", cn="2061", mn="A", flag=7, qn="20160801085857223", pnum=9999, pno=1)
    with pytest.raises(Hj212Error) as info:
        SplitPacketAssembler(max_parts=100).add(packet, 0.0)
    assert info.value.reason is Hj212Reject.BAD_FIELD


def test_parts_of_different_sequences_are_never_merged() -> None:
    # Part 1 of the 08:00 hour was lost; part 2 of it must not complete the 09:00 hour.
    assembler = SplitPacketAssembler()
    assert assembler.add(parse_packet(SPLIT_2), 0.0) == (None, [])
    next_hour = parse_packet(SPLIT_1.replace("DataTime=20160801080000", "DataTime=20160801090000"))
    whole, dropped = assembler.add(next_hour, 1.0)
    assert whole is None and [d.reason for d in dropped] == [Hj212Reject.SPLIT_INCOMPLETE]
    whole, _ = assembler.add(parse_packet(SPLIT_2.replace("DataTime=20160801080000", "DataTime=20160801090000")), 2)
    assert whole is not None and whole.get("DataTime") == "20160801090000"
