"""HJ 212 downlink (pure core): platform commands to loggers, queued per MN and audited.

The gateway answers a logger's 1013 (time calibration request) with a 1012 carrying the
platform's SystemTime, and asks a logger to re-send hourly records (2061 with BeginTime and
EndTime) when it sees hours missing. Commands wait in a bounded queue per MN, go out one at a
time while the logger is connected, are re-sent when no 9011 comes back (section 6.2), and
end on the logger's 9012. Every step is an ``AuditRecord``. No I/O: the TCP adapter calls
``poll`` and writes the frames, and writes/publishes the audit records.
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Final

from broker.contracts import DeviceCommand, DeviceEvent
from edge.hj212.codec import FLAG_ACK, VERSION_2005, CpItem, Hj212Error, Hj212Packet, encode_packet
from edge.hj212.mapping import CHINA_TZ, parse_local_time

HOUR: Final = timedelta(hours=1)
AUDIT_EVENT_TYPE: Final = "hj212.command"
HISTORY_COMMANDS: Final = frozenset({"2051", "2061", "2031"})
"""History a platform may ask a logger to re-send: minute, hourly, daily records (tables C.20-C.22)."""
MAX_REQUEST_SPAN: Final = timedelta(days=31)


class CommandState(enum.StrEnum):
    """Where a command is in its life."""

    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    """The logger answered 9011 QnRtn=1 and is executing."""
    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"
    """The logger answered 9011 with a QnRtn other than 1."""
    EXPIRED = "expired"
    DROPPED = "dropped"
    """The MN's queue was full."""


@dataclass(frozen=True, slots=True)
class DownlinkPolicy:
    """Command queue, retry and gap-detection settings."""

    queue_size: int = 16
    reply_timeout_s: float = 10.0
    """Wait this long for the 9011 before re-sending (Table 1: 10 s over GPRS/LTE)."""
    retries: int = 3
    """Re-sends after the first attempt (Table 1: 3)."""
    exec_timeout_s: float = 300.0
    """Wait this long for the 9012 after the 9011."""
    command_ttl_s: float = 86400.0
    """A command not sent by then (logger away) expires."""
    time_calibration: bool = True
    """Answer 1013 with 1012."""
    gap_detection: bool = True
    gap_grace_s: float = 900.0
    """Hour H counts as missing once real-time data of H+1h+grace arrived without its 2061."""
    max_history_hours: int = 24
    """Longest range asked for in one 2061 history request (older missing hours are not asked)."""
    max_devices: int = 100_000


@dataclass
class Hj212Command:
    """One platform command to one logger."""

    mn: str
    cn: str
    reason: str
    created: float
    cp: tuple[CpItem, ...] = ()
    pol_id: str | None = None
    """1012: the instrument (PolId) of the 1013 that asked for it."""
    begin: datetime | None = None
    end: datetime | None = None
    qn: str = ""
    attempts: int = 0
    state: CommandState = CommandState.QUEUED
    changed: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One step of a command, as written to the audit file and published as an event."""

    ts: str
    mn: str
    cn: str
    qn: str
    event: str
    attempt: int = 0
    detail: str = ""
    cp: str = ""

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    def to_event(self) -> DeviceEvent:
        """The contract event published on ``vigil/v1/emission/{MN}/event``."""
        return DeviceEvent(ts=datetime.fromisoformat(self.ts), type=AUDIT_EVENT_TYPE, event_id=self.qn or None,
                           message=f"CN {self.cn} {self.event}" if self.cn else f"platform command {self.event}",
                           data=asdict(self))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command frame to write to the connection of ``mn``."""

    mn: str
    frame: bytes


@dataclass
class _Logger:
    queue: deque[Hj212Command] = field(default_factory=deque)
    inflight: Hj212Command | None = None
    connected: bool = False
    version: int = 1
    st: str = "31"
    pw: str = ""
    covered: datetime | None = None
    """Hours up to this one (UTC period start) were received or asked for."""
    next_due: str | None = None
    """Local DataTime text from which real-time data shows the hour after ``covered`` missing (compared as text:
    every 2011 goes through here, so the common case is one string comparison)."""
    requested: deque[tuple[datetime, datetime]] = field(default_factory=lambda: deque(maxlen=16))


