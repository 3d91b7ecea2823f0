"""The JT/T 808 platform side as pure state machines: sessions, registration, authentication.

``Jt808Platform`` holds what all connections share (terminal registry, registration store,
attempt throttles, reassembly budget, alarm state per terminal, counters); ``Jt808Session`` is
one TCP connection's state machine: bytes in, replies / publications / rejections out. No
sockets, no clocks of their own: the adapter (``edge.jt808.gateway``) passes ``now``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from broker.contracts import (
    Channel,
    DeadLetter,
    DeviceCommand,
    DeviceStatus,
    Kind,
    RejectReason,
    Telemetry,
    device_topic,
    encode,
    make_dead_letter,
    utcnow,
)
from edge.jt808.alarms import (
    ALARM_BITS,
    AlarmKind,
    AlarmStore,
    AlarmTracker,
    alarm_kind,
    driver_event,
    driver_metrics,
    location_metrics,
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
from edge.jt808.commands import CommandId, parse_driver_identity, parse_params_reply
from edge.jt808.downlink import CommandDesk
from edge.jt808.limits import AttemptLimits, ByteBudget, RateLimiter, ReassemblyLimits
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
    parse_general_reply,
    parse_location,
    parse_register,
)
from edge.jt808.registrations import (
    MemoryRegistrations,
    Registration,
    RegistrationStore,
    RegistrationStoreError,
    TerminalIdentity,
    hash_code,
    new_auth_code,
)
from edge.runtime.counters import GatewayCounters
from edge.runtime.output import Publication, Rejection, SessionOutput

__all__ = ["ALARM_BITS", "STAGE", "AlarmKind", "AlarmTracker", "Jt808Counters", "Jt808Platform", "Jt808Session",
           "Publication", "Rejection", "SessionOutput", "StaticTerminalRegistry", "TerminalIdentity",
           "TerminalRegistry", "alarm_kind", "dead_letter_of", "location_metrics"]

STAGE: Final = "edge.jt808"
"""Stage name in dead letters (``vigil/v1/deadletter/edge.jt808``)."""


class TerminalRegistry(Protocol):
    """Which terminals may register and authenticate, and with which registration fields."""

    def lookup(self, device_id: str) -> bool:
        """Whether a terminal with this device id is known."""
        ...

    def check(self, device_id: str, sent: TerminalIdentity) -> list[str]:
        """Why ``sent`` (the 0x0100 fields) is not this known terminal's identity: field names, or empty."""
        ...


@dataclass(frozen=True, slots=True)
class StaticTerminalRegistry:
    """A fixed set of known terminals.

    ``identities`` maps device ids to the registration fields they must send; ids only in
    ``device_ids`` register with any fields (tests and commissioning; the registry file,
    ``RegistryTerminals``, always demands an identity).
    """

    device_ids: frozenset[str] = frozenset()
    identities: Mapping[str, TerminalIdentity] = field(default_factory=dict)

    def lookup(self, device_id: str) -> bool:
        """Whether the id is known."""
        return device_id in self.device_ids or device_id in self.identities

    def check(self, device_id: str, sent: TerminalIdentity) -> list[str]:
        """Mismatching fields against the identity on file (none on file: nothing to compare)."""
        expected = self.identities.get(device_id)
        return expected.mismatches(sent) if expected is not None else []


@dataclass(slots=True)
class Jt808Counters(GatewayCounters):
    """The runtime's gateway counters plus JT/T 808's (message ids, registrations, sessions)."""

    messages: Counter[int] = field(default_factory=Counter)
    telemetry: int = 0
    events: int = 0
    registered: int = 0
    authenticated: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0

    def snapshot(self) -> dict[str, int]:
        """Flat counters (``GatewayCounters.snapshot``) plus ``sessions_open``."""
        out = GatewayCounters.snapshot(self)  # not super(): slots=True makes a new class
        out["sessions_open"] = self.sessions_opened - self.sessions_closed
        return out


