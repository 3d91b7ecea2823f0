"""The JT/T 809 session: login, link management, positions, re-sent batches, alarms, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.contracts import DeviceEvent, DeviceStatus, RejectReason, Telemetry, decode_device_message
from edge.jt808.session import SessionOutput
from edge.jt809.codec import Jt809Keys, Jt809StreamSplitter, RejectionReason, crypt, decode_frame, encode_frame
from edge.jt809.directory import LowerPlatform, StaticPlatforms, StaticVehicles
from edge.jt809.geo import wgs84_to_gcj02
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    LoginResult,
    MsgId,
    VehicleRegistration,
    WarnInfo,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
    build_logout,
    build_vehicle_registration,
    build_warn,
    parse_login_reply,
)
from edge.jt809.session import (
    STAGE,
    Jt809Limits,
    Jt809Platform,
    Jt809Session,
    SubLinkRequest,
    dead_letter_of,
    location_report,
)

ACCESS = 20261203
KEYS = Jt809Keys(10_000_000, 20_000_000, 30_000_000)
LOWER = LowerPlatform(ACCESS, 1001, "pw809", "省平台", sublink_hosts=frozenset({"10.9.9.9"}))
SECURE = LowerPlatform(555, 2002, "s3cret", "企业平台", keys=KEYS, encrypt_replies=True)
PLATE, COLOUR, VEHICLE = "浙A12345", 2, "veh-0001"
WHEN = datetime(2026, 12, 3, 9, 0, tzinfo=CHINA)


def gnss(t: datetime = WHEN, *, alarm: int = 0, state: int = 3, lat: float = 30.25, lon: float = 120.17,
         speed: int = 60, encrypted: bool = False) -> GnssData:
    return GnssData(encrypted, t, round(lon * 1e6), round(lat * 1e6), speed, speed - 1, 12345, 90, 12, state, alarm)


class Lower:
    """A lower platform's main link talking to one session."""

    def __init__(self, platform: Jt809Platform, peer: str = "10.0.0.5:40000", lower: LowerPlatform = LOWER) -> None:
        self.platform, self.lower = platform, lower
        self.session: Jt809Session = platform.new_session(peer)
        self.serial = 0
        self.now = 100.0

    def send(self, msg_id: int, body: bytes, *, access: int | None = None, encrypt: bool = False) -> SessionOutput:
        self.serial += 1
        wire = encode_frame(msg_id, self.serial, self.lower.access_code if access is None else access, body,
                            keys=self.lower.keys if encrypt else None, key=self.serial * 7919)
        return self.session.feed(wire, self.now)

    def login(self, password: str | None = None, user: int | None = None, ip: str = "10.0.0.5",
              port: int = 9809, **kw: object) -> tuple[int, int, SessionOutput]:
        out = self.send(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(
            self.lower.user_id if user is None else user, self.lower.password if password is None else password,
            ip, port)), **kw)  # type: ignore[arg-type]
        frame = decode_frame(out.replies[0][1:-1])
        assert frame.header.msg_id == MsgId.UP_CONNECT_RSP
        body = crypt(frame.body, frame.header.key, self.lower.keys) if frame.header.encrypted and self.lower.keys \
            else frame.body
        result, code = parse_login_reply(body)
        return result, code, out

    def position(self, g: GnssData, plate: str = PLATE, colour: int = COLOUR, **kw: object) -> SessionOutput:
        return self.send(MsgId.UP_EXG_MSG, build_envelope(plate, colour, DataType.UP_EXG_MSG_REAL_LOCATION,
                                                          build_gnss(g)), **kw)  # type: ignore[arg-type]


@pytest.fixture
def platform() -> Jt809Platform:
    return Jt809Platform(StaticPlatforms({ACCESS: LOWER, 555: SECURE}),
                         StaticVehicles.of({(PLATE, COLOUR): VEHICLE, ("浙A99999", 1): "veh-0002"}),
                         wall_clock=lambda: datetime(2026, 12, 3, 1, 0, tzinfo=UTC))


def decoded(out: SessionOutput) -> list[object]:
    return [decode_device_message(p.topic, p.payload).payload for p in out.publications]


def test_login_answers_verify_code_and_asks_for_the_sub_link(platform: Jt809Platform) -> None:
    asked: list[SubLinkRequest] = []
    platform.on_sublink = asked.append
    lower = Lower(platform)
    result, code, out = lower.login()
    assert result == LoginResult.OK and code != 0 and lower.session.authenticated and not out.rejections
    assert asked == [SubLinkRequest(LOWER, "10.0.0.5", 9809, code)]
    assert platform.owners[ACCESS] is lower.session


