"""HJ 212 downlink core (pure): command queue per MN, retries, replies, gap detection, audit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.hj212.codec import (
    ExeRtn,
    Hj212Packet,
    QnRtn,
    decode_frame,
    encode_frame,
    execution_reply,
    parse_packet,
    request_reply,
)
from edge.hj212.downlink import DownlinkPolicy, DownlinkTracker, Hj212Command

MN = "5A1400000000000000000001"
WALL = datetime(2026, 11, 26, 4, 0, 0, 123000, tzinfo=UTC)  # 12:00:00.123 in Asia/Shanghai


def packet(cn: str, cp: str = "", flag: int = 5, qn: str = "20261126120000001") -> Hj212Packet:
    return parse_packet(decode_frame(encode_frame(f"QN={qn};ST=31;CN={cn};PW=pw1;MN={MN};Flag={flag};CP=&&{cp}&&"))
                        .segment)


def tracker(**policy: float) -> DownlinkTracker:
    track = DownlinkTracker(DownlinkPolicy(**policy), wall=lambda: WALL)  # type: ignore[arg-type]
    return track


def sent(track: DownlinkTracker, now: float) -> list[Hj212Packet]:
    return [parse_packet(decode_frame(o.frame).segment) for o in track.poll(now)]


def hourly(hour: int, day: int = 26) -> Hj212Packet:
    return packet("2061", f"DataTime=202611{day:02d}{hour:02d}0000;a21026-ZsAvg=1,a21026-Flag=N", flag=4)


def realtime(hour: int, minute: int) -> Hj212Packet:
    return packet("2011", f"DataTime=20261126{hour:02d}{minute:02d}00;a21026-Rtd=1", flag=4)


def test_1013_is_answered_with_1012_carrying_shanghai_time() -> None:
    track = tracker()
    request = packet("1013", "PolId=a21026")
    track.connected(MN, request)
    track.on_packet(request, 0.0)
    [command] = sent(track, 0.0)
    assert (command.cn, command.st, command.flag, command.pw) == ("1012", "31", 5, "pw1")
    assert command.cp == ((("PolId", "a21026"),), (("SystemTime", "20261126120000"),))
    assert command.qn == "20261126120000123"
    events = [r.event for r in track.take_audit()]
    assert events == ["queued", "sent"]


def test_replies_close_the_command_and_are_audited() -> None:
    track = tracker()
    track.connected(MN, packet("2011", flag=4))
    track.on_packet(packet("1013"), 0.0)
    [command] = sent(track, 0.0)
    for reply in (request_reply(command, QnRtn.READY), execution_reply(command, ExeRtn.SUCCESS)):
        track.on_packet(parse_packet(decode_frame(reply).segment), 1.0)
    assert [(r.event, r.detail) for r in track.take_audit()][-3:] == [
        ("reply_9011", "QnRtn=1"), ("reply_9012", "ExeRtn=1"), ("done", "ExeRtn=1")]
    assert track.pending(MN) == 0


def test_no_9011_means_resend_with_the_same_qn_then_failure() -> None:
    track = tracker(reply_timeout_s=10, retries=2)
    track.connected(MN, packet("2011", flag=4))
    track.on_packet(packet("1013"), 0.0)
    first = sent(track, 0.0)[0]
    assert sent(track, 9.9) == []
    again = sent(track, 10.0)[0]
    third = sent(track, 20.0)[0]
    assert first.qn == again.qn == third.qn
    assert sent(track, 30.0) == []
    records = [(r.event, r.attempt) for r in track.take_audit()]
    assert records[-1] == ("failed", 3) and ("resent", 3) in records


def test_commands_wait_for_the_logger_and_go_one_at_a_time() -> None:
    track = tracker(exec_timeout_s=60)
    track.on_packet(packet("1013"), 0.0)  # not connected yet: stays queued
    assert sent(track, 0.0) == []
    track.connected(MN, packet("2011", flag=4))
    track.enqueue(Hj212Command(MN, "1012", "second", 0.0), 0.0)
    [first] = sent(track, 1.0)
    assert sent(track, 2.0) == []  # the next waits for the first to end
    track.on_packet(parse_packet(decode_frame(request_reply(first, QnRtn.READY)).segment), 3.0)
    assert sent(track, 62.0) == []
    [second] = sent(track, 63.0)  # no 9012 within exec_timeout_s: the first failed, the next goes
    assert second.qn != first.qn
    events = [r.event for r in track.take_audit()]
    assert events[-2:] == ["failed", "sent"]


def test_queue_is_bounded_and_old_commands_expire() -> None:
    track = tracker(queue_size=2, command_ttl_s=100)
    for n in range(3):
        track.enqueue(Hj212Command(MN, "1012", f"n{n}", 0.0), 0.0)
    assert [r.event for r in track.take_audit()] == ["queued", "queued", "dropped"]
    sent(track, 101.0)
    assert [r.event for r in track.take_audit()] == ["expired", "expired"]
    assert track.pending(MN) == 0


def test_refused_and_unmatched_replies() -> None:
    track = tracker()
    track.connected(MN, packet("2011", flag=4))
    track.on_packet(packet("1013"), 0.0)
    [command] = sent(track, 0.0)
    stray = packet("9012", "ExeRtn=1", flag=4, qn="20200101000000000")
    track.on_packet(stray, 0.5)
    track.on_packet(parse_packet(decode_frame(request_reply(command, QnRtn.REFUSED)).segment), 1.0)
    assert [r.event for r in track.take_audit()][-3:] == ["unmatched_reply", "reply_9011", "refused"]


def test_2005_loggers_get_no_commands() -> None:
    track = tracker()
    legacy = packet("1013", flag=1)
    track.connected(MN, legacy)
    track.on_packet(legacy, 0.0)
    assert sent(track, 0.0) == [] and track.pending(MN) == 1


def test_a_jump_in_hourly_data_asks_for_the_missing_hours() -> None:
    track = tracker()
    track.connected(MN, packet("2011", flag=4))
    assert track.on_packet(hourly(8), 0.0) is False
    track.on_packet(hourly(11), 0.0)
    [request] = sent(track, 0.0)
    assert request.cn == "2061"
    assert (request.get("BeginTime"), request.get("EndTime")) == ("20261126090000", "20261126100000")
    # The re-sent records are recognised; the live ones are not.
    assert track.on_packet(hourly(9), 1.0) is True and track.on_packet(hourly(10), 1.0) is True
    assert track.on_packet(hourly(12), 1.0) is False


def test_realtime_past_the_grace_without_hourly_asks_for_the_hour() -> None:
    track = tracker(gap_grace_s=900)
    track.connected(MN, packet("2011", flag=4))
    track.on_packet(realtime(8, 30), 0.0)  # no hourly baseline yet: nothing to compare with
    track.on_packet(hourly(8), 0.0)
    track.on_packet(realtime(10, 14), 0.0)
    assert sent(track, 0.0) == []
    track.on_packet(realtime(10, 15), 0.0)
    [request] = sent(track, 0.0)
    assert (request.get("BeginTime"), request.get("EndTime")) == ("20261126090000", "20261126090000")
    # Asked once: later real-time data and the late live record do not ask again.
    track.on_packet(realtime(10, 16), 0.0)
    track.on_packet(hourly(10), 0.0)
    assert track.pending(MN) == 1


def test_long_outages_ask_only_for_the_most_recent_hours() -> None:
    track = tracker(max_history_hours=24)
    track.connected(MN, packet("2011", flag=4))
    track.on_packet(hourly(0, day=20), 0.0)
    track.on_packet(hourly(0, day=26), 0.0)
    [request] = sent(track, 0.0)
    begin = datetime.strptime(request.get("BeginTime") or "", "%Y%m%d%H%M%S")
    end = datetime.strptime(request.get("EndTime") or "", "%Y%m%d%H%M%S")
    assert end - begin == timedelta(hours=23)
    assert "max_history_hours" in track.take_audit()[0].detail


def test_audit_record_becomes_a_contract_event() -> None:
    track = tracker()
    track.enqueue(Hj212Command(MN, "1012", "because", 0.0), 0.0)
    [record] = track.take_audit()
    event = record.to_event()
    assert event.type == "hj212.command" and event.data["event"] == "queued" and event.ts == WALL
    assert '"event":"queued"' in record.to_json()


def test_platform_requests_are_validated_before_queueing() -> None:
    from broker.contracts import DeviceCommand

    track = tracker()
    track.connected(MN, packet("2011", flag=4))

    def ask(command: str, **params: object) -> bool:
        return track.request(MN, DeviceCommand(ts=WALL, command=command, command_id="op-1", params=params), 0.0)

    assert ask("hj212.history", cn="2051", begin="2026-11-26T00:00:00Z", end="20261126090000")
    [request] = sent(track, 0.0)
    assert (request.cn, request.get("BeginTime"), request.get("EndTime")) == ("2051", "20261126080000",
                                                                             "20261126090000")
    assert not ask("hj212.history", cn="1000", begin="20261126080000", end="20261126090000")
    assert not ask("hj212.history", begin="20261126090000", end="20261126080000")
    assert not ask("hj212.history", begin="20261001000000", end="20261126080000")  # more than 31 days
    assert not ask("hj212.history", begin="2026-11-26T08:00:00", end="20261126090000")  # no offset
    assert not ask("hj212.history", begin=20261126080000, end="20261126090000")
    assert not ask("hj212.set_time", pol_id="a21026;CN=3020")
    assert not ask("hj212.restart")
    assert ask("hj212.set_time", pol_id="a21026")
    invalid = [r for r in track.take_audit() if r.event == "invalid"]
    assert len(invalid) == 7 and all("op-1" in r.detail for r in invalid)
    assert invalid[0].to_event().message == "platform command invalid"


def test_audit_log_appends_json_lines_and_rotates(tmp_path: Path) -> None:
    from edge.hj212.downlink import AuditLog

    log = AuditLog(tmp_path / "gw" / "hj212-commands.jsonl", max_bytes=300)
    track = tracker()
    for n in range(4):
        track.enqueue(Hj212Command(MN, "1012", f"reason {n}", 0.0), 0.0)
        log.write(track.take_audit())
    log.write([])
    current = (tmp_path / "gw" / "hj212-commands.jsonl").read_text().splitlines()
    rotated = (tmp_path / "gw" / "hj212-commands.jsonl.1").read_text().splitlines()
    details = [json.loads(line)["detail"] for line in rotated + current]
    assert details[-1] == "reason 3" and len(current) < 4 and all(d.startswith("reason") for d in details)
