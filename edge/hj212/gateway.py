"""HJ 212 gateway: data loggers over TCP in, contract telemetry on MQTT out.

Pure core: ``packet_to_telemetry`` (the mapping to the contract) and ``Hj212Session`` (one
connection's state machine: bytes in -> publications, replies, rejections). Thin adapter:
``Hj212Gateway`` (asyncio TCP server) publishing through any ``publish(topic, payload)``
coroutine, normally ``broker.mqtt.MqttClient.publish``. The CLI (``vigil edge hj212``) is in
``edge.hj212.__main__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final, Protocol
from zoneinfo import ZoneInfo

from broker.contracts import (
    METRIC_NAME_PATTERN,
    Channel,
    DeadLetter,
    DeviceStatus,
    Kind,
    MetricValue,
    RejectReason,
    Telemetry,
    dead_letter_topic,
    device_topic,
    encode,
    make_dead_letter,
    utcnow,
)
from edge.hj212.codec import (
    MAX_DATA_LENGTH,
    VERSION_2005,
    Hj212Error,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    Hj212Reject,
    Hj212Rejection,
    QnRtn,
    SplitPacketAssembler,
    data_reply,
    notify_reply,
    parse_packet,
    request_reply,
)
from edge.hj212.codes import legacy_to_current

log = logging.getLogger(__name__)

STAGE: Final = "edge-hj212"
CHINA_TZ: Final = ZoneInfo("Asia/Shanghai")

DATA_COMMANDS: Final = frozenset({"2011", "2021", "2031", "2041", "2051", "2061"})
"""Uploads published as telemetry: real-time, equipment status, daily, run time, minute, hourly."""
NOTIFY_COMMANDS: Final = frozenset({"1013"})
"""Notify commands from a logger; answered with 9013."""
REPLY_COMMANDS: Final = frozenset({"9011", "9012", "9013", "9014"})
"""Interaction replies from a logger; counted, never answered."""
OTHER_UPLOADS: Final = frozenset({"1011", "1061", "1063", "2081", "3015", "3017", "3018", "3019", "3020"})
"""Valid uploads that carry no telemetry (parameters, restart time, sample info): acknowledged only."""

_NUMERIC_SUFFIXES: Final = frozenset(
    {"Rtd", "Min", "Avg", "Max", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax", "Cou", "RT", "Data", "DayData", "NightData"}
)
_INT_SUFFIXES: Final = frozenset({"RS"})
_TIME_SUFFIXES: Final = frozenset({"SampleTime"})
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
_METRIC_RE: Final = re.compile(METRIC_NAME_PATTERN)
_DATETIME_RE: Final = re.compile(r"\d{14}")


# ---------------------------------------------------------------------------- mapping

def parse_local_time(text: str, tz: tzinfo = CHINA_TZ) -> datetime:
    """``YYYYMMDDhhmmss`` in the logger's local time -> aware UTC datetime.

    Raises:
        Hj212Error: ``bad_value`` when the text is not a valid time.
    """
    if not _DATETIME_RE.fullmatch(text):
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"time {text[:20]!r} is not YYYYMMDDhhmmss")
    try:
        local = datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                         int(text[12:14]), tzinfo=tz)
    except ValueError:
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"time {text!r} is not a valid date") from None
    return local.astimezone(UTC)


def _number(name: str, text: str) -> float:
    # float() also takes "nan", "inf" and "1_0"; none of them is a measurement.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value - value != 0 or "_" in text:
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"{name[:40]}={text[:20]!r} is not a finite number")
    return value


_FLAG, _FLOAT, _INT, _TIME, _OTHER, _DROP = range(6)
_FieldPlan = tuple[int, str]
_PLAN_CACHE_LIMIT: Final = 4096


def _plan(name: str, legacy: bool) -> _FieldPlan:
    """How a CP field name maps: (kind, metric name or quality code)."""
    code, dash, suffix = name.rpartition("-")
    if not dash:
        code, suffix = name, ""
    if legacy:
        code = legacy_to_current(code) or code
    if suffix == "Flag":
        return _FLAG, code
    metric = f"{code}.{suffix}" if suffix else code
    if not _METRIC_RE.match(metric):
        return _DROP, metric
    if suffix in _NUMERIC_SUFFIXES:
        return _FLOAT, metric
    if suffix in _INT_SUFFIXES:
        return _INT, metric
    if suffix in _TIME_SUFFIXES:
        return _TIME, metric
    return _OTHER, metric


# Loggers send the same few dozen field names over and over; plan each name once.
_plans: dict[tuple[str, bool], _FieldPlan] = {}


@dataclass(frozen=True, slots=True)
class TelemetryMapping:
    """The telemetry of one packet, and the CP fields that could not become metric names."""

    messages: tuple[Telemetry, ...]
    dropped_fields: int = 0


def packet_to_telemetry(packet: Hj212Packet, tz: tzinfo = CHINA_TZ, site: str | None = None) -> TelemetryMapping:
    """Map a data packet to contract telemetry: one message per ``DataTime``.

    ``code-Suffix`` becomes the metric ``code.Suffix`` (numbers as float, ``-RS`` as int,
    ``-SampleTime`` as an RFC 3339 UTC string, other text as str); ``code-Flag`` goes to
    ``quality[code]``; ``hj212.cn``, ``hj212.st`` and ``hj212.qn`` say which upload it was.
    HJ/T 212-2005 codes are translated to 2017 codes (``02-Rtd`` -> ``a21026.Rtd``).

    Raises:
        Hj212Error: no DataTime, or a value that does not parse (the packet is not published).
    """
    legacy = packet.version == VERSION_2005
    groups: list[tuple[datetime, dict[str, MetricValue], dict[str, str]]] = []
    metrics: dict[str, MetricValue] = {}
    quality: dict[str, str] = {}
    dropped = 0
    plans = _plans
    for item in packet.cp:
        for name, value in item:
            if name == "DataTime":
                metrics, quality = {}, {}
                groups.append((parse_local_time(value, tz), metrics, quality))
                continue
            if not groups:
                raise Hj212Error(Hj212Reject.MISSING_FIELD, f"{name[:40]} comes before any DataTime")
            plan = plans.get((name, legacy))
            if plan is None:
                plan = _plan(name, legacy)
                if len(plans) < _PLAN_CACHE_LIMIT:
                    plans[(name, legacy)] = plan
            kind, key = plan
            if kind == _FLOAT:
                metrics[key] = _number(name, value)
            elif kind == _FLAG:
                quality[key] = value[:4]
            elif kind == _INT:
                metrics[key] = int(_number(name, value))
            elif kind == _TIME:
                metrics[key] = parse_local_time(value, tz).isoformat().replace("+00:00", "Z")
            elif kind == _OTHER:
                metrics[key] = value
                with contextlib.suppress(Hj212Error):
                    if _NUMBER_RE.fullmatch(value):
                        metrics[key] = _number(name, value)
            else:
                dropped += 1
    if not groups:
        raise Hj212Error(Hj212Reject.MISSING_FIELD, f"CN {packet.cn} without DataTime")
    messages = []
    for ts, group_metrics, group_quality in groups:
        group_metrics["hj212.cn"] = packet.cn
        group_metrics["hj212.st"] = packet.st
        if packet.qn is not None:
            group_metrics["hj212.qn"] = packet.qn
        messages.append(Telemetry(ts=ts, metrics=group_metrics, quality=group_quality or None, site=site))
    return TelemetryMapping(tuple(messages), dropped)


# ---------------------------------------------------------------------------- session (pure)

class DevicePasswords(Protocol):
    """Where the gateway checks a logger's MN and PW (``broker.registry`` supplies one)."""

    def lookup(self, mn: str) -> str | None:
        """The device's HJ 212 password, or None if the MN is not a registered device."""