@pytest.mark.parametrize(("kw", "result", "reason"), [
    ({"password": "wrong"}, LoginResult.BAD_PASSWORD, RejectionReason.AUTH_FAILED),
    ({"user": 9}, LoginResult.USER_NOT_REGISTERED, RejectionReason.AUTH_FAILED),
    ({"access": 1}, LoginResult.BAD_ACCESS_CODE, RejectionReason.UNKNOWN_TERMINAL),
])
def test_bad_logins_are_refused_and_counted(platform: Jt809Platform, kw: dict[str, object], result: LoginResult,
                                            reason: RejectionReason) -> None:
    lower = Lower(platform)
    got, code, out = lower.login(**kw)  # type: ignore[arg-type]
    assert (got, code) == (result, 0) and not lower.session.authenticated
    assert [r.reason for r in out.rejections] == [reason] and platform.counters.rejected[reason] == 1
    assert b"wrong" not in out.rejections[0].raw  # the password never reaches a dead letter
    assert not out.publications


def test_login_from_an_address_not_allowed(platform: Jt809Platform) -> None:
    restricted = LowerPlatform(77, 1, "pw", addresses=frozenset({"10.1.1.1"}))
    plat = Jt809Platform(StaticPlatforms({77: restricted}), StaticVehicles.of({}))
    result, _, _ = Lower(plat, lower=restricted).login()
    assert result == LoginResult.BAD_IP


def test_three_failed_logins_close_the_connection(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    closes = [lower.login(password="x")[2].close for _ in range(3)]
    assert closes == [False, False, True]


def test_login_throttle_per_platform(platform: Jt809Platform) -> None:
    plat = Jt809Platform(StaticPlatforms({ACCESS: LOWER}), StaticVehicles.of({}),
                         limits=Jt809Limits(per_platform_burst=2, per_platform_per_s=0.0))
    for _ in range(2):
        assert Lower(plat).login()[0] == LoginResult.OK
    lower = Lower(plat)
    out = lower.send(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(1001, "pw809", "10.0.0.5", 1)))
    assert out.close and not out.replies and out.rejections[0].reason is RejectionReason.RATE_LIMITED


