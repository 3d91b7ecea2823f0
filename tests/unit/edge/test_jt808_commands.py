"""JT/T 808 driver identity (0x0702), platform commands (0x8203, 0x8300, 0x8103, 0x8104/0x8106) and replies
(0x0001, 0x0104): codec round trips and the session / command desk, frames through the real session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.contracts import DeviceCommand, DeviceEvent, Telemetry, decode_device_message
from edge.jt808.codec import Jt808DecodeError, ProtocolVersion, RejectionReason, decode_frame
from edge.jt808.commands import (
    CLEAR_ON_ACK_MASK,
    CommandId,
    DriverIdentity,
    TextFlag,
    build_alarm_confirm,
    build_driver_identity,
    build_params_reply,
    build_query_params,
    build_set_params,
    build_text,
    parse_alarm_confirm,
    parse_driver_identity,
    parse_params_reply,
    parse_set_params,
    parse_text,
)
from edge.jt808.messages import MsgId, ReplyResult, build_location, parse_general_reply
from edge.jt808.session import Jt808Platform, SessionOutput, StaticTerminalRegistry
from tests.unit.edge.test_jt808_session import DEVICE, PHONE, T0, Terminal, location, results

V13, V19 = ProtocolVersion.V2013, ProtocolVersion.V2019


def _events(out: SessionOutput) -> list[DeviceEvent]:
    msgs = [decode_device_message(p.topic, p.payload).payload for p in out.publications]
    return [m for m in msgs if isinstance(m, DeviceEvent)]


def _telemetry(out: SessionOutput) -> list[Telemetry]:
    msgs = [decode_device_message(p.topic, p.payload).payload for p in out.publications]
    return [m for m in msgs if isinstance(m, Telemetry)]


def _frames(out: SessionOutput) -> list[tuple[int, int, bytes]]:
    """(message id, serial, body) of what the platform wrote to the terminal."""
    frames = [decode_frame(r[1:-1]) for r in out.replies]
    return [(f.header.msg_id, f.header.serial, f.body) for f in frames]


def _online(version: ProtocolVersion = V13) -> tuple[Jt808Platform, Terminal]:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})))
    term = Terminal(plat.new_session("10.0.0.1:5000"), PHONE, version)
    term.login()
    return plat, term


def _command(name: str, cid: str, **params: object) -> DeviceCommand:
    return DeviceCommand(ts=T0, command=name, command_id=cid, params=dict(params))


# ---------------------------------------------------------------------------- codec

@pytest.mark.parametrize("version", [V13, V19])
def test_driver_sign_in_round_trips_in_both_layouts(version: ProtocolVersion) -> None:
    ident = DriverIdentity(True, T0, 0, "张三", "330100198001010011", "杭州市道路运输管理局", "2030-12-31",
                           "330102198001010011" if version is V19 else "")
    got = parse_driver_identity(build_driver_identity(ident, version), version)
    assert got == ident and got.read_ok


def test_driver_sign_out_and_card_errors() -> None:
    out = parse_driver_identity(build_driver_identity(DriverIdentity(False, T0), V13), V13)
    assert not out.signed_in and out.time == T0
    bad = parse_driver_identity(build_driver_identity(DriverIdentity(True, T0, 2), V13), V13)
    assert bad.signed_in and not bad.read_ok and bad.card_result == 2 and bad.certificate == ""


@pytest.mark.parametrize("body", [b"", b"\x03" + bytes(6), b"\x01" + bytes.fromhex("261126090000") + b"\x00\x09ab",
                                  b"\x01" + bytes.fromhex("261126090000") + b"\x00\x02ab" + bytes(20)])
def test_bad_driver_identity_is_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(Jt808DecodeError) as exc:
        parse_driver_identity(body, V13)
    assert exc.value.reason is RejectionReason.BAD_BODY


def test_alarm_confirmation_only_confirms_clear_on_ack_bits() -> None:
    serial, mask = parse_alarm_confirm(build_alarm_confirm(0xFFFFFFFF, 7))
    assert serial == 7 and mask == CLEAR_ON_ACK_MASK == (1 | 8 | 1 << 20 | 1 << 21 | 1 << 22 | 1 << 27 | 1 << 28)


def test_text_message_layouts_and_limits() -> None:
    assert parse_text(build_text("请靠边休息", V13), V13) == (TextFlag.DISPLAY | TextFlag.TTS, "请靠边休息")
    body19 = build_text("请靠边休息", V19, flags=TextFlag.EMERGENCY, text_type=2)
    assert body19[:2] == b"\x01\x02" and parse_text(body19, V19) == (1, "请靠边休息")
    with pytest.raises(ValueError):
        build_text("", V13)
    with pytest.raises(ValueError):
        build_text("字" * 600, V13)


def test_parameters_set_query_and_reply() -> None:
    body = build_set_params({"max_speed_kmh": 80, "overspeed_warning_margin_kmh": 5.0})
    assert parse_set_params(body) == {"max_speed_kmh": 80, "overspeed_warning_margin_kmh": 5.0}
    assert build_query_params() == (CommandId.QUERY_PARAMS, b"")
    msg_id, given = build_query_params(["max_speed_kmh", "continuous_driving_limit_s"])
    assert msg_id == CommandId.QUERY_GIVEN_PARAMS and given == b"\x02" + bytes.fromhex("00000055") + bytes.fromhex(
        "00000057")
    reply = parse_params_reply(build_params_reply(9, {"max_speed_kmh": 100, "continuous_driving_limit_s": 14400}))
    assert reply.reply_serial == 9 and reply.values == {"max_speed_kmh": 100, "continuous_driving_limit_s": 14400}
    unknown = parse_params_reply(b"\x00\x09\x01" + bytes.fromhex("0000F001") + b"\x03abc")
    assert unknown.values == {"param_0xf001": "abc"}
    for bad in ({"nope": 1}, {"max_speed_kmh": -1}, {"max_speed_kmh": True}, {}):
        with pytest.raises(ValueError):
            build_set_params(bad)  # type: ignore[arg-type]
    with pytest.raises(Jt808DecodeError):
        parse_params_reply(b"\x00\x09\x02" + bytes.fromhex("00000055") + b"\x04\x00")


# ---------------------------------------------------------------------------- session: driver identity

@pytest.mark.parametrize("version", [V13, V19])
def test_sign_in_is_published_as_telemetry_and_event_and_answered(version: ProtocolVersion) -> None:
    _, term = _online(version)
    term.send(MsgId.LOCATION, build_location(location(t=600)))
    ident = DriverIdentity(True, T0 + timedelta(seconds=30), 0, "李四", "330100198502020022", "杭州市运管局",
                           "2029-06-30", "330102198502020022")
    out = term.send(CommandId.DRIVER_IDENTITY, build_driver_identity(ident, version))
    assert results(out) == [ReplyResult.OK]
    (tele,) = _telemetry(out)
    assert tele.metrics == {"driver_signed_in": True, "driver_id": "330100198502020022", "driver_name": "李四"}
    # Not older than the last live position: the driver becomes the vehicle's current one in the rules.
    assert tele.ts == T0 + timedelta(seconds=600)
    (event,) = _events(out)
    assert event.type == "driver_sign_in" and event.data["driver_id"] == "330100198502020022"
    assert "330102198502020022" not in str(event.data)  # the identity card number is not published


def test_sign_out_and_card_error_events() -> None:
    _, term = _online()
    out = term.send(CommandId.DRIVER_IDENTITY, build_driver_identity(DriverIdentity(False, T0), V13))
    assert _telemetry(out)[0].metrics == {"driver_signed_in": False}
    assert _events(out)[0].type == "driver_sign_out"
    err = term.send(CommandId.DRIVER_IDENTITY, build_driver_identity(DriverIdentity(True, T0, 1), V13))
    assert [e.type for e in _events(err)] == ["driver_card_error"] and not _telemetry(err)


def test_driver_identity_before_authentication_or_malformed_is_refused() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})))
    term = Terminal(plat.new_session("10.0.0.2:5000"))
    out = term.send(CommandId.DRIVER_IDENTITY, build_driver_identity(DriverIdentity(False, T0), V13))
    assert [r.reason for r in out.rejections] == [RejectionReason.NOT_AUTHENTICATED] and not out.publications
    _, term = _online()
    bad = term.send(CommandId.DRIVER_IDENTITY, b"\x01\x02")
    assert [r.reason for r in bad.rejections] == [RejectionReason.BAD_BODY]
    assert results(bad) == [ReplyResult.BAD_MESSAGE] and not bad.publications


# ---------------------------------------------------------------------------- session: platform commands

def test_text_command_is_sent_on_the_session_and_its_reply_audited() -> None:
    plat, term = _online()
    session, out = plat.command(DEVICE, _command("jt808.text", "op-1", text="前方施工, 请减速"), 10.0)
    assert session is term.session
    ((msg_id, serial, body),) = _frames(out)
    assert msg_id == CommandId.TEXT and parse_text(body, V13)[1] == "前方施工, 请减速"
    assert [(e.type, e.data["status"], e.event_id) for e in _events(out)] == [("jt808.command", "sent", "op-1")]
    # The terminal's general reply (0x0001) closes the command; no reply goes back to a reply.
    reply = term.send(MsgId.TERMINAL_GENERAL_REPLY, serial.to_bytes(2, "big") + msg_id.to_bytes(2, "big") + b"\x00")
    assert not reply.replies and [e.data["status"] for e in _events(reply)] == ["acked"]
    assert not plat.commands.pending.get(DEVICE)
    # A second reply to the same serial, or one to a serial never used, changes nothing.
    again = term.send(MsgId.TERMINAL_GENERAL_REPLY, serial.to_bytes(2, "big") + msg_id.to_bytes(2, "big") + b"\x00")
    assert not again.publications and not again.rejections


def test_alarm_confirmation_command_and_a_failed_reply() -> None:
    plat, term = _online()
    term.send(MsgId.LOCATION, build_location(location(alarm=1 | 1 << 27)))
    _, out = plat.command(DEVICE, _command("jt808.alarm_ack", "ack-1", bits=[0, "illegal_ignition", 2]), 0.0)
    ((msg_id, serial, body),) = _frames(out)
    assert msg_id == CommandId.ALARM_CONFIRM and parse_alarm_confirm(body) == (0, 1 | 1 << 27)
    reply = term.send(MsgId.TERMINAL_GENERAL_REPLY, serial.to_bytes(2, "big") + msg_id.to_bytes(2, "big") + b"\x01")
    (event,) = _events(reply)
    assert event.data["status"] == "failed" and event.data["result"] == 1


def test_parameter_query_reply_is_audited_and_published_as_terminal_telemetry() -> None:
    plat, term = _online()
    term.send(MsgId.LOCATION, build_location(location(t=120)))
    _, out = plat.command(DEVICE, _command("jt808.query_params", "q-1"), 0.0)
    ((msg_id, serial, body),) = _frames(out)
    assert msg_id == CommandId.QUERY_PARAMS and body == b""
    reply = term.send(CommandId.QUERY_PARAMS_REPLY,
                      build_params_reply(serial, {"max_speed_kmh": 100, "continuous_driving_limit_s": 14400}))
    (event,) = _events(reply)
    assert event.data["status"] == "acked" and event.data["values"]["max_speed_kmh"] == 100
    (tele,) = _telemetry(reply)
    assert tele.metrics == {"terminal.max_speed_kmh": 100, "terminal.continuous_driving_limit_s": 14400}
    assert tele.ts == T0 + timedelta(seconds=120)  # the terminal's clock, not the platform's: never "ahead"
    _, setter = plat.command(DEVICE, _command("jt808.set_params", "s-1", values={"max_speed_kmh": 80}), 0.0)
    ((set_id, _, set_body),) = _frames(setter)
    assert set_id == CommandId.SET_PARAMS and parse_set_params(set_body) == {"max_speed_kmh": 80}


@pytest.mark.parametrize(("command", "why"), [
    (_command("jt808.text", "x-1", text=""), "non-empty"),
    (_command("jt808.alarm_ack", "x-2", bits=[1, 2]), "clear-on-ack"),
    (_command("jt808.set_params", "x-3", values={"bogus": 1}), "unknown terminal parameter"),
    (_command("jt808.reboot", "x-4"), "unknown command"),
])
def test_invalid_commands_are_refused_and_audited_without_reaching_the_terminal(command: DeviceCommand,
                                                                                why: str) -> None:
    plat, _ = _online()
    session, out = plat.command(DEVICE, command, 0.0)
    assert session is None and not out.replies
    (event,) = _events(out)
    assert event.data["status"] == "refused" and why in event.data["detail"]


def test_offline_terminal_busy_terminal_and_unanswered_commands() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})))
    session, out = plat.command(DEVICE, _command("jt808.text", "o-1", text="hi"), 0.0)
    assert session is None and _events(out)[0].data["detail"] == "terminal offline"
    plat, term = _online()
    plat.commands.max_pending = 2
    for i in range(2):
        plat.command(DEVICE, _command("jt808.text", f"b-{i}", text="hi"), 0.0)
    _, busy = plat.command(DEVICE, _command("jt808.text", "b-2", text="hi"), 0.0)
    assert not busy.replies and "already wait" in _events(busy)[0].data["detail"]
    expired = plat.commands.expire(plat.commands.reply_timeout_s + 1)
    assert sorted(decode_device_message(p.topic, p.payload).payload.data["status"]  # type: ignore[union-attr]
                  for p in expired) == ["no_reply", "no_reply"]
    # After logout the terminal is offline for commands; what it never answered is closed in the audit.
    plat.command(DEVICE, _command("jt808.text", "b-3", text="hi"), 0.0)
    logout = term.send(MsgId.LOGOUT)
    assert [(e.event_id, e.data["status"]) for e in _events(logout)] == [("b-3", "no_reply")]
    assert not plat.commands.pending.get(DEVICE)
    assert plat.command(DEVICE, _command("jt808.text", "l-1", text="hi"), 0.0)[0] is None


def test_repeated_command_ids_are_recognised() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})))
    cmd = _command("jt808.text", "dup-1", text="hi")
    assert not plat.commands.repeated(cmd) and plat.commands.repeated(cmd)
    assert not plat.commands.repeated(DeviceCommand(ts=datetime.now(UTC), command="jt808.text"))


def test_general_reply_from_a_stranger_is_ignored() -> None:
    plat = Jt808Platform(StaticTerminalRegistry(frozenset({DEVICE})))
    term = Terminal(plat.new_session("10.0.0.3:5000"))
    out = term.send(MsgId.TERMINAL_GENERAL_REPLY, b"\x00\x01\x83\x00\x00")
    assert not out.replies and not out.publications and not out.rejections
    assert parse_general_reply(b"\x00\x01\x83\x00\x00").reply_id == 0x8300


# ---------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([V13, V19]))
def test_new_body_parsers_return_or_refuse_with_a_reason(body: bytes, version: ProtocolVersion) -> None:
    for fn, args in ((parse_driver_identity, (body, version)), (parse_params_reply, (body,)),
                     (parse_set_params, (body,)), (parse_alarm_confirm, (body,)), (parse_text, (body, version)),
                     (parse_general_reply, (body,))):
        try:
            fn(*args)  # type: ignore[operator]
        except Jt808DecodeError as exc:
            assert isinstance(exc.reason, RejectionReason) and exc.detail


_DRIVER = build_driver_identity(DriverIdentity(True, T0, 0, "张三", "330100198001010011", "运管局", "2030-12-31"), V13)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 120), st.integers(0, 255)), max_size=8),
       st.integers(1, 61))
def test_session_survives_mutated_driver_and_reply_frames(edits: list[tuple[int, int, int]], read_size: int) -> None:
    from edge.jt808.codec import encode_frame

    plat, term = _online()
    plat.command(DEVICE, _command("jt808.query_params", "fz-1"), 0.0)
    frames = [bytearray(encode_frame(CommandId.DRIVER_IDENTITY, PHONE, 50, _DRIVER)),
              bytearray(encode_frame(CommandId.QUERY_PARAMS_REPLY, PHONE, 51, build_params_reply(
                  1, {"max_speed_kmh": 100}))),
              bytearray(encode_frame(MsgId.TERMINAL_GENERAL_REPLY, PHONE, 52, b"\x00\x01\x81\x04\x00"))]
    for which, pos, value in edits:
        frames[which][pos % len(frames[which])] = value
    stream = b"".join(bytes(f) for f in frames)
    for i in range(0, len(stream), read_size):
        out = term.session.feed(stream[i:i + read_size], 1.0)
        for pub in out.publications:
            decode_device_message(pub.topic, pub.payload)  # a valid contract message, or this raises
        for rej in out.rejections:
            assert isinstance(rej.reason, RejectionReason) and rej.detail
        for reply in out.replies:
            decode_frame(reply[1:-1])


STABLE_NAMES = {3: "danger_warning", 5: "gnss_antenna_disconnected", 6: "gnss_antenna_short_circuit",
                8: "main_power_lost", 26: "vehicle_stolen", 27: "illegal_ignition", 28: "illegal_displacement",
                29: "collision_warning", 30: "rollover_warning", 31: "illegal_door_open"}
"""Event types the vehicle rules match on (rules/packs/vehicle.yaml): renaming one breaks a rule."""


def test_new_alarm_bits_become_start_and_end_events_with_stable_names() -> None:
    _, term = _online()
    mask = sum(1 << b for b in STABLE_NAMES)
    started = _events(term.send(MsgId.LOCATION, build_location(location(alarm=mask, t=1))))
    assert {(e.type, e.state, e.data["alarm_bit"]) for e in started} == {
        (name, "start", bit) for bit, name in STABLE_NAMES.items()}
    ended = _events(term.send(MsgId.LOCATION, build_location(location(alarm=0, t=2))))
    assert {(e.type, e.state) for e in ended} == {(name, "end") for name in STABLE_NAMES.values()}
    assert {e.event_id for e in ended} == {e.event_id for e in started}
    assert {e.severity for e in started if e.type in ("collision_warning", "rollover_warning")} == {"critical"}
