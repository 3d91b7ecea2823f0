"""The JT/T 808 session state machine: register, authenticate, data, alarms, refusals."""

from __future__ import annotations

import weakref
from datetime import UTC, datetime, timedelta

import pytest

from broker.contracts import (
    DeviceEvent,
    DeviceStatus,
    RejectReason,
    Telemetry,
    decode_dead_letter,
    decode_device_message,
    encode,
)
from edge.jt808.codec import (
    ProtocolVersion,
    RejectionReason,
    checksum,
    decode_frame,
    encode_frame,
    encode_split_frames,
    escape,
)
from edge.jt808.messages import (
    AuthRequest,
    BatchKind,
    LocationReport,
    MsgId,
    RegisterRequest,
    RegisterResult,
    ReplyResult,
    build_auth,
    build_batch_location,
    build_location,
    build_register,
    dword,
    parse_general_reply,
    parse_register_reply,
)
from edge.jt808.session import (
    Jt808Platform,
    Jt808Session,
    SessionOutput,
    StaticTerminalRegistry,
    alarm_kind,
    dead_letter_of,
)

PHONE = "013800138000"
DEVICE = "13800138000"
T0 = datetime(2026, 11, 26, 1, 0, 0, tzinfo=UTC)
V13 = ProtocolVersion.V2013


def platform(*, accept_unknown: bool = False) -> Jt808Platform:
    return Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})),
                         accept_unknown=accept_unknown)


def location(alarm: int = 0, t: int = 0, **kw: object) -> LocationReport:
    base: dict[str, object] = dict(alarm_flags=alarm, status_flags=0b11, latitude=30.25, longitude=120.16,
                                   altitude_m=8, speed_kmh=55.0, heading_deg=45, time=T0 + timedelta(seconds=t),
                                   extras={0x01: dword(1000)})
    base.update(kw)
    return LocationReport(**base)  # type: ignore[arg-type]


CODES: weakref.WeakKeyDictionary[Jt808Platform, dict[str, str]] = weakref.WeakKeyDictionary()
"""Auth codes the test terminals got, per platform."""


class Terminal:
    """Drives a session the way a terminal would."""

    def __init__(self, session: Jt808Session, phone: str = PHONE, version: ProtocolVersion = V13) -> None:
        self.session, self.phone, self.version, self.serial = session, phone, version, 0

    def send(self, msg_id: int, body: bytes = b"", now: float = 0.0) -> SessionOutput:
        self.serial += 1
        return self.session.feed(encode_frame(msg_id, self.phone, self.serial, body, version=self.version), now)

    def register(self) -> tuple[SessionOutput, str]:
        out = self.send(MsgId.REGISTER, build_register(RegisterRequest(33, 100, "VIGIL", "M", "T1", 1, "浙A12345"),
                                                       self.version))
        return out, parse_register_reply(decode_frame(out.replies[0][1:-1]).body).auth_code

    def login(self) -> None:
        # A terminal registers once per platform and keeps its code, as real terminals do.
        codes = CODES.setdefault(self.session.platform, {})
        code = codes.get(self.phone)
        if code is None:
            _, code = self.register()
            codes[self.phone] = code
        out = self.send(MsgId.AUTHENTICATE, build_auth(AuthRequest(code, "860000000000001", "1.0"), self.version))
        assert results(out) == [ReplyResult.OK]


def results(out: SessionOutput) -> list[int]:
    return [parse_general_reply(decode_frame(r[1:-1]).body).result for r in out.replies
            if decode_frame(r[1:-1]).header.msg_id == MsgId.PLATFORM_GENERAL_REPLY]


def published(out: SessionOutput) -> list[Telemetry | DeviceEvent]:
    return [decode_device_message(p.topic, p.payload).payload for p in out.publications]  # type: ignore[misc]


def logged_in(**kw: bool) -> tuple[Jt808Platform, Terminal]:
    plat = platform(**kw)
    term = Terminal(plat.new_session("10.0.0.1:5000"))
    term.login()
    return plat, term


# ---------------------------------------------------------------------------- register / authenticate

