"""HJ 212 abuse guards (pure): throttle, per-address limits, dead-letter aggregation; session auth limits;
HJ 212-2025 frames; the simulated logger's answers to platform commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.hj212.codec import (
    VERSION_2025,
    Hj212Error,
    Hj212Packet,
    Hj212Reject,
    decode_frame,
    encode_frame,
    encode_packet,
    parse_packet,
)
from edge.hj212.guard import AuthThrottle, GuardPolicy, dead_letter_source, summary_rejection
from edge.hj212.session import Hj212Counters, Hj212Session, SessionPolicy, StaticDevicePasswords
from edge.runtime.rejections import DeadLetterAggregator
from simulators.hj212_logger import LoggerModel, load_scenario

MN = "010000A8900016F000169DC0"
SCENARIOS = Path(__file__).resolve().parents[3] / "simulators" / "scenarios"


def frame(pw: str = "123456", mn: str = MN, flag: int = 5, qn: str = "20160801085857223") -> bytes:
    return encode_frame(f"QN={qn};ST=31;CN=2011;PW={pw};MN={mn};Flag={flag};"
                        "CP=&&DataTime=20160801085857;a21026-Rtd=12.5,a21026-Flag=N&&")


def test_throttle_doubles_per_failure_up_to_the_bound_and_forgets() -> None:
    throttle = AuthThrottle(GuardPolicy(auth_delay_base_s=0.5, auth_delay_max_s=4.0, auth_forget_s=100))
    delays = [throttle.failed(MN, "10.0.0.1", now=float(n)) for n in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    # Another address guessing the same MN starts where the MN is.
    assert throttle.failed(MN, "10.0.0.2", now=6.0) == 4.0
    # The address is remembered alone too: another MN from it is slowed.
    assert throttle.failed("OTHER", "10.0.0.1", now=7.0) == 4.0
    assert throttle.failed("NEW", "10.0.0.9", now=500.0) == 0.5
    assert throttle.failed(MN, "10.0.0.8", now=500.0) == 0.5  # forgotten after auth_forget_s
    assert throttle.failures(f"mn:{MN}") == 1


def test_aggregated_dead_letters_are_keyed_and_worded_for_hj212() -> None:
    policy = GuardPolicy(dead_letter_interval_s=10, dead_letters_per_interval=1, dead_letters_per_interval_device=3)
    letters = DeadLetterAggregator(policy.dead_letters_per_interval, policy.dead_letter_interval_s)
    anonymous, logger = dead_letter_source(None, "1.2.3.4"), dead_letter_source(MN, "1.2.3.4")
    assert (anonymous, logger) == ("addr:1.2.3.4", f"mn:{MN}")
    assert [letters.admit(anonymous, "bad_crc", 0.0) for _ in range(5)] == [True, False, False, False, False]
    burst = policy.dead_letters_per_interval_device
    assert [letters.admit(logger, "bad_crc", 0.0, burst=burst) for _ in range(4)] == [True, True, True, False]
    assert letters.due(5.0) == []
    summaries = {s.source: summary_rejection(s) for s in letters.due(10.0)}
    assert set(summaries) == {"addr:1.2.3.4", f"mn:{MN}"}
    assert summaries["addr:1.2.3.4"].detail.endswith("count=4)") and summaries["addr:1.2.3.4"].mn is None
    assert summaries[f"mn:{MN}"].detail.endswith("count=1)") and summaries[f"mn:{MN}"].mn == MN
    assert all(r.reason is Hj212Reject.BAD_CRC for r in summaries.values())
    # A new interval starts afresh.
    assert letters.admit(anonymous, "bad_crc", 11.0) is True
    assert letters.suppressed_total == 5


def test_session_stops_trying_after_max_auth_failures() -> None:
    counters = Hj212Counters()
    session = Hj212Session(SessionPolicy(max_auth_failures=3), counters, StaticDevicePasswords({MN: "123456"}))
    out = session.receive(b"".join(frame(pw=f"{n:06d}") for n in range(10)) + frame(), now=0.0)
    assert len(out.replies) == 3 and out.auth_failures == [MN] * 3 and out.publications == []
    assert session.closing == "auth_failures" and counters.frames_ignored == 8
    assert session.receive(frame(), now=1.0).publications == []  # nothing more on this connection


def test_session_closes_after_too_much_garbage_before_authenticating() -> None:
    session = Hj212Session(SessionPolicy(max_preauth_rejections=4), Hj212Counters(),
                           StaticDevicePasswords({MN: "123456"}))
    out = session.receive(b"".join(frame()[:-6] + b"0000\r\n" for _ in range(6)), now=0.0)
    assert len(out.rejections) == 4 and session.closing == "preauth_rejections"
    # Once a logger authenticated, a noisy line does not get it disconnected.
    session = Hj212Session(SessionPolicy(max_preauth_rejections=4), Hj212Counters(),
                           StaticDevicePasswords({MN: "123456"}))
    out = session.receive(frame() + b"".join(frame()[:-6] + b"0000\r\n" for _ in range(6)), now=0.0)
    assert len(out.rejections) == 6 and session.closing is None and session.authenticated


def test_2025_frames_are_accepted_like_2017_ones() -> None:
    packet = parse_packet(decode_frame(frame(flag=9)).segment)
    assert packet.version == VERSION_2025 and packet.ack_requested
    session = Hj212Session(SessionPolicy(), Hj212Counters(), StaticDevicePasswords({MN: "123456"}))
    out = session.receive(frame(flag=9), now=0.0)
    assert len(out.publications) == 1
    reply = parse_packet(decode_frame(out.replies[0]).segment)
    assert reply.cn == "9014" and reply.flag == 8  # 2025 version bits, no A/D
    with pytest.raises(Hj212Error) as info:
        parse_packet(f"QN=20160801085857223;ST=31;CN=2011;PW=1;MN={MN};Flag=9;CP=&&9f86d081884c7d65&&")
    assert info.value.reason is Hj212Reject.UNSUPPORTED_VERSION and "SM4" in info.value.detail
    with pytest.raises(Hj212Error) as info:
        parse_packet(f"ST=31;CN=2011;PW=1;MN={MN};Flag=9;CP=&&&&")
    assert info.value.reason is Hj212Reject.MISSING_FIELD  # QN is required as in 2017


def test_simulated_logger_answers_platform_commands() -> None:
    scenario = load_scenario(SCENARIOS / "hj212_downlink.yaml")
    model = LoggerModel(scenario, 0)
    frames = list(model.frames())
    assert frames[0].cn == "1013" and [f.cn for f in frames].count("2061") == 2
    assert sorted(model.hourly) == ["20261126080000", "20261126090000", "20261126100000"]

    def command(cn: str, cp: str, pw: str = scenario.password) -> Hj212Packet:
        return parse_packet(f"QN=20261126120000001;ST=31;CN={cn};PW={pw};MN={model.mn};Flag=5;CP=&&{cp}&&")

    def cns(answers: list[bytes]) -> list[tuple[str, str | None]]:
        packets = [parse_packet(decode_frame(a).segment) for a in answers]
        return [(p.cn, p.get("QnRtn") or p.get("ExeRtn") or p.get("DataTime")) for p in packets]

    assert cns(model.answer(command("1012", "SystemTime=20261126120000"))) == [("9011", "1"), ("9012", "1")]
    assert model.clock_set == ["20261126120000"]
    resend = model.answer(command("2061", "BeginTime=20261126090000;EndTime=20261126090000"))
    assert cns(resend) == [("9011", "1"), ("2061", "20261126090000"), ("9012", "1")]
    history = parse_packet(decode_frame(resend[1]).segment)
    assert history.flag == 4 and history.get("a21026-ZsAvg") is not None  # no ack asked, as Table C.21
    assert cns(model.answer(command("2061", "BeginTime=20261127000000;EndTime=20261127010000"))) == [
        ("9011", "1"), ("9012", "100")]
    assert cns(model.answer(command("1012", "SystemTime=1", pw="wrong"))) == [("9011", "3")]
    assert cns(model.answer(command("3020", ""))) == [("9011", "8")]
    assert encode_packet(command("1012", "SystemTime=1"))  # the command itself is a valid frame
