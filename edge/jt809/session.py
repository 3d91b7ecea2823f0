"""The JT/T 809 superior-platform side as pure state machines: main-link login, vehicle data, alarms.

``Jt809Platform`` holds what all connections share (lower platforms, registry vehicles,
throttles, alarm state, counters); ``Jt809Session`` is one TCP connection: bytes in, replies /
publications / rejections out (the gateway runtime's ``SessionOutput``, so the runtime's asyncio
server, caps, backpressure and aggregated dead letters run it, as they run JT/T 808's). No sockets, no clocks of its
own: the adapter passes ``now``.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec

from broker.contracts import (
    Channel,
    DeadLetter,
    DeviceEvent,
    DeviceStatus,
    Kind,
    Severity,
    Telemetry,
    device_topic,
    encode,
    utcnow,
)
from edge.jt808.alarms import AlarmTracker, location_metrics
from edge.jt808.limits import RateLimiter
from edge.jt808.messages import LocationReport
from edge.jt808.session import Jt808Counters
from edge.jt808.session import dead_letter_of as _dead_letter_808
from edge.jt809.codec import (
    DEFAULT_MAX_FRAME,
    Jt809DecodeError,
    Jt809Frame,
    Jt809Header,
    Jt809StreamSplitter,
    RejectionReason,
    StreamNoise,
    crypt,
    decode_frame,
    encode_frame,
)
from edge.jt809.directory import LowerPlatform, PlatformDirectory, VehicleDirectory
from edge.jt809.geo import gcj02_to_wgs84
from edge.jt809.messages import (
    DataType,
    GnssData,
    LoginResult,
    MsgId,
    build_login_reply,
    parse_envelope,
    parse_gnss,
    parse_history,
    parse_login,
    parse_logout,
    parse_result_byte,
    parse_warn,
)
from edge.runtime.output import Publication, Rejection, SessionOutput

STAGE: Final = "edge.jt809"
"""Stage name in dead letters (``vigil/v1/deadletter/edge.jt809``)."""

_SOUTH: Final = 1 << 2
_WEST: Final = 1 << 3


@dataclass(frozen=True, slots=True)
class Jt809Limits:
    """Login throttles and pre-login bounds of one gateway."""

    per_address_burst: float = 20.0
    """Login attempts one source address may make at once (lower platforms are few)."""
    per_address_per_s: float = 1.0
    per_platform_burst: float = 5.0
    """Login attempts naming one access code at once."""
    per_platform_per_s: float = 0.1
    max_login_failures: int = 3
    """Failed logins after which the connection is closed."""
    max_preauth_errors: int = 8
    """Refusals a connection that has not logged in may cause before it is closed."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Longest frame accepted (MSG_LENGTH); longer runs are dropped unread."""
    max_keys: int = 10_000


@dataclass(frozen=True, slots=True)
class SubLinkRequest:
    """A lower platform logged in and asked to be connected back (the sub link)."""

    platform: LowerPlatform
    host: str
    port: int
    verify_code: int


@dataclass(frozen=True, slots=True)
class WarnKind:
    """How a 0x1402 WARN_TYPE is named in Vigil's events (the JT/T 808 gateway's names where they exist)."""

    type: str
    severity: Severity
    label_zh: str


WARN_TYPES: Final[dict[int, WarnKind]] = {
    0x0001: WarnKind("overspeed", Severity.MAJOR, "超速报警"),
    0x0002: WarnKind("fatigue_driving", Severity.MAJOR, "疲劳驾驶报警"),
    0x0003: WarnKind("emergency", Severity.CRITICAL, "紧急报警"),
    0x0004: WarnKind("area_entry_exit", Severity.MAJOR, "进入指定区域报警"),
    0x0005: WarnKind("area_entry_exit", Severity.MAJOR, "离开指定区域报警"),
    0x0006: WarnKind("road_congestion", Severity.INFO, "路段堵塞报警"),
    0x0007: WarnKind("dangerous_road_section", Severity.WARNING, "危险路段报警"),
    0x0008: WarnKind("out_of_bounds", Severity.MAJOR, "越界报警"),
    0x0009: WarnKind("vehicle_stolen", Severity.CRITICAL, "盗警"),
    0x000A: WarnKind("robbery", Severity.CRITICAL, "劫警"),
    0x000B: WarnKind("route_deviation", Severity.MAJOR, "偏离路线报警"),
    0x000C: WarnKind("illegal_displacement", Severity.MAJOR, "车辆移动报警"),
    0x000D: WarnKind("overtime_driving", Severity.MAJOR, "超时驾驶报警"),
}
"""0x1402 WARN_TYPE codes of JT/T 809-2011; others become ``warn_type_N`` (warning)."""


