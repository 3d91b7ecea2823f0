"""The JT/T 808 platform side as pure state machines: sessions, auth codes, alarm edges.

``Jt808Platform`` holds what all connections share (terminal registry, auth codes, alarm
state per terminal, counters); ``Jt808Session`` is one TCP connection's state machine: bytes
in, replies / publications / rejections out. No sockets, no clocks of their own: the adapter
(``edge.jt808.gateway``) passes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Protocol

from broker.contracts import (
    Channel,
    DeadLetter,
    DeviceEvent,
    DeviceStatus,
    Kind,
    MetricValue,
    RejectReason,
    Severity,
    Telemetry,
    device_topic,
    encode,
    make_dead_letter,
    utcnow,
)
from edge.jt808.codec import (
    FrameSplitter,
    Jt808DecodeError,
    Jt808Frame,
    Jt808Header,
    RejectionReason,
    SplitPacketAssembler,
    StreamNoise,
    decode_frame,
    encode_frame,
)
from edge.jt808.messages import (
    BatchKind,
    LocationReport,
    MsgId,
    RegisterResult,
    ReplyResult,
    build_general_reply,
    build_register_reply,
    parse_auth,
    parse_batch_location,
    parse_location,
    parse_register,
)

STAGE: Final = "edge.jt808"
"""Stage name in dead letters (``vigil/v1/deadletter/edge.jt808``)."""


@dataclass(frozen=True, slots=True)
class AlarmKind:
    """How one alarm bit is named and rated in Vigil's events."""

    type: str
    severity: Severity
    label_zh: str


ALARM_BITS: Final[dict[int, AlarmKind]] = {
    0: AlarmKind("emergency", Severity.CRITICAL, "紧急报警"),
    1: AlarmKind("overspeed", Severity.MAJOR, "超速报警"),
    2: AlarmKind("fatigue_driving", Severity.MAJOR, "疲劳驾驶"),
    3: AlarmKind("danger_warning", Severity.MAJOR, "危险预警"),
    4: AlarmKind("gnss_module_fault", Severity.WARNING, "GNSS模块故障"),
    5: AlarmKind("gnss_antenna_disconnected", Severity.WARNING, "GNSS天线未接或被剪断"),
    6: AlarmKind("gnss_antenna_short_circuit", Severity.WARNING, "GNSS天线短路"),
    7: AlarmKind("main_power_low", Severity.WARNING, "终端主电源欠压"),
    8: AlarmKind("main_power_lost", Severity.MAJOR, "终端主电源掉电"),
    9: AlarmKind("display_fault", Severity.INFO, "终端显示器故障"),
    10: AlarmKind("tts_fault", Severity.INFO, "TTS模块故障"),
    11: AlarmKind("camera_fault", Severity.WARNING, "摄像头故障"),
    12: AlarmKind("ic_card_fault", Severity.INFO, "IC卡模块故障"),
    13: AlarmKind("overspeed_warning", Severity.WARNING, "超速预警"),
    14: AlarmKind("fatigue_warning", Severity.WARNING, "疲劳驾驶预警"),
    18: AlarmKind("daily_driving_time_exceeded", Severity.MAJOR, "当天累计驾驶超时"),
    19: AlarmKind("parking_timeout", Severity.WARNING, "超时停车"),
    20: AlarmKind("area_entry_exit", Severity.MAJOR, "进出区域"),
    21: AlarmKind("route_entry_exit", Severity.WARNING, "进出路线"),
    22: AlarmKind("route_section_time_abnormal", Severity.WARNING, "路段行驶时间不足/过长"),
    23: AlarmKind("route_deviation", Severity.MAJOR, "路线偏离报警"),
    24: AlarmKind("vss_fault", Severity.WARNING, "车辆VSS故障"),
    25: AlarmKind("fuel_abnormal", Severity.WARNING, "车辆油量异常"),
    26: AlarmKind("vehicle_stolen", Severity.CRITICAL, "车辆被盗"),
    27: AlarmKind("illegal_ignition", Severity.MAJOR, "车辆非法点火"),
    28: AlarmKind("illegal_displacement", Severity.MAJOR, "车辆非法位移"),
    29: AlarmKind("collision_warning", Severity.CRITICAL, "碰撞预警"),
    30: AlarmKind("rollover_warning", Severity.CRITICAL, "侧翻预警"),
    31: AlarmKind("illegal_door_open", Severity.MAJOR, "非法开门报警"),
}
"""Alarm bits of the 0x0200 alarm DWORD (JT/T 808-2013 table 24); other bits use ``alarm_bit_N``."""