class StaticDevicePasswords:
    """A fixed MN -> PW table (tests, commissioning)."""

    def __init__(self, passwords: dict[str, str], sites: dict[str, str] | None = None) -> None:
        self._passwords = dict(passwords)
        self._sites = dict(sites or {})

    def lookup(self, mn: str) -> str | None:
        """The password of ``mn`` or None."""
        return self._passwords.get(mn)

    def site(self, mn: str) -> str | None:
        """The site of ``mn`` or None."""
        return self._sites.get(mn)


@dataclass
class Hj212Counters:
    """Gateway-wide counters; ``snapshot()`` gives a flat dict for logs and metrics."""

    bytes_in: int = 0
    frames: int = 0
    packets: int = 0
    published: int = 0
    replies: int = 0
    fields_dropped: int = 0
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, int]:
        """Every counter by name (``rejected.bad_crc``, ``commands.2011``, ...)."""
        flat = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        flat["rejected"] = sum(self.rejected.values())
        flat.update({f"rejected.{k}": v for k, v in sorted(self.rejected.items())})
        flat.update({f"commands.{k}": v for k, v in sorted(self.commands.items())})
        return flat


@dataclass(frozen=True, slots=True)
class Publication:
    """A message to publish on MQTT."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What a session accepts."""

    accept_unknown_devices: bool = False
    max_data_length: int = MAX_DATA_LENGTH
    split_timeout_s: float = 120.0
    tz: tzinfo = CHINA_TZ