def warn_kind(code: int) -> WarnKind:
    """The event naming of one WARN_TYPE."""
    return WARN_TYPES.get(code) or WarnKind(f"warn_type_{code}", Severity.WARNING, f"报警类型{code}")


def dead_letter_of(rejection: Rejection, now: datetime) -> DeadLetter:
    """The contract's dead letter of a rejection, under this gateway's stage (``jt809/{device}/0x{msg}``)."""
    return relabel(_dead_letter_808(rejection, now))


def relabel(letter: DeadLetter) -> DeadLetter:
    """A dead letter made by the shared JT/T 808 server code, moved to this gateway's stage and topic."""
    if letter.stage == STAGE:
        return letter
    return msgspec.structs.replace(letter, stage=STAGE, topic="jt809/" + letter.topic.partition("/")[2])


class Jt809Platform:
    """What all sessions of one gateway share: directories, throttles, alarm state, counters."""

    def __init__(self, platforms: PlatformDirectory, vehicles: VehicleDirectory, *,
                 limits: Jt809Limits | None = None, wall_clock: Callable[[], datetime] = utcnow) -> None:
        self.platforms = platforms
        self.vehicles = vehicles
        self.limits = limits = limits or Jt809Limits()
        self.wall_clock = wall_clock
        self.counters = Jt808Counters()
        self.alarms = AlarmTracker()
        self.address_attempts = RateLimiter(limits.per_address_burst, limits.per_address_per_s, limits.max_keys)
        self.platform_attempts = RateLimiter(limits.per_platform_burst, limits.per_platform_per_s, limits.max_keys)
        self.owners: dict[int, Jt809Session] = {}
        """The main-link connection each logged-in lower platform is on (a new login takes over)."""
        self.on_sublink: Callable[[SubLinkRequest], None] | None = None
        """Called when a login asks for the sub link (the gateway opens it)."""
        self.on_logout: Callable[[int], None] | None = None
        """Called with the access code when a lower platform logs out (the gateway closes its sub link)."""
        self.sublinks_refused = 0

    def new_session(self, peer: str) -> Jt809Session:
        """A session for a new main-link connection (``peer`` is ``host:port``)."""
        self.counters.sessions_opened += 1
        return Jt809Session(self, peer)

    def sublink_session(self, platform: LowerPlatform, peer: str) -> Jt809Session:
        """A session for data arriving on a sub link: already the platform the link was opened for."""
        self.counters.sessions_opened += 1
        session = Jt809Session(self, peer)
        session.lower = platform
        session.on_sublink = True
        return session


