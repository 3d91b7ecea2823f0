"""HJ 212 gateway core: the telemetry mapping and the per-connection session (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from broker.contracts import RejectReason, Telemetry, decode_device_message
from edge.hj212.codec import Hj212Error, Hj212Reject, decode_frame, encode_frame, parse_packet
from edge.hj212.gateway import (
    Hj212Counters,
    Hj212Session,
    SessionPolicy,
    StaticDevicePasswords,
    dead_letter_for,
    packet_to_telemetry,
    parse_local_time,
)

MN = "010000A8900016F000169DC0"
REALTIME = (f"QN=20160801085857223;ST=31;CN=2011;PW=123456;MN={MN};Flag=5;CP=&&DataTime=20160801085857;"
            "a21026-Rtd=12.5,a21026-ZsRtd=14.1,a21026-Flag=N;a34013-Rtd=3.2,a34013-Flag=M,a34013-EFlag=A01,"
            "a34013-SampleTime=20160801085800;a00000-Rtd=120.5,a00000-Cou=433.8;SB1-RS=1&&")
HOURLY_SPLIT = [
    (f"QN=20160801085857534;ST=31;CN=2061;PW=123456;MN={MN};Flag=7;PNUM=2;PNO=1;"
     "CP=&&DataTime=20160801080000;a21026-Avg=20.0,a21026-ZsAvg=25.0,a21026-Flag=N&&"),
    (f"QN=20160801085857535;ST=31;CN=2061;PW=123456;MN={MN};Flag=7;PNUM=2;PNO=2;"
     "CP=&&DataTime=20160801080000;a21002-Avg=40.0,a21002-Flag=C&&"),
]


def frame(segment: str) -> bytes:
    return encode_frame(segment)


def telemetry(payload: bytes) -> Telemetry:
    return msgspec.json.decode(payload, type=Telemetry)


def new_session(accept_unknown: bool = False) -> tuple[Hj212Session, Hj212Counters]:
    counters = Hj212Counters()
    passwords = StaticDevicePasswords({MN: "123456"}, sites={MN: "plant-7"})
    return Hj212Session(SessionPolicy(accept_unknown_devices=accept_unknown), counters, passwords,
                        passwords.site), counters


# ---------------------------------------------------------------------------- mapping

def test_data_time_is_local_china_time_converted_to_utc() -> None:
    assert parse_local_time("20160801085857") == datetime(2016, 8, 1, 0, 58, 57, tzinfo=UTC)
    assert parse_local_time("20160101000000") == datetime(2015, 12, 31, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2016080108585", "20161301000000", "2016080108585x", "20160230000000"])
def test_bad_data_time_is_a_bad_value(text: str) -> None:
    with pytest.raises(Hj212Error) as info:
        parse_local_time(text)
    assert info.value.reason is Hj212Reject.BAD_VALUE


def test_realtime_packet_maps_every_field() -> None:
    [message] = packet_to_telemetry(parse_packet(REALTIME), site="plant-7").messages
    assert message.ts == datetime(2016, 8, 1, 0, 58, 57, tzinfo=UTC)
    assert message.site == "plant-7"
    assert message.metrics == {
        "a21026.Rtd": 12.5, "a21026.ZsRtd": 14.1,
        "a34013.Rtd": 3.2, "a34013.EFlag": "A01", "a34013.SampleTime": "2016-08-01T00:58:00Z",
        "a00000.Rtd": 120.5, "a00000.Cou": 433.8, "SB1.RS": 1,
        "hj212.cn": "2011", "hj212.st": "31", "hj212.qn": "20160801085857223",
    }
    assert message.quality == {"a21026": "N", "a34013": "M"}


def test_numbers_are_always_float_so_storage_types_stay_stable() -> None:
    packet = parse_packet(f"QN=20160801085857223;ST=31;CN=2011;PW=1;MN={MN};Flag=4;"
                          "CP=&&DataTime=20160801085857;a21026-Rtd=12&&")
    [message] = packet_to_telemetry(packet).messages
    assert isinstance(message.metrics["a21026.Rtd"], float)


def test_one_message_per_data_time() -> None:
    packet = parse_packet(f"QN=20160801085857223;ST=31;CN=2051;PW=1;MN={MN};Flag=4;CP=&&DataTime=20160801084000;"
                          "a21026-Avg=1;DataTime=20160801085000;a21026-Avg=2&&")
    first, second = packet_to_telemetry(packet).messages
    assert (first.metrics["a21026.Avg"], second.metrics["a21026.Avg"]) == (1.0, 2.0)
    assert (second.ts - first.ts).total_seconds() == 600


@pytest.mark.parametrize(("cp", "reason"), [
    ("a21026-Rtd=1", Hj212Reject.MISSING_FIELD),
    ("", Hj212Reject.MISSING_FIELD),
    ("DataTime=20160801085857;a21026-Rtd=abc", Hj212Reject.BAD_VALUE),
    ("DataTime=20160801085857;a21026-Rtd=nan", Hj212Reject.BAD_VALUE),
    ("DataTime=20160801085857;a21026-Rtd=1e999", Hj212Reject.BAD_VALUE),
    ("DataTime=20160801085857;a21026-SampleTime=yesterday", Hj212Reject.BAD_VALUE),
    ("DataTime=2016", Hj212Reject.BAD_VALUE),
])
def test_unmappable_packets_are_refused(cp: str, reason: Hj212Reject) -> None:
    packet = parse_packet(f"QN=20160801085857223;ST=31;CN=2011;PW=1;MN={MN};Flag=4;CP=&&{cp}&&")
    with pytest.raises(Hj212Error) as info:
        packet_to_telemetry(packet)
    assert info.value.reason is reason


def test_2005_codes_are_translated_to_2017_codes() -> None:
    packet = parse_packet("ST=32;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20040516021000;"
                          "011-Rtd=50.0,011-Flag=N;B01-Rtd=3.5;02-Rtd=20.1;999-Rtd=1&&")
    mapping = packet_to_telemetry(packet)
    [message] = mapping.messages
    assert message.metrics["w01018.Rtd"] == 50.0 and message.metrics["w00000.Rtd"] == 3.5
    assert message.metrics["a21026.Rtd"] == 20.1 and message.quality == {"w01018": "N"}
    assert "hj212.qn" not in message.metrics
    assert mapping.dropped_fields == 1  # 999-Rtd: no such code, and not a valid metric name


# ---------------------------------------------------------------------------- session

def test_ack_requested_upload_is_published_then_acknowledged() -> None:
    session, counters = new_session()
    out = session.receive(frame(REALTIME), now=0.0)
    [publication] = out.publications
    assert publication.topic == f"vigil/v1/emission/{MN}/telemetry"
    message = decode_device_message(publication.topic, publication.payload)
    assert message.payload.metrics["a21026.Rtd"] == 12.5  # type: ignore[union-attr]
    [reply] = out.replies
    assert decode_frame(reply).segment == f"QN=20160801085857223;ST=91;CN=9014;PW=123456;MN={MN};Flag=4;CP=&&&&"
    assert not out.rejections
    assert counters.snapshot()["commands.2011"] == 1 and counters.packets == 1 and counters.frames == 1
    assert session.devices == {MN}


def test_no_reply_without_flag_a() -> None:
    session, _ = new_session()
    out = session.receive(frame(REALTIME.replace("Flag=5", "Flag=4")), now=0.0)
    assert len(out.publications) == 1 and out.replies == []


def test_unknown_device_is_refused_with_the_same_9011_as_a_wrong_password() -> None:
    session, counters = new_session()
    out = session.receive(frame(REALTIME.replace(MN, "FFFF")), now=0.0)
    assert out.publications == [] and [r.reason for r in out.rejections] == [Hj212Reject.UNKNOWN_DEVICE]
    [reply] = out.replies
    # QnRtn=3 (PW error) for unknown MNs too: a guesser must not learn which MNs are registered.
    assert parse_packet(decode_frame(reply).segment).get("QnRtn") == "3"
    assert counters.rejected["unknown_device"] == 1


def test_accept_unknown_devices_for_commissioning() -> None:
    session, _ = new_session(accept_unknown=True)
    out = session.receive(frame(REALTIME.replace(MN, "FFFF")), now=0.0)
    assert len(out.publications) == 1 and not out.rejections


def test_wrong_password_is_refused_with_9011_pw_error() -> None:
    session, _ = new_session()
    out = session.receive(frame(REALTIME.replace("PW=123456", "PW=654321")), now=0.0)
    assert [r.reason for r in out.rejections] == [Hj212Reject.BAD_PASSWORD]
    assert parse_packet(decode_frame(out.replies[0]).segment).get("QnRtn") == "3"
    assert "654321" not in out.rejections[0].detail


def test_unknown_command_is_refused_and_connection_continues() -> None:
    session, counters = new_session()
    out = session.receive(frame(REALTIME.replace("CN=2011", "CN=4999")) + frame(REALTIME), now=0.0)
    assert [r.reason for r in out.rejections] == [Hj212Reject.UNKNOWN_COMMAND]
    assert len(out.publications) == 1
    assert parse_packet(decode_frame(out.replies[0]).segment).get("QnRtn") == "8"
    assert counters.rejected["unknown_command"] == 1 and counters.packets == 1


def test_bad_frames_are_counted_and_never_published_or_answered() -> None:
    session, counters = new_session()
    good = frame(REALTIME)
    bad_crc = good[:-6] + b"0000\r\n"
    bad_value = frame(REALTIME.replace("a21026-Rtd=12.5", "a21026-Rtd=x"))
    out = session.receive(bad_crc + b"noise" + bad_value + good, now=0.0)
    assert [r.reason for r in out.rejections] == [Hj212Reject.BAD_CRC, Hj212Reject.BAD_HEADER, Hj212Reject.BAD_VALUE]
    assert len(out.publications) == 1 and len(out.replies) == 1
    assert counters.snapshot()["rejected"] == 3


def test_notify_gets_9013_and_replies_from_logger_are_only_counted() -> None:
    session, counters = new_session()
    notify = f"QN=20160801085857223;ST=31;CN=1013;PW=123456;MN={MN};Flag=5;CP=&&PolId=a21026&&"
    reply = f"QN=20160801085857223;ST=91;CN=9012;PW=123456;MN={MN};Flag=4;CP=&&ExeRtn=1&&"
    out = session.receive(frame(notify) + frame(reply), now=0.0)
    assert [parse_packet(decode_frame(r).segment).cn for r in out.replies] == ["9013"]
    assert out.publications == [] and counters.commands["9012"] == 1


def test_split_packet_published_once_each_part_acknowledged() -> None:
    session, _ = new_session()
    first = session.receive(frame(HOURLY_SPLIT[0]), now=0.0)
    assert first.publications == [] and len(first.replies) == 1
    second = session.receive(frame(HOURLY_SPLIT[1]), now=1.0)
    [publication] = second.publications
    message = telemetry(publication.payload)
    assert message.metrics["a21026.ZsAvg"] == 25.0 and message.metrics["a21002.Avg"] == 40.0
    assert message.quality == {"a21026": "N", "a21002": "C"}
    assert message.ts == datetime(2016, 8, 1, 0, 0, tzinfo=UTC)
    assert parse_packet(decode_frame(second.replies[0]).segment).qn == "20160801085857535"


def test_incomplete_split_packet_expires_with_a_reason() -> None:
    session, counters = new_session()
    session.receive(frame(HOURLY_SPLIT[0]), now=0.0)
    out = session.expire(now=1000.0)
    assert [r.reason for r in out.rejections] == [Hj212Reject.SPLIT_INCOMPLETE]
    assert counters.rejected["split_incomplete"] == 1


def test_dead_letter_record_names_the_hj212_reason() -> None:
    session, _ = new_session()
    [rejection] = session.receive(frame(REALTIME)[:-6] + b"0000\r\n", now=0.0).rejections
    letter = dead_letter_for(rejection, "10.0.0.5:4001")
    assert letter.reason is RejectReason.SCHEMA and letter.detail.startswith("hj212 bad_crc:")
    assert letter.topic == "hj212://10.0.0.5:4001"
    assert "PW=***;" in letter.payload and "123456" not in letter.payload
    unknown = session.receive(frame(REALTIME.replace(MN, "FFFF")), now=0.0).rejections[0]
    assert dead_letter_for(unknown, "x").reason is RejectReason.UNKNOWN_DEVICE


def test_closing_refuses_open_split_sequences_and_partial_frames() -> None:
    session, counters = new_session()
    session.receive(frame(HOURLY_SPLIT[0]) + frame(REALTIME)[:20], now=0.0)
    out = session.close()
    assert [r.reason for r in out.rejections] == [Hj212Reject.SPLIT_INCOMPLETE, Hj212Reject.BAD_LENGTH]
    assert "connection closed" in out.rejections[0].detail
    assert counters.rejected == {"split_incomplete": 1, "bad_length": 1}