_CONTRACT_REASON: Final[dict[str, RejectReason]] = {
    RejectionReason.FRAME_TOO_LONG: RejectReason.TOO_LARGE,
    RejectionReason.NOT_AUTHENTICATED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.UNKNOWN_TERMINAL: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.AUTH_FAILED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.PHONE_MISMATCH: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.IDENTITY_MISMATCH: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.ALREADY_REGISTERED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.RATE_LIMITED: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.AUTH_TIMEOUT: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.TOO_MANY_ERRORS: RejectReason.UNKNOWN_DEVICE,
    RejectionReason.CONNECTION_LIMIT: RejectReason.UNKNOWN_DEVICE,
}


def dead_letter_of(rejection: Rejection, now: datetime) -> DeadLetter:
    """The contract's dead-letter record of a rejection (the JT/T 808 reason leads the detail)."""
    where = f"jt808/{rejection.device_id or 'unknown'}"
    if rejection.msg_id is not None:
        where += f"/0x{rejection.msg_id:04x}"
    return make_dead_letter(STAGE, where, rejection.raw, _CONTRACT_REASON.get(rejection.reason, RejectReason.SCHEMA),
                            f"{rejection.reason}: {rejection.detail} (peer {rejection.peer})", now)


class Jt808Platform:
    """What all sessions of one gateway share: registry, registrations, throttles, alarm state, counters."""

    def __init__(self, registry: TerminalRegistry, registrations: RegistrationStore | None = None, *,
                 accept_unknown: bool = False, split_timeout_s: float = 30.0,
                 limits: AttemptLimits | None = None, reassembly: ReassemblyLimits | None = None,
                 wall_clock: Callable[[], datetime] = utcnow, alarm_store: AlarmStore | None = None) -> None:
        self.registry = registry
        self.registrations: RegistrationStore = registrations if registrations is not None else MemoryRegistrations()
        self.wall_clock = wall_clock
        self.owners: dict[str, Jt808Session] = {}
        """The connection each online terminal is on (a reconnect takes over)."""
        self.accept_unknown = accept_unknown
        self.split_timeout_s = split_timeout_s
        self.limits = limits = limits or AttemptLimits()
        self.reassembly = reassembly = reassembly or ReassemblyLimits()
        self.reassembly_budget = ByteBudget(reassembly.total_bytes)
        self.address_attempts = RateLimiter(limits.per_address_burst, limits.per_address_per_s, limits.max_keys)
        self.phone_attempts = RateLimiter(limits.per_phone_burst, limits.per_phone_per_s, limits.max_keys)
        self.alarms = AlarmTracker(alarm_store)
        """Alarm bits per terminal; with ``alarm_store`` open alarms outlive a restart (ended or continued)."""
        self.counters = Jt808Counters()
        self.commands = CommandDesk(wall_clock)
        """Platform commands in flight (0x8203, 0x8300, 0x8103, 0x8104), audited."""

    @property
    def max_auth_failures(self) -> int:
        """Failed authentications after which a connection is closed."""
        return self.limits.max_auth_failures

    def admits(self, device_id: str) -> bool:
        """Whether this terminal may register and authenticate."""
        return self.accept_unknown or self.registry.lookup(device_id)

    def new_session(self, peer: str) -> Jt808Session:
        """A session for a new connection (``peer`` is ``host:port``)."""
        self.counters.sessions_opened += 1
        return Jt808Session(self, peer)

    def command(self, device_id: str, command: DeviceCommand, now: float) -> tuple[Jt808Session | None,
                                                                                   SessionOutput]:
        """Send a platform command on the terminal's connection (audited): (that session or None, output)."""
        session = self.owners.get(device_id)
        out = self.commands.request(session, device_id, command, now)
        return (session if out.replies else None), out

    def attempt_allowed(self, host: str, device_id: str, now: float) -> bool:
        """Take a register/authenticate attempt from the address's and the phone's throttles."""
        by_address = self.address_attempts.allow(host, now)
        by_phone = self.phone_attempts.allow(device_id, now)
        return by_address and by_phone


_NEEDS_REPLY: Final = frozenset({MsgId.HEARTBEAT, MsgId.LOGOUT, MsgId.LOCATION, MsgId.BATCH_LOCATION,
                                 MsgId.AUTHENTICATE, CommandId.DRIVER_IDENTITY})