def test_known_terminal_registers_and_gets_an_auth_code() -> None:
    plat = platform()
    out, code = Terminal(plat.new_session("p")).register()
    reply = parse_register_reply(decode_frame(out.replies[0][1:-1]).body)
    assert reply.result == RegisterResult.OK and reply.reply_serial == 1
    registration = plat.registrations.get(DEVICE)
    assert registration is not None and registration.verify(code) and len(code) == 24
    assert code not in registration.code_hash and registration.identity.plate == "浙A12345"
    assert plat.counters.registered == 1 and not out.rejections


def test_unknown_terminal_is_refused_unless_unknown_devices_are_accepted() -> None:
    plat = platform()
    term = Terminal(plat.new_session("p"), phone="013900000001")
    out, _ = term.register()
    assert parse_register_reply(decode_frame(out.replies[0][1:-1]).body).result == \
        RegisterResult.TERMINAL_NOT_IN_DATABASE
    assert [r.reason for r in out.rejections] == [RejectionReason.UNKNOWN_TERMINAL]
    open_plat = platform(accept_unknown=True)
    out, code = Terminal(open_plat.new_session("p"), phone="013900000001").register()
    registration = open_plat.registrations.get("13900000001")
    assert registration is not None and registration.verify(code) and not out.rejections


def test_auth_codes_are_random_per_registration() -> None:
    codes = {Terminal(platform().new_session("p")).register()[1] for _ in range(3)}
    assert len(codes) == 3


def test_a_registered_terminal_cannot_register_again() -> None:
    plat = platform()
    Terminal(plat.new_session("p")).register()
    out, code = Terminal(plat.new_session("q")).register()
    assert parse_register_reply(decode_frame(out.replies[0][1:-1]).body).result == \
        RegisterResult.TERMINAL_ALREADY_REGISTERED and code == ""
    assert [r.reason for r in out.rejections] == [RejectionReason.ALREADY_REGISTERED]


def test_wrong_auth_code_fails_and_repeated_failures_close() -> None:
    plat = platform()
    term = Terminal(plat.new_session("p"))
    for attempt in range(1, 4):
        out = term.send(MsgId.AUTHENTICATE, build_auth(AuthRequest("nope"), V13))
        assert results(out) == [ReplyResult.FAIL]
        assert [r.reason for r in out.rejections] == [RejectionReason.AUTH_FAILED]
        assert out.close is (attempt == 3)
    assert not term.session.authenticated


def test_auth_of_a_terminal_removed_from_the_registry_fails() -> None:
    plat = platform(accept_unknown=True)
    term = Terminal(plat.new_session("p"), phone="013900000002")
    _, code = term.register()
    plat.accept_unknown = False
    out = term.send(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), V13))
    assert results(out) == [ReplyResult.FAIL]
    assert out.rejections[0].reason is RejectionReason.UNKNOWN_TERMINAL


def test_data_before_authentication_is_refused_and_not_published() -> None:
    plat = platform()
    term = Terminal(plat.new_session("p"))
    for msg_id, body in ((MsgId.LOCATION, build_location(location())), (MsgId.HEARTBEAT, b""),
                         (MsgId.BATCH_LOCATION, build_batch_location([location()]))):
        out = term.send(msg_id, body)
        assert results(out) == [ReplyResult.FAIL] and not out.publications
        assert [r.reason for r in out.rejections] == [RejectionReason.NOT_AUTHENTICATED]
    assert plat.counters.rejected[RejectionReason.NOT_AUTHENTICATED] == 3


def test_logout_ends_authentication() -> None:
    _, term = logged_in()
    assert results(term.send(MsgId.LOGOUT)) == [ReplyResult.OK]
    out = term.send(MsgId.LOCATION, build_location(location()))
    assert out.rejections[0].reason is RejectionReason.NOT_AUTHENTICATED


def test_messages_from_another_phone_on_an_authenticated_connection_are_refused() -> None:
    _, term = logged_in()
    term.phone = "013800138001"
    out = term.send(MsgId.LOCATION, build_location(location()))
    assert results(out) == [ReplyResult.FAIL] and not out.publications
    assert out.rejections[0].reason is RejectionReason.PHONE_MISMATCH


# ---------------------------------------------------------------------------- data