def alarm_kind(bit: int) -> AlarmKind:
    """The event naming of one alarm bit."""
    return ALARM_BITS.get(bit) or AlarmKind(f"alarm_bit_{bit}", Severity.WARNING, f"报警位{bit}")


class TerminalRegistry(Protocol):
    """Which terminals may register and authenticate."""

    def lookup(self, device_id: str) -> bool:
        """Whether a terminal with this device id is known."""
        ...


@dataclass(frozen=True, slots=True)
class StaticTerminalRegistry:
    """A fixed set of known device ids."""

    device_ids: frozenset[str] = frozenset()

    def lookup(self, device_id: str) -> bool:
        """Whether the id is in the set."""
        return device_id in self.device_ids


class AuthCodeIssuer:
    """Auth codes derived from a secret (HMAC-SHA256), so they survive gateway restarts."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "AuthCodeIssuer(secret=***)"

    def issue(self, device_id: str) -> str:
        """The auth code of a terminal."""
        return hmac.new(self._secret, device_id.encode(), hashlib.sha256).hexdigest()[:16]

    def verify(self, device_id: str, code: str) -> bool:
        """Whether ``code`` is this terminal's auth code (constant-time compare)."""
        return hmac.compare_digest(self.issue(device_id), code)


@dataclass(slots=True)
class GatewayCounters:
    """Counters of one gateway process."""

    bytes_in: int = 0
    frames: int = 0
    messages: Counter[int] = field(default_factory=Counter)
    rejected: Counter[RejectionReason] = field(default_factory=Counter)
    replies: int = 0
    telemetry: int = 0
    events: int = 0
    registered: int = 0
    authenticated: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_idle_closed: int = 0
    publish_failures: int = 0

    def snapshot(self) -> dict[str, int]:
        """Flat counters for logs and benchmarks."""
        out = {k: getattr(self, k) for k in (
            "bytes_in", "frames", "replies", "telemetry", "events", "registered", "authenticated",
            "sessions_opened", "sessions_closed", "sessions_idle_closed", "publish_failures")}
        out["sessions_open"] = self.sessions_opened - self.sessions_closed
        out.update({f"msg_0x{k:04x}": v for k, v in sorted(self.messages.items())})
        out.update({f"rejected_{k.value}": v for k, v in sorted(self.rejected.items())})
        return out


@dataclass(slots=True)
class _AlarmState:
    flags: int
    ts: datetime
    open: dict[int, str]