class Jt809Session:
    """One main-link connection of a lower platform: framing, login and dispatch."""

    def __init__(self, platform: Jt809Platform, peer: str) -> None:
        self.platform = platform
        self.peer = peer
        self.host = peer.rpartition(":")[0] or peer
        self.lower: LowerPlatform | None = None
        """Set once the lower platform logged in."""
        self.on_sublink = False
        self.sublink_result: int | None = None
        """Sub links: the 0x9002 result once the lower platform answered the sub-link login."""
        self.login_failures = 0
        self.preauth_errors = 0
        self.verify_code = 0
        self._splitter = Jt809StreamSplitter(platform.limits.max_frame)
        self._serial = 0
        self._vehicles: set[str] = set()
        """Vehicles heard through this connection (offline when it closes)."""

    @property
    def authenticated(self) -> bool:
        """Whether a lower platform has logged in on this connection."""
        return self.lower is not None

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
        return self._splitter.buffered

    def feed(self, data: bytes, now: float) -> SessionOutput:
        """Handle received bytes; ``now`` is a monotonic clock in seconds (the rest of a read is dropped once closing)."""
        out = SessionOutput()
        self.platform.counters.bytes_in += len(data)
        for item in self._splitter.feed(data):
            if out.close:
                break
            if isinstance(item, StreamNoise):
                self._reject(out, item.reason, f"{item.size} bytes discarded", None, None, item.head)
                continue
            self.platform.counters.frames += 1
            try:
                frame = decode_frame(item, self.platform.limits.max_frame)
            except Jt809DecodeError as exc:
                h = exc.header
                self._reject(out, exc.reason, exc.detail, None, h.msg_id if h else None, b"\x5b" + item[:1024] + b"\x5d")
                continue
            self._dispatch(frame, out, now)
        return out

    def tick(self, now: float) -> SessionOutput:
        """Housekeeping (nothing is held over time)."""
        return SessionOutput()

    def close(self, reason: str = "connection closed") -> SessionOutput:
        """The connection is gone: its vehicles go offline unless the platform is already back on another one."""
        self.platform.counters.sessions_closed += 1
        out = SessionOutput()
        self._go_offline(out, reason)
        return out

    def _go_offline(self, out: SessionOutput, reason: str) -> None:
        lower, self.lower = self.lower, None
        if lower is None or self.on_sublink:
            return
        if self.platform.owners.get(lower.access_code) is self:
            del self.platform.owners[lower.access_code]
            for device_id in sorted(self._vehicles):
                self._status(out, device_id, False, f"platform {lower.label}: {reason}")
        self._vehicles.clear()

    def _status(self, out: SessionOutput, device_id: str, online: bool, reason: str) -> None:
        status = DeviceStatus(ts=self.platform.wall_clock(), online=online, reason=reason, agent=STAGE,
                              detail={"peer": self.peer})
        out.publications.append(Publication(device_topic(Kind.VEHICLE, device_id, Channel.STATUS), encode(status),
                                            retain=True))

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, frame: Jt809Frame, out: SessionOutput, now: float) -> None:
        h = frame.header
        self.platform.counters.messages[h.msg_id] += 1
        body = frame.body
        if h.encrypted:
            known = self.lower if self.lower is not None else self.platform.platforms.platform(h.access_code)
            if known is None or known.keys is None:
                self._reject(out, RejectionReason.ENCRYPTED, f"encrypted body from access code {h.access_code}, "
                             "no keys configured for it", None, h.msg_id, _wire(frame))
                return
            body = crypt(body, h.key, known.keys)
        try:
            if h.msg_id == MsgId.UP_CONNECT_REQ and self.on_sublink:
                # Logins belong on the main link; one on the sub link must not open further sub links.
                self._reject(out, RejectionReason.UNSUPPORTED_MESSAGE, "0x1001 on the sub link", None, h.msg_id,
                             _wire(frame, keep_body=False))
            elif h.msg_id == MsgId.UP_CONNECT_REQ:
                self._on_login(h, body, frame, out, now)
            elif self.lower is None:
                self._reject(out, RejectionReason.NOT_AUTHENTICATED, f"message 0x{h.msg_id:04x} before login",
                             None, h.msg_id, _wire(frame))
            elif h.access_code != self.lower.access_code:
                self._reject(out, RejectionReason.IDENTITY_MISMATCH, f"logged in as access code "
                             f"{self.lower.access_code}, message from {h.access_code}", None, h.msg_id, _wire(frame))
            elif self.on_sublink and h.msg_id in (MsgId.DOWN_CONNECT_RSP, MsgId.DOWN_LINKTEST_RSP,
                                                  MsgId.DOWN_DISCONNECT_RSP):
                if h.msg_id == MsgId.DOWN_CONNECT_RSP:
                    self.sublink_result = parse_result_byte(body)
                elif h.msg_id == MsgId.DOWN_DISCONNECT_RSP:
                    out.close = True
            elif h.msg_id == MsgId.UP_LINKTEST_REQ:
                self._send(out, MsgId.UP_LINKTEST_RSP, b"")
            elif h.msg_id == MsgId.UP_DISCONNECT_REQ:
                parse_logout(body)
                self._send(out, MsgId.UP_DISCONNECT_RSP, b"")
                access = self.lower.access_code
                self._go_offline(out, "logout")
                if self.platform.on_logout is not None:
                    self.platform.on_logout(access)
            elif h.msg_id in (MsgId.UP_DISCONNECT_INFORM, MsgId.UP_CLOSELINK_INFORM, MsgId.UP_LINKTEST_RSP):
                pass  # notices: counted in messages, nothing to answer
            elif h.msg_id == MsgId.UP_EXG_MSG:
                self._on_exg(h, body, frame, out)
            elif h.msg_id == MsgId.UP_WARN_MSG:
                self._on_warn(h, body, frame, out)
            else:
                self._reject(out, RejectionReason.UNSUPPORTED_MESSAGE, f"message 0x{h.msg_id:04x}", None, h.msg_id,
                             _wire(frame))
        except Jt809DecodeError as exc:
            self._reject(out, exc.reason, exc.detail, None, h.msg_id, _wire(frame))

    # ------------------------------------------------------------------ link management

    def _on_login(self, h: Jt809Header, body: bytes, frame: Jt809Frame, out: SessionOutput, now: float) -> None:
        plat = self.platform
        req = parse_login(body)
        by_address = plat.address_attempts.allow(self.host, now)
        by_platform = plat.platform_attempts.allow(str(h.access_code), now)
        if not (by_address and by_platform):
            # No reply: 0x1002 result 5 would invite an immediate retry; the connection is dropped.
            self._reject(out, RejectionReason.RATE_LIMITED, f"too many logins from {self.host} or for access code "
                         f"{h.access_code}", None, h.msg_id, _wire(frame, keep_body=False))
            out.close = True
            return
        lower = plat.platforms.platform(h.access_code)
        result, why = LoginResult.OK, ""
        if lower is None:
            result, why = LoginResult.BAD_ACCESS_CODE, f"access code {h.access_code} is not a known lower platform"
        elif lower.addresses and self.host not in lower.addresses:
            result, why = LoginResult.BAD_IP, f"{self.host} is not an address of platform {lower.label}"
        elif req.user_id != lower.user_id:
            result, why = LoginResult.USER_NOT_REGISTERED, f"user id {req.user_id} is not platform {lower.label}'s"
        elif not hmac.compare_digest(req.password.encode("latin-1"), lower.password.encode("latin-1", "replace")):
            result, why = LoginResult.BAD_PASSWORD, f"wrong password for platform {lower.label}"
        if lower is None or result is not LoginResult.OK:
            reason = RejectionReason.UNKNOWN_TERMINAL if result is LoginResult.BAD_ACCESS_CODE else \
                RejectionReason.AUTH_FAILED
            self._reject(out, reason, why, None, h.msg_id, _wire(frame, keep_body=False))
            self._send(out, MsgId.UP_CONNECT_RSP, build_login_reply(result, 0), lower)
            self._go_offline(out, "login failed")
            self.login_failures += 1
            if self.login_failures >= plat.limits.max_login_failures:
                out.close = True
            return
        if self.lower is not None and self.lower.access_code != lower.access_code:
            self._go_offline(out, "another platform logged in on its connection")
        self.lower = lower
        self.login_failures = 0
        self.verify_code = secrets.randbits(32) or 1
        plat.owners[lower.access_code] = self
        plat.counters.authenticated += 1
        self._send(out, MsgId.UP_CONNECT_RSP, build_login_reply(LoginResult.OK, self.verify_code))
        if lower.sublink and req.downlink_port:
            # The sub link goes only where the operator allows: the main link's own address or a
            # listed one (a login must not make the gateway connect anywhere it names).
            if req.downlink_ip in (self.host, *lower.sublink_hosts):
                if plat.on_sublink is not None:
                    plat.on_sublink(SubLinkRequest(lower, req.downlink_ip, req.downlink_port, self.verify_code))
            else:
                plat.sublinks_refused += 1
                self._reject(out, RejectionReason.IDENTITY_MISMATCH, f"sub link to {req.downlink_ip}:"
                             f"{req.downlink_port} refused: not {self.host} nor in sublink_hosts of {lower.label}",
                             None, h.msg_id, b"")

    # ------------------------------------------------------------------ vehicle data

    def _vehicle(self, plate: str, colour: int, h: Jt809Header, frame: Jt809Frame, out: SessionOutput) -> str | None:
        vehicles = self.platform.vehicles
        device_id = vehicles.vehicle(plate, colour)
        who = self.lower.label if self.lower else str(h.access_code)
        if device_id is None:
            self._reject(out, RejectionReason.UNKNOWN_TERMINAL, f"vehicle {plate!r} colour {colour} from platform "
                         f"{who} is not in the registry", None, h.msg_id, _wire(frame))
        elif (self.lower is not None and self.lower.labelled_vehicles_only
              and self.lower.access_code not in vehicles.platforms_of(device_id)):
            self._reject(out, RejectionReason.UNKNOWN_TERMINAL, f"vehicle {device_id} ({plate!r}) is not one of "
                         f"platform {who}'s (registry label jt809_platforms)", None, h.msg_id, _wire(frame))
            return None
        return device_id

    def _on_exg(self, h: Jt809Header, body: bytes, frame: Jt809Frame, out: SessionOutput) -> None:
        env = parse_envelope(body)
        if env.data_type not in (DataType.UP_EXG_MSG_REGISTER, DataType.UP_EXG_MSG_REAL_LOCATION,
                                 DataType.UP_EXG_MSG_HISTORY_LOCATION):
            self._reject(out, RejectionReason.UNSUPPORTED_MESSAGE, f"0x1200 sub-type 0x{env.data_type:04x}", None,
                         h.msg_id, _wire(frame))
            return
        device_id = self._vehicle(env.plate, env.colour, h, frame, out)
        if device_id is None:
            return
        self.platform.counters.messages[env.data_type] += 1
        if env.data_type == DataType.UP_EXG_MSG_REAL_LOCATION:
            self._publish(out, device_id, parse_gnss(env.data), h.serial, resent=False)
        elif env.data_type == DataType.UP_EXG_MSG_HISTORY_LOCATION:
            # Re-sent positions are history: in their own time order, flagged, and never alarm edges
            # (AlarmTracker would ignore them anyway once a newer live position moved the state).
            for g in sorted(parse_history(env.data), key=lambda g: g.time):
                self._publish(out, device_id, g, None, resent=True)
        else:
            from edge.jt809.messages import parse_vehicle_registration

            parse_vehicle_registration(env.data)  # checked; nothing is published for it
            self._online(out, device_id)

    def _online(self, out: SessionOutput, device_id: str) -> None:
        if device_id not in self._vehicles and self.lower is not None:
            self._vehicles.add(device_id)
            if not self.on_sublink:
                self._status(out, device_id, True, f"via platform {self.lower.label}")

    def _publish(self, out: SessionOutput, device_id: str, g: GnssData, seq: int | None, *, resent: bool) -> None:
        report = location_report(g)
        metrics = location_metrics(report)
        metrics["resent"] = resent
        out.publications.append(Publication(device_topic(Kind.VEHICLE, device_id, Channel.TELEMETRY),
                                            encode(Telemetry(ts=report.time, metrics=metrics, seq=seq))))
        counters = self.platform.counters
        counters.telemetry += 1
        self._online(out, device_id)
        if not resent:
            events = self.platform.alarms.update(device_id, report)
            if events:
                topic = device_topic(Kind.VEHICLE, device_id, Channel.EVENT)
                out.publications.extend(Publication(topic, encode(e)) for e in events)
                counters.events += len(events)

    def _on_warn(self, h: Jt809Header, body: bytes, frame: Jt809Frame, out: SessionOutput) -> None:
        env = parse_envelope(body)
        if env.data_type not in (DataType.UP_WARN_MSG_ADPT_INFO, DataType.UP_WARN_MSG_ADPT_TODO_INFO):
            self._reject(out, RejectionReason.UNSUPPORTED_MESSAGE, f"0x1400 sub-type 0x{env.data_type:04x}", None,
                         h.msg_id, _wire(frame))
            return
        device_id = self._vehicle(env.plate, env.colour, h, frame, out)
        if device_id is None:
            return
        self.platform.counters.messages[env.data_type] += 1
        if env.data_type == DataType.UP_WARN_MSG_ADPT_TODO_INFO:
            return  # an answer to a handling request this gateway never sends; counted only
        warn = parse_warn(env.data)
        kind = warn_kind(warn.warn_type)
        assert self.lower is not None
        data: dict[str, object] = {"warn_type": warn.warn_type, "warn_source": warn.source, "info_id": warn.info_id,
                                   "platform": self.lower.access_code}
        if warn.content:
            data["content"] = warn.content
        if warn.warn_type in (0x0004, 0x0005):
            data["area_direction"] = "in" if warn.warn_type == 0x0004 else "out"
        # The standard reports an alarm once, without an end: an instant event, which the rules
        # hold for their resolve_after (like the vehicle pack's emergency and overspeed rules).
        event = DeviceEvent(ts=warn.time, type=kind.type, state="instant",
                            event_id=f"{device_id}-jt809-{self.lower.access_code}-{warn.info_id}",
                            severity=kind.severity, message=kind.label_zh, data=data)
        out.publications.append(Publication(device_topic(Kind.VEHICLE, device_id, Channel.EVENT), encode(event)))
        self.platform.counters.events += 1
        self._online(out, device_id)

    # ------------------------------------------------------------------ output

    def _send(self, out: SessionOutput, msg_id: int, body: bytes, lower: LowerPlatform | None = None) -> None:
        lower = lower or self.lower
        self._serial = (self._serial + 1) & 0xFFFFFFFF
        access = lower.access_code if lower is not None else 0
        if lower is not None and lower.encrypt_replies and lower.keys is not None:
            out.replies.append(encode_frame(msg_id, self._serial, access, body, keys=lower.keys,
                                            key=secrets.randbits(32)))
        else:
            out.replies.append(encode_frame(msg_id, self._serial, access, body))
        self.platform.counters.replies += 1

    def _reject(self, out: SessionOutput, reason: RejectionReason, detail: str, device_id: str | None,
                msg_id: int | None, raw: bytes) -> None:
        self.platform.counters.rejected[reason] += 1
        who = device_id or (f"platform-{self.lower.access_code}" if self.lower is not None else None)
        out.rejections.append(Rejection(reason, detail, self.peer, who, msg_id, raw))
        if self.lower is None and not out.close and not self.on_sublink:
            self.preauth_errors += 1
            if self.preauth_errors >= self.platform.limits.max_preauth_errors:
                self.platform.counters.rejected[RejectionReason.TOO_MANY_ERRORS] += 1
                out.rejections.append(Rejection(RejectionReason.TOO_MANY_ERRORS, f"{self.preauth_errors} refusals "
                                                "before login; connection closed", self.peer, None, None, b""))
                out.close = True


def location_report(g: GnssData) -> LocationReport:
    """A JT/T 809 position as the JT/T 808 gateway's ``LocationReport`` (same metrics, same alarm tracking)."""
    lat, lon = g.lat_e6 / 1e6, g.lon_e6 / 1e6
    if g.coordinates_encrypted:
        lat, lon = gcj02_to_wgs84(lat, lon)
    if g.state & _SOUTH:
        lat = -lat
    if g.state & _WEST:
        lon = -lon
    extras = {0x01: min(g.mileage_km * 10, 0xFFFFFFFF).to_bytes(4, "big"),
              0x03: min(g.recorder_speed_kmh * 10, 0xFFFF).to_bytes(2, "big")}
    return LocationReport(g.alarm, g.state, lat, lon, g.altitude_m, float(g.speed_kmh), g.heading_deg % 360, g.time,
                          extras)


def _wire(frame: Jt809Frame, *, keep_body: bool = True) -> bytes:
    """The frame again for a dead letter; a login's body (the password) is left out."""
    h = frame.header
    body = frame.body[:1024] if keep_body and h.msg_id != MsgId.UP_CONNECT_REQ else b""
    return encode_frame(h.msg_id, h.serial, h.access_code, body, key=h.key)