def test_heartbeat_gets_a_general_reply_naming_it() -> None:
    _, term = logged_in()
    out = term.send(MsgId.HEARTBEAT)
    reply = parse_general_reply(decode_frame(out.replies[0][1:-1]).body)
    assert (reply.reply_id, reply.reply_serial, reply.result) == (MsgId.HEARTBEAT, term.serial, ReplyResult.OK)


def test_location_is_published_as_contract_telemetry() -> None:
    _, term = logged_in()
    out = term.send(MsgId.LOCATION, build_location(location(status_flags=0b10, speed_kmh=61.3)))
    assert results(out) == [ReplyResult.OK]
    assert [p.topic for p in out.publications] == [f"vigil/v1/vehicle/{DEVICE}/telemetry"]
    (tele,) = published(out)
    assert isinstance(tele, Telemetry)
    assert tele.ts == T0 and tele.seq == term.serial
    assert tele.metrics == {"lat": 30.25, "lon": 120.16, "speed_kmh": 61.3, "heading_deg": 45, "altitude_m": 8,
                            "ignition": False, "gnss_fixed": True, "alarm_flags": 0, "status_flags": 2,
                            "mileage_km": 100.0}


def test_alarm_bits_become_start_and_end_events_per_terminal() -> None:
    plat, term = logged_in()
    overspeed, fatigue = 1 << 1, 1 << 2
    out1 = term.send(MsgId.LOCATION, build_location(location(overspeed, t=0)))
    out2 = term.send(MsgId.LOCATION, build_location(location(overspeed | fatigue, t=30)))
    out3 = term.send(MsgId.LOCATION, build_location(location(fatigue, t=60)))
    events = [e for out in (out1, out2, out3) for e in published(out) if isinstance(e, DeviceEvent)]
    assert [(e.type, e.state) for e in events] == [("overspeed", "start"), ("fatigue_driving", "start"),
                                                   ("overspeed", "end")]
    assert events[0].event_id == events[2].event_id
    assert events[0].severity == "major" and events[0].data["lat"] == 30.25 and events[0].data["alarm_bit"] == 1
    assert plat.alarms.active(DEVICE) == fatigue
    # A second terminal has its own alarm state.
    other = Terminal(plat.new_session("q"), phone="013800138000")
    other.login()
    assert not [e for e in published(other.send(MsgId.LOCATION, build_location(location(fatigue, t=90))))
                if isinstance(e, DeviceEvent)]


def test_alarm_state_survives_reconnect_and_ignores_older_reports() -> None:
    plat, term = logged_in()
    term.send(MsgId.LOCATION, build_location(location(1, t=100)))
    term2 = Terminal(plat.new_session("reconnected"))
    term2.login()
    stale = term2.send(MsgId.LOCATION, build_location(location(0, t=50)))
    assert [type(p) for p in published(stale)] == [Telemetry]
    end = term2.send(MsgId.LOCATION, build_location(location(0, t=130)))
    assert [(e.type, e.state) for e in published(end) if isinstance(e, DeviceEvent)] == [("emergency", "end")]


def test_unknown_alarm_bits_are_named_by_number() -> None:
    assert alarm_kind(16).type == "alarm_bit_16"
    _, term = logged_in()
    events = [e for e in published(term.send(MsgId.LOCATION, build_location(location(1 << 16))))
              if isinstance(e, DeviceEvent)]
    assert [e.type for e in events] == ["alarm_bit_16"]


def test_batch_location_publishes_every_position_in_time_order() -> None:
    _, term = logged_in()
    reports = [location(t=t) for t in (60, 0, 30)]
    out = term.send(MsgId.BATCH_LOCATION, build_batch_location(reports))
    assert results(out) == [ReplyResult.OK]
    teles = published(out)
    assert [t.ts for t in teles] == [T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)]


def test_blind_area_upload_is_telemetry_without_alarm_edges() -> None:
    plat, term = logged_in()
    out = term.send(MsgId.BATCH_LOCATION, build_batch_location([location(2, t=0), location(0, t=30)],
                                                               BatchKind.BLIND_AREA))
    assert [type(p) for p in published(out)] == [Telemetry, Telemetry]
    assert plat.alarms.active(DEVICE) == 0