@dataclass
class SessionOutput:
    """What a chunk of received bytes produced, in the order to act on it."""

    publications: list[Publication] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    rejections: list[Hj212Rejection] = field(default_factory=list)


class Hj212Session:
    """One logger connection: frames, auth, split reassembly, telemetry and replies. No I/O."""

    def __init__(self, policy: SessionPolicy, counters: Hj212Counters, passwords: DevicePasswords | None = None,
                 sites: Callable[[str], str | None] | None = None) -> None:
        self._policy = policy
        self._counters = counters
        self._passwords = passwords
        self._sites = sites
        self._reader = Hj212FrameReader(policy.max_data_length)
        self._assembler = SplitPacketAssembler(policy.split_timeout_s)
        self._verified: dict[str, str] = {}
        self.devices: set[str] = set()
        """MNs that sent an accepted packet on this connection."""

    def receive(self, data: bytes, now: float) -> SessionOutput:
        """Process received bytes; ``now`` is a monotonic clock reading (split timeouts)."""
        out = SessionOutput()
        self._counters.bytes_in += len(data)
        for result in self._reader.feed(data):
            if isinstance(result, Hj212Rejection):
                self._reject(out, result)
            else:
                self._frame(out, result, now)
        for dropped in self._assembler.expire(now):
            self._reject(out, dropped)
        return out

    def expire(self, now: float) -> SessionOutput:
        """Abandon split sequences that timed out (call periodically on idle connections)."""
        out = SessionOutput()
        for dropped in self._assembler.expire(now):
            self._reject(out, dropped)
        return out

    def close(self) -> SessionOutput:
        """The connection ended: split sequences still open are refused, bytes left over noted."""
        out = SessionOutput()
        for dropped in self._assembler.abandon_all("connection closed"):
            self._reject(out, dropped)
        if self._reader.buffered:
            self._reject(out, Hj212Rejection(Hj212Reject.BAD_LENGTH,
                                             f"connection closed inside a frame ({self._reader.buffered} bytes)"))
        return out

    def _reject(self, out: SessionOutput, rejection: Hj212Rejection) -> None:
        self._counters.rejected[rejection.reason.value] += 1
        out.rejections.append(rejection)

    def _frame(self, out: SessionOutput, frame: Hj212Frame, now: float) -> None:
        self._counters.frames += 1
        try:
            packet = parse_packet(frame.segment)
        except Hj212Error as exc:
            self._reject(out, Hj212Rejection(exc.reason, exc.detail, frame.raw))
            return
        refusal = self._authenticate(packet)
        if refusal is not None:
            reason, code = refusal
            self._reject(out, Hj212Rejection(reason, f"MN {packet.mn}: {reason.value}", frame.raw,
                                             packet.mn, packet.qn, packet.cn))
            if packet.ack_requested:
                out.replies.append(request_reply(packet, code))
            return
        self._counters.commands[packet.cn] += 1
        cn = packet.cn
        if cn in REPLY_COMMANDS:
            self._accepted(packet)
            return
        if cn in NOTIFY_COMMANDS:
            self._accepted(packet)
            out.replies.append(notify_reply(packet))
            return
        if cn not in DATA_COMMANDS and cn not in OTHER_UPLOADS:
            self._reject(out, Hj212Rejection(Hj212Reject.UNKNOWN_COMMAND, f"CN {cn} is not an upload this gateway "
                                             "accepts", frame.raw, packet.mn, packet.qn, cn))
            if packet.ack_requested:
                out.replies.append(request_reply(packet, QnRtn.CN_ERROR))
            return
        if cn in DATA_COMMANDS:
            whole: Hj212Packet | None = packet
            if packet.is_split:
                try:
                    whole, abandoned = self._assembler.add(packet, now)
                except Hj212Error as exc:
                    self._reject(out, Hj212Rejection(exc.reason, exc.detail, frame.raw, packet.mn, packet.qn, cn))
                    return
                for dropped in abandoned:
                    self._reject(out, dropped)
            if whole is not None and not self._publish(out, whole, frame.raw):
                return
        self._accepted(packet)
        if packet.ack_requested:
            # The data reply follows the publications of this chunk (the adapter publishes first).
            out.replies.append(data_reply(packet))

    def _accepted(self, packet: Hj212Packet) -> None:
        self._counters.packets += 1
        self.devices.add(packet.mn)

    def _publish(self, out: SessionOutput, packet: Hj212Packet, raw: bytes) -> bool:
        site = self._sites(packet.mn) if self._sites is not None else None
        try:
            mapping = packet_to_telemetry(packet, self._policy.tz, site)
        except Hj212Error as exc:
            self._reject(out, Hj212Rejection(exc.reason, exc.detail, raw, packet.mn, packet.qn, packet.cn))
            return False
        self._counters.fields_dropped += mapping.dropped_fields
        topic = device_topic(Kind.EMISSION, packet.mn, Channel.TELEMETRY)
        for message in mapping.messages:
            out.publications.append(Publication(topic, encode(message)))
        return True

    def _authenticate(self, packet: Hj212Packet) -> tuple[Hj212Reject, QnRtn] | None:
        if self._verified.get(packet.mn) == packet.pw:
            return None
        expected = self._passwords.lookup(packet.mn) if self._passwords is not None else None
        if expected is None:
            if not self._policy.accept_unknown_devices:
                return Hj212Reject.UNKNOWN_DEVICE, QnRtn.MN_ERROR
        elif not hmac.compare_digest(expected.encode(), packet.pw.encode()):
            return Hj212Reject.BAD_PASSWORD, QnRtn.PW_ERROR
        self._verified[packet.mn] = packet.pw
        return None


