"""Platform commands to terminals (pure): request -> frame on the terminal's session -> reply, audited.

A ``DeviceCommand`` arrives on ``vigil/v1/vehicle/{id}/command`` (only platform accounts may
publish there). ``CommandDesk`` turns it into a JT/T 808 message on the terminal's current
connection and remembers it by the serial number it was sent with; the terminal's general reply
(0x0001) or parameter reply (0x0104) closes it. Every step is published as an audit event
(``jt808.command``) on the vehicle's event topic, so the trail is stored with the vehicle's data.

Commands (``params``):

- ``jt808.alarm_ack`` ``{bits: [0, 3], alarm_serial: 0}`` -> 0x8203 (only bits 0, 3, 20, 21, 22, 27, 28);
- ``jt808.text`` ``{text, emergency: false, tts: true}`` -> 0x8300;
- ``jt808.query_params`` ``{names: [...]}`` -> 0x8104 (all) or 0x8106 (named);
- ``jt808.set_params`` ``{values: {max_speed_kmh: 80}}`` -> 0x8103.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from broker.contracts import (
    Channel,
    DeviceCommand,
    DeviceEvent,
    Kind,
    MetricValue,
    Severity,
    Telemetry,
    device_topic,
    encode,
)
from edge.jt808.commands import (
    CLEAR_ON_ACK_MASK,
    CommandId,
    ParamsReply,
    TextFlag,
    build_alarm_confirm,
    build_query_params,
    build_set_params,
    build_text,
)
from edge.jt808.messages import GeneralReply

if TYPE_CHECKING:
    from edge.jt808.codec import Jt808Header
    from edge.runtime.output import Publication, SessionOutput


class TerminalSession(Protocol):
    """What a command needs of the terminal's session (``edge.jt808.session.Jt808Session``, which owns this
    desk, so the desk types it here instead of importing the session back)."""

    @property
    def head(self) -> Jt808Header | None: ...

    def send(self, out: SessionOutput, msg_id: int, body: bytes) -> int:
        """Write a platform message to the terminal; returns its serial number."""
        ...

AUDIT_EVENT_TYPE: Final = "jt808.command"
COMMANDS: Final = frozenset({"jt808.alarm_ack", "jt808.text", "jt808.query_params", "jt808.set_params"})
_REPLY_STATUS: Final = {0: "acked", 1: "failed", 2: "bad_message", 3: "unsupported", 4: "acked"}
_ALARM_NAMES: Final = {"emergency": 0, "danger_warning": 3, "area_entry_exit": 20, "route_entry_exit": 21,
                       "route_section_time_abnormal": 22, "illegal_ignition": 27, "illegal_displacement": 28}


@dataclass(slots=True)
class _Pending:
    command: DeviceCommand
    msg_id: int
    serial: int
    sent_at: float


@dataclass(slots=True)
class CommandDesk:
    """Commands in flight per terminal, matched to replies by (serial, message id)."""

    wall_clock: Callable[[], datetime]
    reply_timeout_s: float = 60.0
    max_pending: int = 16
    """Commands in flight per terminal; more are refused (a stuck terminal must not pile them up)."""
    pending: dict[str, dict[int, _Pending]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Command ids seen lately (a QoS 1 redelivery must not reach the terminal twice)."""

    def repeated(self, command: DeviceCommand) -> bool:
        """Whether this command id was handled already (commands without an id are never repeats)."""
        if command.command_id is None:
            return False
        if command.command_id in self.recent:
            self._count("duplicate")
            return True
        self.recent[command.command_id] = None
        if len(self.recent) > 4096:
            self.recent.popitem(last=False)
        return False

    def _count(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    def audit(self, device_id: str, command: DeviceCommand, status: str, detail: str = "",
              **data: Any) -> Publication:
        """One audit event for a command step."""
        from edge.runtime.output import Publication

        self._count(status)
        cid = command.command_id or "-"
        event = DeviceEvent(
            ts=self.wall_clock(), type=AUDIT_EVENT_TYPE, state="instant", event_id=command.command_id,
            severity=Severity.WARNING if status in ("refused", "failed", "no_reply", "unsupported", "bad_message")
            else Severity.INFO,
            message=f"{command.command} {status}" + (f": {detail}" if detail else ""),
            data={"command": command.command, "command_id": cid, "status": status, "detail": detail,
                  "requested_at": command.ts.isoformat(), **data})
        return Publication(device_topic(Kind.VEHICLE, device_id, Channel.EVENT), encode(event))

    def frame_for(self, command: DeviceCommand, version: Any) -> tuple[int, bytes]:
        """(message id, body) of a command. Raises ``ValueError`` for bad parameters."""
        p = command.params
        if command.command == "jt808.alarm_ack":
            mask = 0
            for b in p.get("bits") or []:
                bit = _ALARM_NAMES.get(b) if isinstance(b, str) else b
                if not isinstance(bit, int) or isinstance(bit, bool) or not 0 <= bit < 32:
                    raise ValueError(f"alarm bit {b!r}")
                mask |= 1 << bit
            mask &= CLEAR_ON_ACK_MASK
            if not mask:
                raise ValueError("no clear-on-ack alarm bit (0, 3, 20, 21, 22, 27, 28) to confirm")
            serial = p.get("alarm_serial", 0)
            if not isinstance(serial, int) or isinstance(serial, bool):
                raise ValueError("alarm_serial must be an integer")
            return CommandId.ALARM_CONFIRM, build_alarm_confirm(mask, serial)
        if command.command == "jt808.text":
            text = p.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("text must be a non-empty string")
            flags = TextFlag.DISPLAY | (TextFlag.TTS if p.get("tts", True) else 0)
            if p.get("emergency"):
                flags |= TextFlag.EMERGENCY
            return CommandId.TEXT, build_text(text, version, flags=flags)
        if command.command == "jt808.query_params":
            names = p.get("names")
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
                raise ValueError("names must be a list of parameter names")
            return build_query_params(names)
        if command.command == "jt808.set_params":
            values = p.get("values")
            if not isinstance(values, dict):
                raise ValueError("values must be a mapping of parameter name to number")
            return CommandId.SET_PARAMS, build_set_params(values)
        raise ValueError(f"unknown command {command.command!r} (known: {', '.join(sorted(COMMANDS))})")

    def sent(self, device_id: str, command: DeviceCommand, msg_id: int, serial: int, now: float) -> Publication:
        """Remember a command written to the terminal; the audit event says so."""
        self.pending.setdefault(device_id, {})[serial] = _Pending(command, msg_id, serial, now)
        return self.audit(device_id, command, "sent", msg_id=f"0x{msg_id:04x}", serial=serial)

    def busy(self, device_id: str) -> bool:
        """Whether the terminal has as many commands in flight as allowed."""
        return len(self.pending.get(device_id, ())) >= self.max_pending

    def on_reply(self, device_id: str, reply: GeneralReply, out: SessionOutput) -> None:
        """A 0x0001 from the terminal: close the command it answers (others are ordinary acks)."""
        mine = self.pending.get(device_id)
        p = mine.get(reply.reply_serial) if mine else None
        if p is None or p.msg_id != reply.reply_id:
            return
        del mine[reply.reply_serial]  # type: ignore[union-attr]
        status = _REPLY_STATUS.get(reply.result, "failed")
        out.publications.append(self.audit(device_id, p.command, status, f"terminal result {reply.result}",
                                           msg_id=f"0x{p.msg_id:04x}", serial=p.serial, result=reply.result))

    def on_params(self, device_id: str, reply: ParamsReply, ts: datetime, out: SessionOutput) -> None:
        """A 0x0104: audit it against its query and publish the values as ``terminal.*`` telemetry."""
        from edge.runtime.output import Publication

        mine = self.pending.get(device_id)
        p = mine.pop(reply.reply_serial, None) if mine else None
        numeric: dict[str, MetricValue] = {f"terminal.{k}": v for k, v in reply.values.items() if isinstance(v, int | float)}
        if p is not None:
            out.publications.append(self.audit(device_id, p.command, "acked", f"{len(reply.values)} parameters",
                                               msg_id=f"0x{p.msg_id:04x}", serial=p.serial, values=reply.values))
        if numeric:
            out.publications.append(Publication(device_topic(Kind.VEHICLE, device_id, Channel.TELEMETRY),
                                                 encode(Telemetry(ts=ts, metrics=numeric))))

    def request(self, session: TerminalSession | None, device_id: str, command: DeviceCommand,
                now: float) -> SessionOutput:
        """Write ``command`` on the terminal's session (None: offline), or refuse it; audited either way."""
        from edge.runtime.output import SessionOutput

        out = SessionOutput()
        why = "terminal offline"
        if session is not None and session.head is not None:
            why = f"{self.max_pending} commands already wait for the terminal's reply" if self.busy(device_id) else ""
            if not why:
                try:
                    msg_id, body = self.frame_for(command, session.head.version)
                except ValueError as exc:
                    why = str(exc)
                else:
                    serial = session.send(out, msg_id, body)
                    out.publications.append(self.sent(device_id, command, msg_id, serial, now))
                    return out
        out.publications.append(self.audit(device_id, command, "refused", why))
        return out

    def disconnected(self, device_id: str) -> list[Publication]:
        """The terminal's connection ended: its unanswered commands will not be answered (its serials restart)."""
        mine = self.pending.pop(device_id, {})
        return [self.audit(device_id, p.command, "no_reply", "connection closed before the reply", serial=p.serial)
                for p in mine.values()]

    def expire(self, now: float) -> list[Publication]:
        """Audit commands the terminal never answered within ``reply_timeout_s`` (and forget them)."""
        out = []
        for device_id, mine in list(self.pending.items()):
            for serial, p in list(mine.items()):
                if now - p.sent_at >= self.reply_timeout_s:
                    del mine[serial]
                    out.append(self.audit(device_id, p.command, "no_reply",
                                          f"no reply in {self.reply_timeout_s:.0f} s", serial=serial))
            if not mine:
                del self.pending[device_id]
        return out