class AlarmTracker:
    """Turns alarm bits into start/end events, per terminal."""

    def __init__(self) -> None:
        self._state: dict[str, _AlarmState] = {}

    def active(self, device_id: str) -> int:
        """The alarm flags last seen for a terminal."""
        st = self._state.get(device_id)
        return st.flags if st is not None else 0

    def update(self, device_id: str, report: LocationReport) -> list[DeviceEvent]:
        """Feed one report; return an event per alarm bit that rose or fell.

        A report older than the one that last moved the state is history (e.g. a blind-area
        upload) and produces no edges, so replayed positions cannot reopen closed alarms.
        """
        st = self._state.get(device_id)
        if st is None:
            st = self._state[device_id] = _AlarmState(0, report.time, {})
        elif report.time < st.ts:
            return []
        st.ts = report.time
        changed = st.flags ^ report.alarm_flags
        if not changed:
            return []
        events: list[DeviceEvent] = []
        position: dict[str, float | int | str] = {"lat": report.latitude, "lon": report.longitude,
                                                  "speed_kmh": report.speed_kmh, "heading_deg": report.heading_deg}
        area = report.extras.get(0x12)
        if area is not None and len(area) == 6:
            # Enter/leave area item: type, area id, direction (0 in, 1 out).
            position["area_id"] = int.from_bytes(area[1:5], "big")
            position["area_direction"] = "out" if area[5] else "in"
        for bit in range(32):
            mask = 1 << bit
            if not changed & mask:
                continue
            kind = alarm_kind(bit)
            state: Literal["start", "end"]
            if report.alarm_flags & mask:
                event_id = f"{device_id}-{kind.type}-{report.time:%Y%m%dT%H%M%SZ}"
                st.open[bit] = event_id
                state = "start"
            else:
                event_id = st.open.pop(bit, f"{device_id}-{kind.type}")
                state = "end"
            events.append(DeviceEvent(
                ts=report.time, type=kind.type, state=state, event_id=event_id,
                severity=kind.severity, message=kind.label_zh, data={**position, "alarm_bit": bit},
            ))
        st.flags = report.alarm_flags
        return events


def location_metrics(report: LocationReport) -> dict[str, MetricValue]:
    """The telemetry metrics of one position."""
    metrics: dict[str, MetricValue] = {
        "lat": report.latitude, "lon": report.longitude, "speed_kmh": report.speed_kmh,
        "heading_deg": report.heading_deg, "altitude_m": report.altitude_m, "ignition": report.ignition,
        "gnss_fixed": report.gnss_fixed, "alarm_flags": report.alarm_flags, "status_flags": report.status_flags,
    }
    if report.extras:
        metrics.update(report.extra_metrics())
    return metrics


@dataclass(frozen=True, slots=True)
class Publication:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something refused, with why and the bytes concerned."""

    reason: RejectionReason
    detail: str
    peer: str
    device_id: str | None
    msg_id: int | None
    raw: bytes


_CONTRACT_REASON: Final = {
    RejectionReason.FRAME_TOO_LONG: RejectReason.TOO_LARGE,
    RejectionReason.NOT_AUTHENTICATED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.UNKNOWN_TERMINAL: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.AUTH_FAILED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.PHONE_MISMATCH: RejectReason.UNKNOWN_DEVICE,
}


def dead_letter_of(rejection: Rejection, now: datetime) -> DeadLetter:
    """The contract's dead-letter record of a rejection (the JT/T 808 reason leads the detail)."""
    where = f"jt808/{rejection.device_id or 'unknown'}"
    if rejection.msg_id is not None:
        where += f"/0x{rejection.msg_id:04x}"
    return make_dead_letter(STAGE, where, rejection.raw, _CONTRACT_REASON.get(rejection.reason, RejectReason.SCHEMA),
                            f"{rejection.reason.value}: {rejection.detail} (peer {rejection.peer})", now)


@dataclass(slots=True)
class SessionOutput:
    """What one call into a session produced."""

    replies: list[bytes] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    close: bool = False


class Jt808Platform:
    """What all sessions of one gateway share: registry, auth codes, alarm state, counters."""

    def __init__(self, registry: TerminalRegistry, auth: AuthCodeIssuer, *, accept_unknown: bool = False,
                 split_timeout_s: float = 30.0, max_auth_failures: int = 3,
                 wall_clock: Callable[[], datetime] = utcnow) -> None:
        self.registry = registry
        self.auth = auth
        self.wall_clock = wall_clock
        self.owners: dict[str, Jt808Session] = {}
        """The connection each online terminal is on (a reconnect takes over)."""
        self.accept_unknown = accept_unknown
        self.split_timeout_s = split_timeout_s
        self.max_auth_failures = max_auth_failures
        self.alarms = AlarmTracker()
        self.counters = GatewayCounters()

    def admits(self, device_id: str) -> bool:
        """Whether this terminal may register and authenticate."""
        return self.accept_unknown or self.registry.lookup(device_id)

    def new_session(self, peer: str) -> Jt808Session:
        """A session for a new connection."""
        self.counters.sessions_opened += 1
        return Jt808Session(self, peer)