# ---------------------------------------------------------------------------- dead letters

_CONTRACT_REASON: Final = {
    Hj212Reject.OVERSIZED: RejectReason.TOO_LARGE,
    Hj212Reject.NOT_UTF8: RejectReason.NOT_UTF8,
    Hj212Reject.UNKNOWN_DEVICE: RejectReason.UNKNOWN_DEVICE,
    Hj212Reject.BAD_PASSWORD: RejectReason.UNKNOWN_DEVICE,
    Hj212Reject.UNSUPPORTED_VERSION: RejectReason.UNSUPPORTED_VERSION,
}


_PW_RE: Final = re.compile(rb"(?<![A-Za-z])PW=[^;,&]*")


def dead_letter_for(rejection: Hj212Rejection, peer: str, now: datetime | None = None) -> DeadLetter:
    """The contract's dead-letter record for a refused frame (detail starts with the HJ 212 reason).

    The frame's ``PW=`` value is masked: dead letters are readable by operators, passwords are not.
    """
    topic = (device_topic(Kind.EMISSION, rejection.mn, Channel.TELEMETRY) if rejection.mn
             else f"hj212://{peer}")
    raw = _PW_RE.sub(b"PW=***", rejection.raw)
    return make_dead_letter(STAGE, topic, raw, _CONTRACT_REASON.get(rejection.reason, RejectReason.SCHEMA),
                            f"hj212 {rejection.reason.value}: {rejection.detail}", now)


# ---------------------------------------------------------------------------- TCP adapter

class PublishFn(Protocol):
    """Publishes one MQTT message (``MqttClient.publish`` fits); awaits only for backpressure."""

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> Awaitable[None]:
        """Publish ``payload`` on ``topic``."""