def test_split_location_batch_is_reassembled_and_every_packet_acknowledged() -> None:
    _, term = logged_in()
    body = build_batch_location([location(t=t) for t in range(0, 1800, 30)])  # 60 items, ~2 KB
    frames = encode_split_frames(MsgId.BATCH_LOCATION, PHONE, 500, body, packet_size=700)
    outs = [term.session.feed(f, float(i)) for i, f in enumerate(frames)]
    assert [len(o.publications) for o in outs] == [0] * (len(frames) - 1) + [60]
    # Each packet is acknowledged once; the whole message adds no second OK.
    assert [results(o) for o in outs] == [[ReplyResult.OK]] * len(frames)
    assert not [r for o in outs for r in o.rejections]


def test_unfinished_split_message_expires_with_a_reason() -> None:
    _, term = logged_in()
    frames = encode_split_frames(MsgId.BATCH_LOCATION, PHONE, 10, bytes(2000), packet_size=1000)
    term.session.feed(frames[0], 0.0)
    assert not term.session.tick(10.0).rejections
    out = term.session.tick(31.0)
    assert [r.reason for r in out.rejections] == [RejectionReason.SPLIT_EXPIRED]


# ---------------------------------------------------------------------------- refusals

def _corrupt_checksum(frame: bytes) -> bytes:
    inner = bytearray(frame[1:-1])
    inner[-1] ^= 0x55
    if inner[-1] in (0x7E, 0x7D):
        inner[-1] ^= 0x01
    return b"\x7e" + bytes(inner) + b"\x7e"


def test_bad_checksum_is_answered_as_bad_message_and_not_published() -> None:
    plat, term = logged_in()
    frame = encode_frame(MsgId.LOCATION, PHONE, 77, build_location(location()))
    out = term.session.feed(_corrupt_checksum(frame), 0.0)
    assert results(out) == [ReplyResult.BAD_MESSAGE] and not out.publications
    assert [r.reason for r in out.rejections] == [RejectionReason.BAD_CHECKSUM]
    assert plat.counters.rejected[RejectionReason.BAD_CHECKSUM] == 1


def test_bad_body_is_answered_as_bad_message() -> None:
    _, term = logged_in()
    out = term.send(MsgId.LOCATION, build_location(location(extras={}))[:-6] + bytes(6))
    assert results(out) == [ReplyResult.BAD_MESSAGE] and not out.publications
    assert out.rejections[0].reason is RejectionReason.BAD_TIME


def test_unsupported_message_is_answered_as_unsupported() -> None:
    _, term = logged_in()
    out = term.send(0x0900, b"\x01")
    assert results(out) == [ReplyResult.UNSUPPORTED]
    assert out.rejections[0].reason is RejectionReason.UNSUPPORTED_MESSAGE


def test_encrypted_message_is_answered_as_unsupported() -> None:
    _, term = logged_in()
    head = bytes.fromhex("02000400") + bytes.fromhex(PHONE) + b"\x00\x09"
    out = term.session.feed(b"\x7e" + escape(head + bytes((checksum(head),))) + b"\x7e", 0.0)
    assert results(out) == [ReplyResult.UNSUPPORTED]
    assert out.rejections[0].reason is RejectionReason.ENCRYPTED


def test_terminal_general_reply_is_accepted_silently() -> None:
    _, term = logged_in()
    out = term.send(MsgId.TERMINAL_GENERAL_REPLY, bytes.fromhex("0001810300"))
    assert not out.replies and not out.rejections and not out.publications


def test_garbage_and_truncated_frames_are_counted_not_answered() -> None:
    plat = platform()
    session = plat.new_session("p")
    out = session.feed(b"hello\x7e\x01\x02\x7e", 0.0)
    assert [r.reason for r in out.rejections] == [RejectionReason.GARBAGE, RejectionReason.TOO_SHORT]
    assert not out.replies


def test_session_answers_2019_terminals_in_2019() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({"12345678901234567"})))
    term = Terminal(plat.new_session("p"), phone="12345678901234567", version=ProtocolVersion.V2019)
    term.login()
    out = term.send(MsgId.LOCATION, build_location(location()))
    header = decode_frame(out.replies[0][1:-1]).header
    assert header.version is ProtocolVersion.V2019 and header.device_id == "12345678901234567"
    assert [p.topic for p in out.publications] == ["vigil/v1/vehicle/12345678901234567/telemetry"]