def test_data_before_login_is_refused_and_unauthenticated_floods_are_cut(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    out = lower.position(gnss())
    assert not out.publications and out.rejections[0].reason is RejectionReason.NOT_AUTHENTICATED
    closed = False
    for _ in range(10):
        closed = closed or lower.send(MsgId.UP_LINKTEST_REQ, b"").close
    assert closed and platform.counters.rejected[RejectionReason.TOO_MANY_ERRORS] == 1


def test_positions_become_vehicle_telemetry(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    out = lower.position(gnss(speed=72))
    telemetry = [m for m in decoded(out) if isinstance(m, Telemetry)]
    statuses = [m for m in decoded(out) if isinstance(m, DeviceStatus)]
    assert [p.topic for p in out.publications] == [f"vigil/v1/vehicle/{VEHICLE}/telemetry",
                                                   f"vigil/v1/vehicle/{VEHICLE}/status"]
    t = telemetry[0]
    assert t.ts == datetime(2026, 12, 3, 1, 0, tzinfo=UTC) and t.seq == lower.serial
    assert t.metrics["lat"] == 30.25 and t.metrics["lon"] == 120.17 and t.metrics["speed_kmh"] == 72.0
    assert t.metrics["ignition"] is True and t.metrics["gnss_fixed"] is True and t.metrics["resent"] is False
    assert t.metrics["mileage_km"] == 12345 and t.metrics["recorder_speed_kmh"] == 71 and t.metrics["heading_deg"] == 90
    assert statuses[0].online and "省平台" in (statuses[0].reason or "")
    # The vehicle is online once per connection, not once per position.
    assert [p.topic.rsplit("/", 1)[1] for p in lower.position(gnss(WHEN + timedelta(seconds=30))).publications] == [
        "telemetry"]


def test_hemispheres_and_gcj02_positions() -> None:
    south_west = location_report(gnss(state=0b1111, lat=33.9, lon=18.4))
    assert (south_west.latitude, south_west.longitude) == (-33.9, -18.4)
    glat, glon = wgs84_to_gcj02(30.25, 120.17)
    report = location_report(gnss(lat=glat, lon=glon, encrypted=True))
    assert abs(report.latitude - 30.25) < 2e-6 and abs(report.longitude - 120.17) < 2e-6


def test_unknown_plate_is_refused_never_a_device(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    out = lower.position(gnss(), plate="../../#")
    assert not out.publications
    (rej,) = out.rejections
    assert rej.reason is RejectionReason.UNKNOWN_TERMINAL and "../../#" in rej.detail
    letter = dead_letter_of(rej, datetime(2026, 12, 3, tzinfo=UTC))
    assert letter.stage == STAGE and letter.reason is RejectReason.UNKNOWN_DEVICE
    assert letter.topic == f"jt809/platform-{ACCESS}/0x1200"
    # Same plate, other colour: another vehicle, also unknown.
    assert lower.position(gnss(), colour=1).rejections[0].reason is RejectionReason.UNKNOWN_TERMINAL


def test_resent_batch_is_published_in_time_order_without_alarm_edges(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    lower.position(gnss(WHEN + timedelta(minutes=10)))
    times = [WHEN + timedelta(minutes=m) for m in (4, 1, 3, 0, 2)]
    batch = build_history([gnss(t, alarm=1) for t in times])
    out = lower.send(MsgId.UP_EXG_MSG, build_envelope(PLATE, COLOUR, DataType.UP_EXG_MSG_HISTORY_LOCATION, batch))
    telemetry = [m for m in decoded(out) if isinstance(m, Telemetry)]
    assert [t.ts for t in telemetry] == sorted(t.astimezone(UTC) for t in times)
    assert all(t.metrics["resent"] is True and t.seq is None for t in telemetry)
    assert not [m for m in decoded(out) if isinstance(m, DeviceEvent)]


def test_alarm_bits_start_and_end_like_the_808_gateway(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    start = [m for m in decoded(lower.position(gnss(WHEN, alarm=0b11))) if isinstance(m, DeviceEvent)]
    assert {(e.type, e.state) for e in start} == {("emergency", "start"), ("overspeed", "start")}
    end = [m for m in decoded(lower.position(gnss(WHEN + timedelta(seconds=30), alarm=0b10)))
           if isinstance(m, DeviceEvent)]
    assert [(e.type, e.state) for e in end] == [("emergency", "end")]
    assert end[0].event_id == next(e.event_id for e in start if e.type == "emergency")


@pytest.mark.parametrize(("code", "etype"), [(0x0003, "emergency"), (0x0001, "overspeed"),
                                             (0x0002, "fatigue_driving"), (0x0042, "warn_type_66")])
def test_warn_info_becomes_an_instant_event(platform: Jt809Platform, code: int, etype: str) -> None:
    lower = Lower(platform)
    lower.login()
    when = datetime(2026, 12, 3, 1, 2, 3, tzinfo=UTC)
    out = lower.send(MsgId.UP_WARN_MSG, build_envelope(PLATE, COLOUR, DataType.UP_WARN_MSG_ADPT_INFO,
                                                       build_warn(WarnInfo(1, code, when, 9, "按钮"))))
    (event,) = [m for m in decoded(out) if isinstance(m, DeviceEvent)]
    assert (event.type, event.state, event.ts) == (etype, "instant", when)
    assert event.data["info_id"] == 9 and event.data["content"] == "按钮" and event.event_id == f"{VEHICLE}-jt809-{ACCESS}-9"


def test_heartbeat_registration_logout(platform: Jt809Platform) -> None:
    closed: list[int] = []
    platform.on_logout = closed.append
    lower = Lower(platform)
    lower.login()
    reply = lower.send(MsgId.UP_LINKTEST_REQ, b"").replies
    assert decode_frame(reply[0][1:-1]).header.msg_id == MsgId.UP_LINKTEST_RSP
    reg = build_vehicle_registration(VehicleRegistration("P1", "M1", "X", "T1", "013800138000"))
    out = lower.send(MsgId.UP_EXG_MSG, build_envelope(PLATE, COLOUR, DataType.UP_EXG_MSG_REGISTER, reg))
    assert not out.rejections and platform.counters.messages[DataType.UP_EXG_MSG_REGISTER] == 1
    out = lower.send(MsgId.UP_DISCONNECT_REQ, build_logout(1001, "pw809"))
    assert decode_frame(out.replies[0][1:-1]).header.msg_id == MsgId.UP_DISCONNECT_RSP
    offline = [m for m in decoded(out) if isinstance(m, DeviceStatus)]
    assert offline and not offline[0].online and "logout" in (offline[0].reason or "")
    assert closed == [ACCESS] and not lower.session.authenticated


def test_reconnect_takes_over_and_old_close_does_not_mark_offline(platform: Jt809Platform) -> None:
    first = Lower(platform)
    first.login()
    first.position(gnss())
    second = Lower(platform, "10.0.0.5:40001")
    second.login()
    second.position(gnss(WHEN + timedelta(seconds=30)))
    assert not first.session.close("connection closed").publications
    out = second.session.close("connection closed")
    assert [m.online for m in decoded(out) if isinstance(m, DeviceStatus)] == [False]


def test_other_access_code_after_login_is_refused(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    out = lower.send(MsgId.UP_LINKTEST_REQ, b"", access=555)
    assert out.rejections[0].reason is RejectionReason.IDENTITY_MISMATCH and not out.replies


def test_encrypted_platform(platform: Jt809Platform) -> None:
    lower = Lower(platform, lower=SECURE)
    result, _, out = lower.login(encrypt=True)
    assert result == LoginResult.OK and decode_frame(out.replies[0][1:-1]).header.encrypted
    out = lower.position(gnss(), encrypt=True)
    assert [m for m in decoded(out) if isinstance(m, Telemetry)]
    # Encrypted bodies from a platform with no keys on file are refused.
    plain = Lower(platform)
    plain.login()
    plain.lower = LowerPlatform(ACCESS, 1001, "pw809", keys=KEYS)
    out = plain.position(gnss(), encrypt=True)
    assert out.rejections[0].reason is RejectionReason.ENCRYPTED and not out.publications


def test_sub_link_only_to_allowed_addresses(platform: Jt809Platform) -> None:
    asked: list[SubLinkRequest] = []
    platform.on_sublink = asked.append
    _, _, out = Lower(platform).login(ip="169.254.169.254", port=80)
    assert not asked and platform.sublinks_refused == 1
    assert out.rejections[0].reason is RejectionReason.IDENTITY_MISMATCH
    Lower(platform, "10.0.0.6:1").login(ip="10.9.9.9")
    assert [a.host for a in asked] == ["10.9.9.9"]


def test_unsupported_and_malformed(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    lower.login()
    out = lower.send(MsgId.UP_EXG_MSG, build_envelope(PLATE, COLOUR, 0x1207, b""))
    assert out.rejections[0].reason is RejectionReason.UNSUPPORTED_MESSAGE
    out = lower.send(0x1600, b"")
    assert out.rejections[0].reason is RejectionReason.UNSUPPORTED_MESSAGE
    out = lower.send(MsgId.UP_EXG_MSG, build_envelope(PLATE, COLOUR, DataType.UP_EXG_MSG_REAL_LOCATION, b"\x00"))
    assert out.rejections[0].reason is RejectionReason.BAD_BODY
    out = lower.session.feed(b"\x5b\x00\x01\x5d", 1.0)
    assert out.rejections[0].reason is RejectionReason.TOO_SHORT
    assert lower.session.authenticated  # refusals after login do not close the link


def test_a_read_holds_at_most_one_unfinished_frame(platform: Jt809Platform) -> None:
    lower = Lower(platform)
    out = lower.session.feed(b"\x5b" + b"\x00" * 100_000, 1.0)
    assert lower.session.buffered == 0 and out.rejections[0].reason is RejectionReason.FRAME_TOO_LONG
    assert Jt809StreamSplitter().max_escaped == 32 * 1024


def test_labelled_scope_limits_a_platform_to_its_own_vehicles() -> None:
    scoped = LowerPlatform(ACCESS, 1001, "pw809", "企业平台", labelled_vehicles_only=True)
    plat = Jt809Platform(StaticPlatforms({ACCESS: scoped}),
                         StaticVehicles.of({(PLATE, COLOUR): VEHICLE, ("浙A99999", 1): "veh-0002"},
                                           {VEHICLE: frozenset({ACCESS}), "veh-0002": frozenset({555})}))
    lower = Lower(plat, lower=scoped)
    lower.login()
    assert next(p.topic for p in lower.position(gnss()).publications).endswith(f"/{VEHICLE}/telemetry")
    out = lower.position(gnss(), plate="浙A99999", colour=1)
    assert not out.publications and out.rejections[0].reason is RejectionReason.UNKNOWN_TERMINAL
    assert "not one of platform" in out.rejections[0].detail


def test_sub_link_session_is_the_platform_and_takes_no_login(platform: Jt809Platform) -> None:
    asked: list[SubLinkRequest] = []
    platform.on_sublink = asked.append
    session = platform.sublink_session(LOWER, "10.0.0.5:9809")
    lower = Lower(platform)
    lower.session = session
    assert lower.position(gnss()).publications  # no login needed: the link was opened for LOWER
    out = lower.send(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(1001, "pw809", "10.0.0.5", 1)))
    assert out.rejections[0].reason is RejectionReason.UNSUPPORTED_MESSAGE and not asked and not out.replies
    out = lower.send(MsgId.DOWN_CONNECT_RSP, b"\x00")
    assert session.sublink_result == 0 and not out.rejections