def _fmt(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y%m%d%H%M%S")


class DownlinkTracker:
    """Per-MN command queues, gap detection and the audit trail. Pure: clocks are injected."""

    def __init__(self, policy: DownlinkPolicy | None = None, tz: tzinfo = CHINA_TZ,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.policy = policy or DownlinkPolicy()
        self._tz = tz
        self._wall = wall
        self._loggers: OrderedDict[str, _Logger] = OrderedDict()
        self._busy: set[str] = set()
        """MNs with a command queued or in flight: ``poll`` looks at these only (10,000 loggers, few commands)."""
        self._audit: list[AuditRecord] = []
        self._last_qn = 0

    # ------------------------------------------------------------------ inputs

    def connected(self, mn: str, packet: Hj212Packet) -> None:
        """An authenticated packet of ``mn`` arrived on a live connection (remember how to address it)."""
        logger = self._logger(mn)
        logger.connected = True
        logger.version = packet.version
        logger.pw = packet.pw
        if packet.st != "91":
            logger.st = packet.st

    def disconnected(self, mn: str) -> None:
        """The logger's connection ended; its commands wait for the next one."""
        logger = self._loggers.get(mn)
        if logger is not None:
            logger.connected = False

    def on_packet(self, packet: Hj212Packet, now: float) -> bool:
        """An accepted packet from a logger; returns True when it is a re-sent hourly record."""
        cn = packet.cn
        if cn == "9011" or cn == "9012":
            self._on_reply(packet, now)
        elif cn == "1013" and self.policy.time_calibration:
            pol_id = packet.get("PolId")
            if pol_id is not None and not (pol_id.isascii() and pol_id.isalnum() and len(pol_id) <= 16):
                pol_id = None  # echo only a plausible pollutant code into the 1012
            self.enqueue(Hj212Command(packet.mn, "1012", "time calibration request (1013)", now, pol_id=pol_id), now)
        elif cn == "2061":
            return self._on_hourly(packet, now)
        elif cn == "2011" and self.policy.gap_detection:
            self._on_realtime(packet, now)
        return False

    def request(self, mn: str, command: DeviceCommand, now: float) -> bool:
        """Queue a platform command from MQTT (``hj212.set_time`` or ``hj212.history``).

        An invalid one is not queued; it is audited as ``invalid`` with the reason.
        """
        why = f"platform command {command.command_id or '-'} ({command.command})"
        try:
            queued = self._from_platform(mn, command, why, now)
        except (ValueError, TypeError, Hj212Error) as exc:
            detail = exc.detail if isinstance(exc, Hj212Error) else str(exc)
            self.enqueue_invalid(mn, f"{why}: {detail}")
            return False
        return self.enqueue(queued, now)

    def enqueue_invalid(self, mn: str, detail: str) -> None:
        """Audit a platform command that was refused before it reached a queue."""
        self._audit.append(AuditRecord(self._now_iso(), mn, "", "", "invalid", detail=detail[:300]))

    def _from_platform(self, mn: str, command: DeviceCommand, why: str, now: float) -> Hj212Command:
        params = command.params
        if command.command == "hj212.set_time":
            pol_id = params.get("pol_id")
            if pol_id is not None and (not isinstance(pol_id, str) or not (pol_id.isascii() and pol_id.isalnum())
                                       or len(pol_id) > 16):
                raise ValueError("pol_id must be a pollutant code")
            return Hj212Command(mn, "1012", why, now, pol_id=pol_id)
        if command.command == "hj212.history":
            cn = str(params.get("cn", "2061"))
            if cn not in HISTORY_COMMANDS:
                raise ValueError(f"cn must be one of {sorted(HISTORY_COMMANDS)}")
            begin, end = self._moment(params.get("begin")), self._moment(params.get("end"))
            if not begin <= end <= begin + MAX_REQUEST_SPAN:
                raise ValueError("end must be after begin and at most 31 days later")
            return Hj212Command(mn, cn, why, now, begin=begin, end=end)
        raise ValueError("unknown command (hj212.set_time, hj212.history)")

    def _moment(self, value: object) -> datetime:
        """``YYYYMMDDhhmmss`` in the loggers' local time, or RFC 3339 with an offset."""
        if not isinstance(value, str):
            raise ValueError("begin and end are required strings")
        if len(value) == 14 and value.isdigit():
            return parse_local_time(value, self._tz)
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("begin/end in RFC 3339 need an offset")
        return moment.astimezone(UTC)

    def enqueue(self, command: Hj212Command, now: float) -> bool:
        """Queue a command for its MN; False (and a ``dropped`` record) when the queue is full."""
        logger = self._logger(command.mn)
        command.changed = now
        if len(logger.queue) >= self.policy.queue_size:
            command.state = CommandState.DROPPED
            self._record(command, "dropped", f"queue of {self.policy.queue_size} full; {command.reason}")
            return False
        logger.queue.append(command)
        self._busy.add(command.mn)
        self._record(command, "queued", command.reason)
        return True

    # ------------------------------------------------------------------ outputs

    def poll(self, now: float) -> list[Outgoing]:
        """Frames due now: first sends, re-sends after a missing 9011; also ends timed-out commands."""
        out: list[Outgoing] = []
        policy = self.policy
        for mn in list(self._busy):
            logger = self._loggers.get(mn)
            if logger is None:
                self._busy.discard(mn)
                continue
            while logger.queue and now - logger.queue[0].created > policy.command_ttl_s:
                expired = logger.queue.popleft()
                self._finish(expired, CommandState.EXPIRED, f"not sent within {policy.command_ttl_s:g} s", now)
            cmd = logger.inflight
            if cmd is not None:
                waited = now - cmd.changed
                if cmd.state == CommandState.SENT and waited >= policy.reply_timeout_s:
                    if cmd.attempts > policy.retries:
                        self._finish(cmd, CommandState.FAILED, f"no 9011 after {cmd.attempts} attempts", now)
                        logger.inflight = cmd = None
                    elif logger.connected:
                        out.append(self._send(logger, cmd, now))
                elif cmd.state == CommandState.ACCEPTED and waited >= policy.exec_timeout_s:
                    self._finish(cmd, CommandState.FAILED, f"no 9012 within {policy.exec_timeout_s:g} s", now)
                    logger.inflight = cmd = None
            if cmd is None and logger.queue and logger.connected and logger.version != VERSION_2005:
                cmd = logger.inflight = logger.queue.popleft()
                out.append(self._send(logger, cmd, now))
            if logger.inflight is None and not logger.queue:
                self._busy.discard(mn)
        return out

    @property
    def has_work(self) -> bool:
        """Something is queued, in flight or waiting in the audit trail."""
        return bool(self._busy or self._audit)

    def take_audit(self) -> list[AuditRecord]:
        """Audit records since the last call, oldest first."""
        records, self._audit = self._audit, []
        return records

    def pending(self, mn: str) -> int:
        """Commands of ``mn`` queued or in flight."""
        logger = self._loggers.get(mn)
        return 0 if logger is None else len(logger.queue) + (logger.inflight is not None)

    # ------------------------------------------------------------------ internals

    def _logger(self, mn: str) -> _Logger:
        logger = self._loggers.get(mn)
        if logger is None:
            logger = self._loggers[mn] = _Logger()
            if len(self._loggers) > self.policy.max_devices:
                self._loggers.popitem(last=False)
        return logger

    def _next_qn(self) -> str:
        wall = self._wall().astimezone(self._tz)
        qn = int(wall.strftime("%Y%m%d%H%M%S") + f"{wall.microsecond // 1000:03d}")
        # QN identifies the request in the replies: never hand out the same one twice.
        self._last_qn = max(qn, self._last_qn + 1)
        return f"{self._last_qn:017d}"

    def _cp(self, cmd: Hj212Command) -> tuple[CpItem, ...]:
        if cmd.cn == "1012":
            # Asia/Shanghai local time (the standard's SystemTime), taken at each send so a re-send is not stale.
            fields = ((("PolId", cmd.pol_id),),) if cmd.pol_id else ()
            return (*fields, (("SystemTime", _fmt(self._wall(), self._tz)),))
        if cmd.begin is not None and cmd.end is not None:
            return ((("BeginTime", _fmt(cmd.begin, self._tz)),), (("EndTime", _fmt(cmd.end, self._tz)),))
        return cmd.cp

    def _send(self, logger: _Logger, cmd: Hj212Command, now: float) -> Outgoing:
        if not cmd.qn:
            cmd.qn = self._next_qn()  # re-sends keep the QN: the logger's replies name it
        cmd.attempts += 1
        cmd.state = CommandState.SENT
        cmd.changed = now
        cp = self._cp(cmd)
        cmd.cp = cp
        if cmd.cn == "2061" and cmd.begin is not None and cmd.end is not None:
            logger.requested.append((cmd.begin, cmd.end))
        packet = Hj212Packet(st=logger.st, cn=cmd.cn, mn=cmd.mn, flag=(logger.version << 2) | FLAG_ACK,
                             qn=cmd.qn, pw=logger.pw, cp=cp)
        self._record(cmd, "sent" if cmd.attempts == 1 else "resent", cmd.reason)
        return Outgoing(cmd.mn, encode_packet(packet))

    def _on_reply(self, packet: Hj212Packet, now: float) -> None:
        logger = self._loggers.get(packet.mn)
        cmd = logger.inflight if logger is not None else None
        if logger is None or cmd is None or cmd.qn != packet.qn:
            self._audit.append(AuditRecord(self._now_iso(), packet.mn, packet.cn, packet.qn or "",
                                           "unmatched_reply", detail=_cp_text(packet.cp)))
            return
        if packet.cn == "9011":
            code = packet.get("QnRtn")
            self._record(cmd, "reply_9011", f"QnRtn={code}")
            if code == "1":
                cmd.state = CommandState.ACCEPTED
                cmd.changed = now
            else:
                self._finish(cmd, CommandState.REFUSED, f"QnRtn={code}", now)
                logger.inflight = None
            return
        code = packet.get("ExeRtn")
        self._record(cmd, "reply_9012", f"ExeRtn={code}")
        ok = code in ("1", "100")  # 100: the logger has no data for the range; nothing more will come
        self._finish(cmd, CommandState.DONE if ok else CommandState.FAILED, f"ExeRtn={code}", now)
        logger.inflight = None

    def _finish(self, cmd: Hj212Command, state: CommandState, detail: str, now: float) -> None:
        cmd.state = state
        cmd.changed = now
        self._record(cmd, state.value, detail)

    def _on_hourly(self, packet: Hj212Packet, now: float) -> bool:
        hour = _hour_of(packet)
        if hour is None:
            return False
        logger = self._logger(packet.mn)
        resent = any(begin <= hour <= end for begin, end in logger.requested)
        if not self.policy.gap_detection:
            return resent
        if logger.covered is None:
            self._cover(logger, hour)
        elif hour > logger.covered + HOUR:
            self._ask(packet.mn, logger, logger.covered + HOUR, hour - HOUR,
                      f"2061 jumped from {_fmt(logger.covered, self._tz)} to {_fmt(hour, self._tz)}", now)
        if logger.covered is not None and hour > logger.covered:
            self._cover(logger, hour)
        return resent

    def _cover(self, logger: _Logger, hour: datetime) -> None:
        logger.covered = hour
        # Hour H is missing once real-time data reaches H + 1 h + grace; H = covered + 1 h.
        logger.next_due = _fmt(hour + 2 * HOUR + timedelta(seconds=self.policy.gap_grace_s), self._tz)

    def _on_realtime(self, packet: Hj212Packet, now: float) -> None:
        logger = self._loggers.get(packet.mn)
        if logger is None or logger.covered is None or logger.next_due is None:
            return  # no hourly record seen yet: nothing to compare with (the logger may not send 2061)
        text = packet.get("DataTime")
        if text is None or text < logger.next_due:
            return
        moment = _data_time(packet)
        if moment is None:
            return
        due = (moment - timedelta(seconds=self.policy.gap_grace_s) - HOUR).replace(minute=0, second=0,
                                                                                  microsecond=0)
        if due > logger.covered:
            self._ask(packet.mn, logger, logger.covered + HOUR, due,
                      f"no 2061 for {_fmt(logger.covered + HOUR, self._tz)} while 2011 reached "
                      f"{_fmt(moment, self._tz)}", now)
            self._cover(logger, due)

    def _ask(self, mn: str, logger: _Logger, begin: datetime, end: datetime, why: str, now: float) -> None:
        earliest = end - (self.policy.max_history_hours - 1) * HOUR
        if begin < earliest:
            why += f"; hours before {_fmt(earliest, self._tz)} not asked (max_history_hours)"
            begin = earliest
        self.enqueue(Hj212Command(mn, "2061", why, now, begin=begin, end=end), now)

    def _record(self, cmd: Hj212Command, event: str, detail: str) -> None:
        self._audit.append(AuditRecord(self._now_iso(), cmd.mn, cmd.cn, cmd.qn, event, cmd.attempts, detail,
                                       _cp_text(cmd.cp) if cmd.cp else _range_text(cmd, self._tz)))

    def _now_iso(self) -> str:
        return self._wall().astimezone(UTC).isoformat().replace("+00:00", "Z")


def _data_time(packet: Hj212Packet) -> datetime | None:
    text = packet.get("DataTime")
    if text is None:
        return None
    try:
        return parse_local_time(text)
    except Hj212Error:
        return None


def _hour_of(packet: Hj212Packet) -> datetime | None:
    moment = _data_time(packet)
    return None if moment is None else moment.replace(minute=0, second=0, microsecond=0)


def _cp_text(cp: tuple[CpItem, ...]) -> str:
    return ";".join(",".join(f"{k}={v}" for k, v in item) for item in cp)


def _range_text(cmd: Hj212Command, tz: tzinfo) -> str:
    if cmd.begin is None or cmd.end is None:
        return ""
    return f"BeginTime={_fmt(cmd.begin, tz)};EndTime={_fmt(cmd.end, tz)}"


class AuditLog:
    """Appends audit records as JSON lines; rotates to ``<file>.1`` past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self._max = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, records: list[AuditRecord]) -> None:
        """Append and flush (commands are rare; the audit must survive a crash right after)."""
        if not records:
            return
        if self.path.exists() and self.path.stat().st_size > self._max:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(r.to_json() + "\n" for r in records))