_NEEDS_REPLY: Final = frozenset({MsgId.HEARTBEAT, MsgId.LOGOUT, MsgId.LOCATION, MsgId.BATCH_LOCATION,
                                 MsgId.AUTHENTICATE})
_BAD_MESSAGE: Final = frozenset({RejectionReason.BAD_CHECKSUM, RejectionReason.LENGTH_MISMATCH,
                                 RejectionReason.BAD_SPLIT_HEADER, RejectionReason.SPLIT_OVERFLOW})


class Jt808Session:
    """One terminal connection: framing, reassembly, authentication and dispatch."""

    def __init__(self, platform: Jt808Platform, peer: str) -> None:
        self.platform = platform
        self.peer = peer
        self.device_id: str | None = None
        """Set once the terminal authenticated."""
        self.auth_failures = 0
        self._splitter = FrameSplitter()
        self._assembler = SplitPacketAssembler(platform.split_timeout_s)
        self._serial = 0
        self._reassembled = False
        self._handlers: dict[int, Callable[[Jt808Frame, SessionOutput], None]] = {
            MsgId.HEARTBEAT: self._on_heartbeat,
            MsgId.LOCATION: self._on_location,
            MsgId.BATCH_LOCATION: self._on_batch_location,
            MsgId.LOGOUT: self._on_logout,
        }

    @property
    def authenticated(self) -> bool:
        """Whether the terminal has authenticated on this connection."""
        return self.device_id is not None

    def feed(self, data: bytes, now: float) -> SessionOutput:
        """Handle received bytes; ``now`` is a monotonic clock in seconds."""
        out = SessionOutput()
        self.platform.counters.bytes_in += len(data)
        for item in self._splitter.feed(data):
            if isinstance(item, StreamNoise):
                self._reject(out, item.reason, f"{item.size} bytes discarded", None, None, item.head)
            else:
                self._on_content(item, now, out)
        return out

    def tick(self, now: float) -> SessionOutput:
        """Housekeeping: expire unfinished split messages."""
        out = SessionOutput()
        for h in self._assembler.expire(now):
            self._reject(out, RejectionReason.SPLIT_EXPIRED, f"split message incomplete after "
                         f"{self.platform.split_timeout_s:.0f} s", h.device_id, h.msg_id, b"")
        return out

    def close(self, reason: str = "connection closed") -> SessionOutput:
        """The connection is gone: the terminal goes offline unless it is already on another one."""
        self.platform.counters.sessions_closed += 1
        out = SessionOutput()
        self._go_offline(out, reason)
        return out

    def _go_offline(self, out: SessionOutput, reason: str) -> None:
        device_id, self.device_id = self.device_id, None
        if device_id is not None and self.platform.owners.get(device_id) is self:
            del self.platform.owners[device_id]
            self._status(out, device_id, False, reason)

    def _status(self, out: SessionOutput, device_id: str, online: bool, reason: str) -> None:
        status = DeviceStatus(ts=self.platform.wall_clock(), online=online, reason=reason, agent=STAGE,
                              detail={"peer": self.peer})
        out.publications.append(Publication(device_topic(Kind.VEHICLE, device_id, Channel.STATUS), encode(status),
                                            retain=True))

    # ------------------------------------------------------------------ frames

    def _on_content(self, content: bytes, now: float, out: SessionOutput) -> None:
        self.platform.counters.frames += 1
        try:
            frame = decode_frame(content)
            if frame.header.is_split:
                self._reassembled = False
                self._reply(out, frame.header, ReplyResult.OK)
                whole = self._assembler.add(frame, now)
                if whole is None:
                    return
                frame = whole
        except Jt808DecodeError as exc:
            h = exc.header
            self._reject(out, exc.reason, exc.detail, h.device_id if h else None, h.msg_id if h else None,
                         b"\x7e" + content + b"\x7e")
            if h is not None and exc.reason in _BAD_MESSAGE:
                self._reply(out, h, ReplyResult.BAD_MESSAGE)
            elif h is not None and exc.reason is RejectionReason.ENCRYPTED:
                self._reply(out, h, ReplyResult.UNSUPPORTED)
            return
        self._dispatch(frame, out)

    def _dispatch(self, frame: Jt808Frame, out: SessionOutput) -> None:
        h = frame.header
        self.platform.counters.messages[h.msg_id] += 1
        # Packets of a split message were each acknowledged on arrival; the whole message
        # then only answers when something is wrong with it.
        self._reassembled = frame.reassembled
        if h.msg_id == MsgId.TERMINAL_GENERAL_REPLY:
            return
        try:
            if h.msg_id == MsgId.REGISTER:
                self._on_register(frame, out)
                return
            if h.msg_id == MsgId.AUTHENTICATE:
                self._on_authenticate(frame, out)
                return
            handler = self._handlers.get(h.msg_id)
            if handler is None:
                self._refuse(out, frame, RejectionReason.UNSUPPORTED_MESSAGE, f"message 0x{h.msg_id:04x}",
                             ReplyResult.UNSUPPORTED)
            elif self.device_id is None:
                self._refuse(out, frame, RejectionReason.NOT_AUTHENTICATED, "terminal has not authenticated",
                             ReplyResult.FAIL)
            elif h.device_id != self.device_id:
                self._refuse(out, frame, RejectionReason.PHONE_MISMATCH,
                             f"authenticated as {self.device_id}, message from {h.device_id}", ReplyResult.FAIL)
            else:
                handler(frame, out)
        except Jt808DecodeError as exc:
            self._refuse(out, frame, exc.reason, exc.detail, ReplyResult.BAD_MESSAGE)

    # ------------------------------------------------------------------ messages

    def _on_register(self, frame: Jt808Frame, out: SessionOutput) -> None:
        h = frame.header
        req = parse_register(frame.body, h.version)
        if not self.platform.admits(h.device_id):
            self._reject(out, RejectionReason.UNKNOWN_TERMINAL, f"terminal {req.terminal_id!r} plate {req.plate!r} "
                         "is not registered", h.device_id, h.msg_id, _wire(frame))
            self._send(out, h, MsgId.REGISTER_REPLY,
                       build_register_reply(h.serial, RegisterResult.TERMINAL_NOT_IN_DATABASE))
            return
        self.platform.counters.registered += 1
        self._send(out, h, MsgId.REGISTER_REPLY,
                   build_register_reply(h.serial, RegisterResult.OK, self.platform.auth.issue(h.device_id)))

    def _on_authenticate(self, frame: Jt808Frame, out: SessionOutput) -> None:
        h = frame.header
        req = parse_auth(frame.body, h.version)
        if not self.platform.admits(h.device_id):
            self._refuse(out, frame, RejectionReason.UNKNOWN_TERMINAL, "terminal is not registered", ReplyResult.FAIL)
        elif not self.platform.auth.verify(h.device_id, req.code):
            self._refuse(out, frame, RejectionReason.AUTH_FAILED, "wrong auth code", ReplyResult.FAIL)
        else:
            if self.device_id is not None and self.device_id != h.device_id:
                self._go_offline(out, "another terminal authenticated on its connection")
            self.device_id = h.device_id
            self.auth_failures = 0
            self.platform.counters.authenticated += 1
            self._reply(out, h, ReplyResult.OK)
            self.platform.owners[h.device_id] = self
            self._status(out, h.device_id, True, "authenticated")
            return
        self._go_offline(out, "authentication failed")
        self.auth_failures += 1
        if self.auth_failures >= self.platform.max_auth_failures:
            out.close = True

    def _on_heartbeat(self, frame: Jt808Frame, out: SessionOutput) -> None:
        self._reply(out, frame.header, ReplyResult.OK)

    def _on_logout(self, frame: Jt808Frame, out: SessionOutput) -> None:
        self._reply(out, frame.header, ReplyResult.OK)
        self._go_offline(out, "logout")

    def _on_location(self, frame: Jt808Frame, out: SessionOutput) -> None:
        report = parse_location(frame.body)
        self._publish(out, frame.header.device_id, report, frame.header.serial, True)
        self._reply(out, frame.header, ReplyResult.OK)

    def _on_batch_location(self, frame: Jt808Frame, out: SessionOutput) -> None:
        batch = parse_batch_location(frame.body)
        device_id = frame.header.device_id
        # Blind-area uploads are history: published as telemetry, but alarm edges come only
        # from live positions (AlarmTracker also ignores anything older than its state).
        live = batch.kind == BatchKind.NORMAL
        for report in sorted(batch.reports, key=lambda r: r.time):
            self._publish(out, device_id, report, None, live)
        self._reply(out, frame.header, ReplyResult.OK)

    # ------------------------------------------------------------------ output

    def _publish(self, out: SessionOutput, device_id: str, report: LocationReport, seq: int | None,
                 live: bool) -> None:
        counters = self.platform.counters
        out.publications.append(Publication(
            device_topic(Kind.VEHICLE, device_id, Channel.TELEMETRY),
            encode(Telemetry(ts=report.time, metrics=location_metrics(report), seq=seq)),
        ))
        counters.telemetry += 1
        if live:
            events = self.platform.alarms.update(device_id, report)
            if events:
                topic = device_topic(Kind.VEHICLE, device_id, Channel.EVENT)
                out.publications.extend(Publication(topic, encode(e)) for e in events)
                counters.events += len(events)

    def _reply(self, out: SessionOutput, h: Jt808Header, result: ReplyResult) -> None:
        if self._reassembled and result is ReplyResult.OK:
            return
        self._send(out, h, MsgId.PLATFORM_GENERAL_REPLY, build_general_reply(h.serial, h.msg_id, result))

    def _send(self, out: SessionOutput, h: Jt808Header, msg_id: int, body: bytes) -> None:
        self._serial = (self._serial + 1) & 0xFFFF
        out.replies.append(encode_frame(msg_id, h.phone, self._serial, body, version=h.version,
                                        protocol_version=h.protocol_version or 1))
        self.platform.counters.replies += 1

    def _refuse(self, out: SessionOutput, frame: Jt808Frame, reason: RejectionReason, detail: str,
                result: ReplyResult) -> None:
        h = frame.header
        self._reject(out, reason, detail, h.device_id, h.msg_id, _wire(frame))
        if h.msg_id in _NEEDS_REPLY or result is ReplyResult.UNSUPPORTED or result is ReplyResult.BAD_MESSAGE:
            self._reply(out, h, result)

    def _reject(self, out: SessionOutput, reason: RejectionReason, detail: str, device_id: str | None,
                msg_id: int | None, raw: bytes) -> None:
        self.platform.counters.rejected[reason] += 1
        out.rejections.append(Rejection(reason, detail, self.peer, device_id, msg_id, raw))


def _wire(frame: Jt808Frame) -> bytes:
    """The message again as one wire frame (for dead letters; split messages come back whole)."""
    h = frame.header
    try:
        return encode_frame(h.msg_id, h.phone, h.serial, frame.body[:1023], version=h.version,
                            protocol_version=h.protocol_version or 1)
    except ValueError:
        return frame.body