_REASSEMBLED: Final = frozenset({MsgId.LOCATION, MsgId.BATCH_LOCATION})
"""Messages worth reassembling from split packets (others are answered "unsupported" per packet)."""
_BAD_MESSAGE: Final = frozenset({RejectionReason.BAD_CHECKSUM, RejectionReason.LENGTH_MISMATCH,
                                 RejectionReason.BAD_SPLIT_HEADER, RejectionReason.SPLIT_OVERFLOW})


class Jt808Session:
    """One terminal connection: framing, reassembly, authentication and dispatch."""

    def __init__(self, platform: Jt808Platform, peer: str) -> None:
        self.platform = platform
        self.peer = peer
        self.device_id: str | None = None
        """Set once the terminal authenticated."""
        self.host = peer.rpartition(":")[0] or peer
        """The source address without the port (throttles and caps are per address)."""
        self.auth_failures = 0
        self.preauth_errors = 0
        """Refusals caused while not authenticated (closing the connection past a limit)."""
        self._splitter = FrameSplitter()
        r = platform.reassembly
        self._assembler = SplitPacketAssembler(platform.split_timeout_s, r.max_pending, r.max_packets,
                                               r.per_connection_bytes, platform.reassembly_budget)
        self._serial = 0
        self._reassembled = False
        self.head: Jt808Header | None = None
        """Header of the authentication: phone and layout the platform's own messages use."""
        self._handlers: dict[int, Callable[[Jt808Frame, SessionOutput], None]] = {
            MsgId.HEARTBEAT: self._on_heartbeat,
            MsgId.LOCATION: self._on_location,
            MsgId.BATCH_LOCATION: self._on_batch_location,
            MsgId.LOGOUT: self._on_logout,
            MsgId.TERMINAL_GENERAL_REPLY: self._on_terminal_reply,
            CommandId.DRIVER_IDENTITY: self._on_driver,
            CommandId.QUERY_PARAMS_REPLY: self._on_params_reply,
        }

    @property
    def authenticated(self) -> bool:
        """Whether the terminal has authenticated on this connection."""
        return self.device_id is not None

    @property
    def buffered(self) -> int:
        """Bytes this connection holds: an unfinished frame plus unfinished split messages."""
        return self._splitter.buffered + self._assembler.held

    def feed(self, data: bytes, now: float) -> SessionOutput:
        """Handle received bytes; ``now`` is a monotonic clock in seconds.

        Once the output says ``close``, the rest of ``data`` is not looked at: the connection is
        being dropped, and a flood in one read must not cost more work than the limit allows.
        """
        out = SessionOutput()
        self.platform.counters.bytes_in += len(data)
        for item in self._splitter.feed(data):
            if out.close:
                break
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
        self._assembler.clear()
        out = SessionOutput()
        self._go_offline(out, reason)
        return out

    def _go_offline(self, out: SessionOutput, reason: str) -> None:
        device_id, self.device_id = self.device_id, None
        self.head = None
        if device_id is not None and self.platform.owners.get(device_id) is self:
            del self.platform.owners[device_id]
            out.publications.extend(self.platform.commands.disconnected(device_id))
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
                head = frame.header
                if self.device_id is None:
                    # Nothing is held for a connection that has not shown who it is.
                    self._refuse(out, frame, RejectionReason.NOT_AUTHENTICATED,
                                 "split packets are not accepted before authentication", ReplyResult.FAIL)
                    return
                if head.msg_id not in _REASSEMBLED:
                    self._refuse(out, frame, RejectionReason.UNSUPPORTED_MESSAGE,
                                 f"message 0x{head.msg_id:04x} (packet {head.packet_index}/{head.packet_total})",
                                 ReplyResult.UNSUPPORTED)
                    return
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
        self._dispatch(frame, out, now)

    def _dispatch(self, frame: Jt808Frame, out: SessionOutput, now: float) -> None:
        h = frame.header
        self.platform.counters.messages[h.msg_id] += 1
        # Packets of a split message were each acknowledged on arrival; the whole message
        # then only answers when something is wrong with it.
        self._reassembled = frame.reassembled
        if h.msg_id == MsgId.TERMINAL_GENERAL_REPLY and (self.device_id is None or h.device_id != self.device_id):
            return  # a reply never gets one; from a stranger it is simply ignored
        try:
            if h.msg_id == MsgId.REGISTER:
                self._on_register(frame, out, now)
                return
            if h.msg_id == MsgId.AUTHENTICATE:
                self._on_authenticate(frame, out, now)
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

    def _throttled(self, frame: Jt808Frame, now: float, out: SessionOutput) -> bool:
        h = frame.header
        if self.platform.attempt_allowed(self.host, h.device_id, now):
            return False
        # No reply: the standard has no "try later" result, and the connection is dropped.
        self._reject(out, RejectionReason.RATE_LIMITED, f"too many registration/authentication attempts from "
                     f"{self.host} or for {h.device_id}", h.device_id, h.msg_id, _wire(frame))
        out.close = True
        return True

    def _register_refused(self, out: SessionOutput, frame: Jt808Frame, reason: RejectionReason, detail: str,
                          result: RegisterResult) -> None:
        h = frame.header
        self._reject(out, reason, detail, h.device_id, h.msg_id, _wire(frame))
        self._send(out, h, MsgId.REGISTER_REPLY, build_register_reply(h.serial, result))

    def _on_register(self, frame: Jt808Frame, out: SessionOutput, now: float) -> None:
        h = frame.header
        req = parse_register(frame.body, h.version)
        if self._throttled(frame, now, out):
            return
        sent = TerminalIdentity(req.manufacturer, req.model, req.terminal_id, req.plate_color, req.plate)
        plat = self.platform
        if not plat.admits(h.device_id):
            self._register_refused(out, frame, RejectionReason.UNKNOWN_TERMINAL, f"terminal {req.terminal_id!r} "
                                   f"plate {req.plate!r} is not in the registry", RegisterResult.TERMINAL_NOT_IN_DATABASE)
            return
        wrong = plat.registry.check(h.device_id, sent) if plat.registry.lookup(h.device_id) else []
        if wrong:
            # The reply does not say which field is wrong; the dead letter does (for the operator).
            result = (RegisterResult.VEHICLE_NOT_IN_DATABASE if set(wrong) <= {"plate", "plate_colour"}
                      else RegisterResult.TERMINAL_NOT_IN_DATABASE)
            self._register_refused(out, frame, RejectionReason.IDENTITY_MISMATCH, "registration fields differ from "
                                   f"the registry: {', '.join(wrong)} (sent terminal {req.terminal_id!r} model "
                                   f"{req.model!r} plate {req.plate_color}/{req.plate!r})", result)
            return
        try:
            if plat.registrations.get(h.device_id) is not None:
                self._register_refused(out, frame, RejectionReason.ALREADY_REGISTERED, f"terminal {h.device_id} is "
                                       "registered; an operator must reset it before it registers again",
                                       RegisterResult.TERMINAL_ALREADY_REGISTERED)
                return
            owner = plat.registrations.plate_owner(req.plate_color, req.plate)
            if owner is not None:
                self._register_refused(out, frame, RejectionReason.ALREADY_REGISTERED, f"plate {req.plate!r} is "
                                       f"registered to terminal {owner}", RegisterResult.VEHICLE_ALREADY_REGISTERED)
                return
            code = new_auth_code()
            added = plat.registrations.add(Registration(h.device_id, hash_code(code), sent, plat.wall_clock(),
                                                        self.peer))
        except RegistrationStoreError as exc:
            self._refuse(out, frame, RejectionReason.STORE_FAILED, str(exc), ReplyResult.FAIL)
            return
        if not added:  # another connection registered it in between
            self._register_refused(out, frame, RejectionReason.ALREADY_REGISTERED, f"terminal {h.device_id} is "
                                   "registered", RegisterResult.TERMINAL_ALREADY_REGISTERED)
            return
        plat.counters.registered += 1
        self._send(out, h, MsgId.REGISTER_REPLY, build_register_reply(h.serial, RegisterResult.OK, code))

    def _on_authenticate(self, frame: Jt808Frame, out: SessionOutput, now: float) -> None:
        h = frame.header
        req = parse_auth(frame.body, h.version)
        if self._throttled(frame, now, out):
            return
        try:
            registration = self.platform.registrations.get(h.device_id)
        except RegistrationStoreError as exc:
            self._refuse(out, frame, RejectionReason.STORE_FAILED, str(exc), ReplyResult.FAIL)
            return
        if not self.platform.admits(h.device_id):
            self._refuse(out, frame, RejectionReason.UNKNOWN_TERMINAL, "terminal is not in the registry",
                         ReplyResult.FAIL)
        elif registration is None:
            self._refuse(out, frame, RejectionReason.AUTH_FAILED, "terminal has not registered", ReplyResult.FAIL)
        elif not registration.verify(req.code):
            self._refuse(out, frame, RejectionReason.AUTH_FAILED, "wrong auth code", ReplyResult.FAIL)
        else:
            if self.device_id is not None and self.device_id != h.device_id:
                self._go_offline(out, "another terminal authenticated on its connection")
            self.device_id = h.device_id
            self.head = h
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

    def _on_terminal_reply(self, frame: Jt808Frame, out: SessionOutput) -> None:
        self.platform.commands.on_reply(frame.header.device_id, parse_general_reply(frame.body), out)

    def _on_params_reply(self, frame: Jt808Frame, out: SessionOutput) -> None:
        # Filed at the terminal's own newest position time: the platform's clock may be ahead of the
        # terminal's, and telemetry "from the future" would make its next positions late for the rules.
        device_id = frame.header.device_id
        ts = self.platform.alarms.last_time(device_id) or self.platform.wall_clock()
        self.platform.commands.on_params(device_id, parse_params_reply(frame.body), ts, out)

    def _on_driver(self, frame: Jt808Frame, out: SessionOutput) -> None:
        h = frame.header
        ident = parse_driver_identity(frame.body, h.version)
        # Filed no earlier than the newest live position: an older timestamp would make the
        # driver's id "late" data that does not become the vehicle's current driver.
        last = self.platform.alarms.last_time(h.device_id)
        ts = max(ident.time, last) if last is not None else ident.time
        if ident.read_ok or not ident.signed_in:  # a card that could not be read names nobody
            out.publications.append(Publication(device_topic(Kind.VEHICLE, h.device_id, Channel.TELEMETRY),
                                                encode(Telemetry(ts=ts, metrics=driver_metrics(ident)))))
            self.platform.counters.telemetry += 1
        out.publications.append(Publication(device_topic(Kind.VEHICLE, h.device_id, Channel.EVENT),
                                            encode(driver_event(h.device_id, ident, ts))))
        self.platform.counters.events += 1
        self._reply(out, h, ReplyResult.OK)

    def send(self, out: SessionOutput, msg_id: int, body: bytes) -> int:
        """Write a platform message to the authenticated terminal; returns its serial number."""
        assert self.head is not None
        self._send(out, self.head, msg_id, body)
        return self._serial

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
        if self.device_id is None and not out.close:
            self.preauth_errors += 1
            if self.preauth_errors >= self.platform.limits.max_preauth_errors:
                self.platform.counters.rejected[RejectionReason.TOO_MANY_ERRORS] += 1
                out.rejections.append(Rejection(RejectionReason.TOO_MANY_ERRORS, f"{self.preauth_errors} refusals "
                                                "before authentication; connection closed", self.peer, device_id,
                                                None, b""))
                out.close = True


def _wire(frame: Jt808Frame) -> bytes:
    """The message again as one wire frame (for dead letters; split messages come back whole).

    An authentication's body is left out: it may hold a terminal's valid code (e.g. a vehicle
    just removed from the registry), and dead letters are readable by operators.
    """
    h = frame.header
    body = b"" if h.msg_id == MsgId.AUTHENTICATE else frame.body[:1023]
    try:
        return encode_frame(h.msg_id, h.phone, h.serial, body, version=h.version,
                            protocol_version=h.protocol_version or 1)
    except ValueError:
        return body