DeadLetterHook = Callable[[Hj212Rejection, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Socket-side limits of the TCP server."""

    idle_timeout_s: float = 600.0
    """Close a connection silent for this long (loggers send at least every few minutes)."""
    max_connections: int = 20000
    read_size: int = 65536
    publish_status: bool = True
    """Publish retained ``status`` online/offline per MN as loggers come and go."""


class _RejectionLog:
    """Logs rejections without letting a flood of bad frames flood the log."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def note(self, rejection: Hj212Rejection, peer: str) -> None:
        key = rejection.reason.value
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self._interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        log.warning("hj212 %s rejected from %s (MN %s): %s%s", key, peer, rejection.mn or "-", rejection.detail,
                    f" (+{more} more since last report)" if more else "")


class Hj212Gateway:
    """Asyncio TCP server for many data loggers at once, publishing through ``publish``."""

    def __init__(self, publish: PublishFn, *, policy: SessionPolicy | None = None, limits: ServerLimits | None = None,
                 passwords: DevicePasswords | None = None, sites: Callable[[str], str | None] | None = None,
                 dead_letter: DeadLetterHook | None = None) -> None:
        self._publish = publish
        self.policy = policy or SessionPolicy()
        self.limits = limits or ServerLimits()
        self._passwords = passwords
        self._sites = sites
        self._dead_letter = dead_letter
        self.counters = Hj212Counters()
        self._server: asyncio.Server | None = None
        self._owner: dict[str, Hj212Session] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._rejection_log = _RejectionLog()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, host, port, backlog=4096, limit=self.limits.read_size)
        sockname = self._server.sockets[0].getsockname()
        log.info("hj212 gateway listening on %s:%s", sockname[0], sockname[1])
        return str(sockname[0]), int(sockname[1])

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and close every logger connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        counters = self.counters
        if counters.connections_open >= self.limits.max_connections:
            counters.connections_refused += 1
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        counters.connections_open += 1
        counters.connections_total += 1
        session = Hj212Session(self.policy, counters, self._passwords, self._sites)
        try:
            await self._serve_connection(session, reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.debug("hj212 connection %s: %s", peer, exc)
        except Exception:  # one logger must never take the server down
            log.exception("hj212 connection %s failed", peer)
        finally:
            counters.connections_open -= 1
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            with contextlib.suppress(Exception):  # best effort on the way out (broker may be gone)
                await self._handle_rejections(session.close().rejections, peer)
            await self._went_offline(session)

    async def _serve_connection(self, session: Hj212Session, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, peer: str) -> None:
        idle = self.limits.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await reader.read(self.limits.read_size)
            except TimeoutError:
                log.info("hj212 connection %s idle for %.0f s, closing", peer, idle)
                return
            if not data:
                return
            before = set(session.devices) if self.limits.publish_status else None
            out = session.receive(data, time.monotonic())
            await self._handle_rejections(out.rejections, peer)
            if before is not None and len(session.devices) != len(before):
                await self._came_online(session, session.devices - before)
            for publication in out.publications:
                await self._publish(publication.topic, publication.payload)
            self.counters.published += len(out.publications)
            if out.replies:
                writer.write(b"".join(out.replies))
                self.counters.replies += len(out.replies)
                await writer.drain()

    async def _handle_rejections(self, rejections: list[Hj212Rejection], peer: str) -> None:
        for rejection in rejections:
            self._rejection_log.note(rejection, peer)
            if self._dead_letter is not None:
                await self._dead_letter(rejection, peer)

    async def _came_online(self, session: Hj212Session, mns: Iterable[str]) -> None:
        for mn in mns:
            self._owner[mn] = session
            status = DeviceStatus(ts=utcnow(), online=True, agent=STAGE)
            await self._publish(device_topic(Kind.EMISSION, mn, Channel.STATUS), encode(status), retain=True)

    async def _went_offline(self, session: Hj212Session) -> None:
        if not self.limits.publish_status:
            return
        for mn in session.devices:
            if self._owner.get(mn) is not session:
                continue  # the logger already reconnected on another connection
            del self._owner[mn]
            status = DeviceStatus(ts=utcnow(), online=False, reason="connection closed", agent=STAGE)
            try:
                await self._publish(device_topic(Kind.EMISSION, mn, Channel.STATUS), encode(status), retain=True)
            except Exception:  # shutting down or broker gone; status is best effort
                log.debug("hj212: could not publish offline status of %s", mn)


def dead_letter_publisher(publish: PublishFn) -> DeadLetterHook:
    """A dead-letter hook that publishes contract ``DeadLetter`` records on the stage's topic."""
    topic = dead_letter_topic(STAGE)

    async def hook(rejection: Hj212Rejection, peer: str) -> None:
        await publish(topic, encode(dead_letter_for(rejection, peer)))

    return hook
