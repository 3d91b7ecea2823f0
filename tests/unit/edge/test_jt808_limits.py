"""The JT/T 808 gateway's pure bounds: throttles, reassembly budget, dead-letter aggregation, pre-auth rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.jt808.codec import (
    Jt808DecodeError,
    Jt808Frame,
    ProtocolVersion,
    RejectionReason,
    SplitPacketAssembler,
    decode_frame,
    encode_frame,
)
from edge.jt808.limits import AttemptLimits, ByteBudget, RateLimiter, ReassemblyLimits
from edge.jt808.messages import MsgId, RegisterRequest, RegisterResult, build_register, parse_register_reply
from edge.jt808.registrations import Registration, SqliteRegistrations, TerminalIdentity, hash_code, new_auth_code
from edge.jt808.session import Jt808Platform, StaticTerminalRegistry

IDENTITY = TerminalIdentity("VIGIL", "SIM-808", "T000001", 2, "浙A00001")
PHONE = "013800138000"


def register(plat: Jt808Platform, fields: TerminalIdentity, peer: str = "10.0.0.1:5000") -> int:
    req = RegisterRequest(33, 100, fields.manufacturer, fields.model, fields.terminal_id, fields.plate_colour,
                          fields.plate)
    out = plat.new_session(peer).feed(encode_frame(MsgId.REGISTER, PHONE, 1,
                                                   build_register(req, ProtocolVersion.V2013)), 0.0)
    return parse_register_reply(decode_frame(out.replies[0][1:-1]).body).result


def test_token_buckets_refill_and_forget_the_least_recent_keys() -> None:
    limiter = RateLimiter(burst=2, per_s=1.0, max_keys=3)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", 1.0) and not limiter.allow("a", 1.0)
    for key in "bcd":
        limiter.allow(key, 1.0)
    assert len(limiter) == 3 and limiter.allow("a", 1.0)  # "a" was forgotten: a full bucket again


def test_byte_budget() -> None:
    budget = ByteBudget(10)
    assert budget.take(6) and not budget.take(5) and budget.used == 6
    budget.give(6)
    assert budget.used == 0 and budget.peak == 6


def test_reassembly_is_bounded_per_connection_and_in_total() -> None:
    budget = ByteBudget(3000)
    a = SplitPacketAssembler(max_bytes=2500, budget=budget)
    b = SplitPacketAssembler(max_bytes=2500, budget=budget)

    def packet(serial: int) -> Jt808Frame:
        return decode_frame(encode_frame(MsgId.BATCH_LOCATION, PHONE, serial, bytes(1000), packet=(8, 1))[1:-1])

    a.add(packet(0), 0.0)
    a.add(packet(100), 0.0)
    with pytest.raises(Jt808DecodeError) as err:
        a.add(packet(200), 0.0)
    assert err.value.reason is RejectionReason.SPLIT_OVERFLOW and a.held == 2000
    b.add(packet(0), 0.0)
    with pytest.raises(Jt808DecodeError):
        b.add(packet(100), 0.0)  # the shared budget is spent
    a.clear()
    b.clear()
    assert budget.used == 0 and a.held == b.held == 0


def test_registration_checks_identity_once_and_throttles() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(identities={PHONE.lstrip("0"): IDENTITY}),
                         limits=AttemptLimits(per_phone_burst=4, per_phone_per_s=0.0))
    wrong_terminal = TerminalIdentity("VIGIL", "SIM-808", "T999999", 2, "浙A00001")
    wrong_plate = TerminalIdentity("VIGIL", "SIM-808", "T000001", 2, "浙A99999")
    assert register(plat, wrong_terminal) == RegisterResult.TERMINAL_NOT_IN_DATABASE
    assert register(plat, wrong_plate) == RegisterResult.VEHICLE_NOT_IN_DATABASE
    assert register(plat, IDENTITY) == RegisterResult.OK
    assert register(plat, IDENTITY) == RegisterResult.TERMINAL_ALREADY_REGISTERED
    session = plat.new_session("10.0.0.2:1")
    out = session.feed(encode_frame(MsgId.REGISTER, PHONE, 1, build_register(
        RegisterRequest(33, 100, "a", "b", "c", 1, "d"), ProtocolVersion.V2013)), 0.0)
    assert out.close and not out.replies and out.rejections[0].reason is RejectionReason.RATE_LIMITED
    assert plat.counters.rejected[RejectionReason.IDENTITY_MISMATCH] == 2


def test_nothing_is_reassembled_before_authentication_and_errors_close() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(), reassembly=ReassemblyLimits())
    session = plat.new_session("10.0.0.3:1")
    flood = b"".join(encode_frame(MsgId.BATCH_LOCATION, PHONE, i * 64, bytes(900), packet=(64, 1))
                     for i in range(30))
    out = session.feed(flood, 0.0)
    assert out.close and session.buffered == 0 and plat.reassembly_budget.peak == 0
    reasons = [r.reason for r in out.rejections]
    assert reasons == [RejectionReason.NOT_AUTHENTICATED] * 8 + [RejectionReason.TOO_MANY_ERRORS]


def test_sqlite_store_keeps_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = SqliteRegistrations(path)
    code = new_auth_code()
    assert store.add(Registration("1", hash_code(code), IDENTITY, datetime.now(UTC), "p"))
    assert not store.add(Registration("1", hash_code("x"), IDENTITY, datetime.now(UTC), "p"))
    reg = store.get("1")
    assert reg is not None and reg.verify(code) and not reg.verify(code.upper() + "0")
    assert store.plate_owner(2, " 浙a00001 ") == "1" and store.plate_owner(1, "浙A00001") is None
    store.close()
    assert code.encode() not in path.read_bytes()