def test_rejections_become_contract_dead_letters() -> None:
    plat, term = logged_in()
    out = term.session.feed(_corrupt_checksum(encode_frame(MsgId.LOCATION, PHONE, 5, build_location(location()))),
                            0.0)
    letter = dead_letter_of(out.rejections[0], T0)
    again = decode_dead_letter(encode(letter))
    assert again.stage == "edge.jt808" and again.reason is RejectReason.SCHEMA
    assert again.detail.startswith("bad_checksum: ") and again.topic == f"jt808/{DEVICE}/0x0200"
    assert again.payload_encoding == "base64"
    auth = Terminal(plat.new_session("x")).send(MsgId.LOCATION, build_location(location()))
    assert dead_letter_of(auth.rejections[0], T0).reason is RejectReason.UNKNOWN_DEVICE


def test_counters_snapshot_names_reasons_and_messages() -> None:
    plat, term = logged_in()
    term.send(0x0900)
    snap = plat.counters.snapshot()
    assert snap["rejected.unsupported_message"] == 1 and snap["messages.0x0100"] == 1 and snap["sessions_open"] == 1
    term.session.close()
    assert plat.counters.snapshot()["sessions_open"] == 0


@pytest.mark.parametrize("step", [1, 5, 64])
def test_bytes_arriving_in_pieces_give_the_same_result(step: int) -> None:
    plat, term = logged_in()
    stream = b"".join(encode_frame(MsgId.LOCATION, PHONE, i, build_location(location(t=i))) for i in range(10))
    pubs = []
    for i in range(0, len(stream), step):
        pubs.extend(term.session.feed(stream[i:i + step], 0.0).publications)
    assert len(pubs) == 10 and not plat.counters.rejected



def test_area_alarm_event_names_the_area_and_direction() -> None:
    _, term = logged_in()
    enter = location(1 << 20, t=0, extras={0x12: bytes((3,)) + dword(101) + b"\x00"})
    events = [e for e in published(term.send(MsgId.LOCATION, build_location(enter))) if isinstance(e, DeviceEvent)]
    assert [(e.type, e.state, e.data["area_id"], e.data["area_direction"]) for e in events] == \
        [("area_entry_exit", "start", 101, "in")]


def _statuses(out: SessionOutput) -> list[tuple[str, bool, str | None, bool]]:
    result = []
    for p in out.publications:
        if p.topic.endswith("/status"):
            msg = decode_device_message(p.topic, p.payload).payload
            assert isinstance(msg, DeviceStatus)
            result.append((p.topic, msg.online, msg.reason, p.retain))
    return result


def test_terminal_status_online_on_auth_offline_on_close_retained() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})), wall_clock=lambda: T0)
    term = Terminal(plat.new_session("10.0.0.9:1"))
    _, code = term.register()
    out = term.send(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), V13))
    topic = f"vigil/v1/vehicle/{DEVICE}/status"
    assert _statuses(out) == [(topic, True, "authenticated", True)]
    status = decode_device_message(out.publications[0].topic, out.publications[0].payload).payload
    assert isinstance(status, DeviceStatus) and status.ts == T0 and status.detail == {"peer": "10.0.0.9:1"}
    assert _statuses(term.session.close("idle timeout")) == [(topic, False, "idle timeout", True)]


def test_reconnected_terminal_is_not_reported_offline_by_its_old_connection() -> None:
    plat, old = logged_in()
    new = Terminal(plat.new_session("new"))
    new.login()
    assert _statuses(old.session.close()) == []
    assert [s[1:3] for s in _statuses(new.session.close())] == [(False, "connection closed")]


def test_logout_and_failed_auth_report_offline() -> None:
    _, term = logged_in()
    assert [s[1:3] for s in _statuses(term.send(MsgId.LOGOUT))] == [(False, "logout")]
    _, term = logged_in()
    out = term.send(MsgId.AUTHENTICATE, build_auth(AuthRequest("wrong"), V13))
    assert [s[1:3] for s in _statuses(out)] == [(False, "authentication failed")]
    assert not term.session.authenticated
