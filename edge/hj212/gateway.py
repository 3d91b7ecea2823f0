"""HJ 212 gateway: data loggers over TCP in, contract telemetry on MQTT out, commands back down.

Pure cores: ``packet_to_telemetry`` (``mapping``), ``Hj212Session`` (``session``: one connection's
state machine), the abuse guards (``guard``) and the downlink queue (``downlink``). This module
is the thin adapter: ``Hj212Gateway`` (asyncio TCP server) publishing through any
``publish(topic, payload)`` coroutine (``edge.runtime.uplink``: ``MqttClient.publish`` or the
store-and-forward sink). The connection caps, the rejection log, the dead-letter aggregation and
the counters are the gateway runtime's (``edge.runtime``), as for every gateway.

HJ 212 keeps its own accept loop (one coroutine per connection over asyncio streams) instead of
``edge.runtime.server.GatewayServer``: a logger's 9014 reply must be written only after its data
was handed to the sink (with ``--data-dir``: committed to the outbox), and a refused password is
answered after a delay; both are awaits inside the connection's loop, which the queued server
(replies at once, publications later) does not have. The CLI (``vigil edge hj212``) is
``edge.hj212.cli``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from broker.contracts import (
    Channel,
    DeadLetter,
    DeviceCommand,
    DeviceStatus,
    Kind,
    RejectReason,
    device_topic,
    encode,
    make_dead_letter,
    utcnow,
)
from edge.errors import EdgeError
from edge.hj212.codec import Hj212Reject, Hj212Rejection
from edge.hj212.downlink import AuditLog, AuditRecord, DownlinkTracker
from edge.hj212.guard import AuthThrottle, GuardPolicy, dead_letter_source, summary_rejection
from edge.hj212.mapping import CHINA_TZ, TelemetryMapping, packet_to_telemetry, parse_local_time
from edge.hj212.session import (
    DATA_COMMANDS,
    NOTIFY_COMMANDS,
    OTHER_UPLOADS,
    REPLY_COMMANDS,
    DevicePasswords,
    Hj212Counters,
    Hj212Session,
    SessionOutput,
    SessionPolicy,
    StaticDevicePasswords,
)
from edge.runtime.connections import ConnectionCaps, ConnectionLimiter
from edge.runtime.output import Publication
from edge.runtime.rejections import DeadLetterAggregator, RejectionLog
from edge.runtime.server import PublishSink
from edge.runtime.uplink import dead_letter_sink

__all__ = [
    "CHINA_TZ", "DATA_COMMANDS", "NOTIFY_COMMANDS", "OTHER_UPLOADS", "REPLY_COMMANDS", "STAGE", "DevicePasswords",
    "GuardPolicy", "Hj212Counters", "Hj212Gateway", "Hj212Session", "Publication", "PublishFn", "ServerLimits",
    "SessionOutput", "SessionPolicy", "StaticDevicePasswords", "TelemetryMapping", "dead_letter_for",
    "dead_letter_publisher", "packet_to_telemetry", "parse_local_time",
]

log = logging.getLogger(__name__)

STAGE: Final = "edge-hj212"


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

PublishFn = PublishSink
"""Publishes one MQTT message (``MqttClient.publish`` fits); awaits only for backpressure."""
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


class _Closing(EdgeError):
    """The gateway closes this connection; ``args[0]`` says why (counted in ``closed``)."""


@dataclass(eq=False)
class _Connection:
    session: Hj212Session
    writer: asyncio.StreamWriter
    peer: str
    address: str
    opened: float
    partial_since: float | None = None
    counted_authenticated: bool = False


class Hj212Gateway:
    """Asyncio TCP server for many data loggers at once, publishing through ``publish``."""

    def __init__(self, publish: PublishFn, *, policy: SessionPolicy | None = None, limits: ServerLimits | None = None,
                 passwords: DevicePasswords | None = None, sites: Callable[[str], str | None] | None = None,
                 dead_letter: DeadLetterHook | None = None, guard: GuardPolicy | None = None,
                 downlink: DownlinkTracker | None = None, audit: AuditLog | None = None) -> None:
        self._publish = publish
        self.policy = policy or SessionPolicy()
        self.limits = limits or ServerLimits()
        self.guard = guard or GuardPolicy()
        self._passwords = passwords
        self._sites = sites
        self._dead_letter = dead_letter
        self.downlink = downlink
        self._audit = audit
        self.counters = Hj212Counters()
        self.limiter = ConnectionLimiter(ConnectionCaps(self.limits.max_connections,
                                                        self.guard.max_connections_per_address,
                                                        self.guard.max_preauth_per_address))
        self._server: asyncio.Server | None = None
        self._owner: dict[str, _Connection] = {}
        self._live: set[_Connection] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        # One full log line per reason per 10 s: a flood of bad frames must not flood the log.
        self._rejection_log = RejectionLog("hj212", burst=1, window_s=10.0, logger=log)
        self._throttle = AuthThrottle(self.guard)
        self._letters = DeadLetterAggregator(self.guard.dead_letters_per_interval, self.guard.dead_letter_interval_s,
                                             self.guard.max_tracked)
        self._downlink_lock = asyncio.Lock()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, host, port, backlog=4096, limit=self.limits.read_size)
        sockname = self._server.sockets[0].getsockname()
        self._background = [asyncio.create_task(self._flush_dead_letters(), name="hj212-dead-letters")]
        if self.downlink is not None:
            self._background.append(asyncio.create_task(self._downlink_loop(), name="hj212-downlink"))
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
        for task in [*self._background, *self._connections]:
            task.cancel()
        for task in [*self._background, *self._connections]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # best effort on the way out (broker may be gone)
            await self._send_summaries(force=True)
            await self._write_audit()
        if self._server is not None:
            await self._server.wait_closed()

    def request(self, mn: str, command: DeviceCommand) -> bool:
        """A platform command for the logger ``mn`` (from ``vigil/v1/emission/{MN}/command``); audited.

        Only registered loggers are addressed (any MN with ``accept_unknown_devices``).
        """
        if self.downlink is None:
            return False
        if not self.policy.accept_unknown_devices and (self._passwords is None or self._passwords.lookup(mn) is None):
            self.downlink.enqueue_invalid(mn, f"platform command {command.command_id or '-'}: MN is not a registered "
                                          "logger")
            return False
        return self.downlink.request(mn, command, time.monotonic())

    def buffered_bytes(self) -> int:
        """Bytes of incomplete frames held over all connections (bounded per connection by one frame)."""
        return sum(conn.session.buffered for conn in self._live)

    def stats(self) -> dict[str, int]:
        """The counters flattened (``GatewayCounters.snapshot``) plus the server's gauges."""
        snap = self.counters.snapshot()
        snap["connections_preauth"] = self.limiter.preauth_total
        snap["buffered_bytes"] = self.buffered_bytes()
        return snap

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        address = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        counters = self.counters
        why = self.limiter.admit(address)
        if why is not None:
            counters.connections_refused += 1
            counters.refused[why] += 1
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        counters.connections_open += 1
        counters.connections_total += 1
        session = Hj212Session(self.policy, counters, self._passwords, self._sites, self.downlink)
        conn = _Connection(session, writer, peer, address, time.monotonic())
        self._live.add(conn)
        try:
            await self._serve_connection(conn, reader)
        except _Closing as closing:
            counters.closed[str(closing.args[0])] += 1
            log.debug("hj212 connection %s closed: %s", peer, closing.args[0])  # counted; abuse must not flood logs
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.debug("hj212 connection %s: %s", peer, exc)
        except Exception:  # one logger must never take the server down
            log.exception("hj212 connection %s failed", peer)
        finally:
            counters.connections_open -= 1
            self._live.discard(conn)
            self.limiter.closed(address, conn.counted_authenticated)
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            with contextlib.suppress(Exception):  # best effort on the way out (broker may be gone)
                await self._handle_rejections(session.close().rejections, conn)
            await self._went_offline(conn)

    def _read_timeout(self, conn: _Connection, now: float) -> tuple[float, str]:
        """How long the next read may wait, and what it means when it runs out."""
        guard = self.guard
        timeout, why = self.limits.idle_timeout_s, "idle"
        if not conn.session.authenticated and conn.opened + guard.preauth_timeout_s - now < timeout:
            timeout, why = conn.opened + guard.preauth_timeout_s - now, "auth_timeout"
        if conn.partial_since is not None and conn.partial_since + guard.frame_timeout_s - now < timeout:
            timeout, why = conn.partial_since + guard.frame_timeout_s - now, "frame_timeout"
        return max(0.0, timeout), why

    async def _serve_connection(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        session = conn.session
        while True:
            timeout, why = self._read_timeout(conn, time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(self.limits.read_size)
            except TimeoutError:
                raise _Closing(why) from None
            if not data:
                return
            now = time.monotonic()
            before = set(session.devices)
            completed = session.completed
            out = session.receive(data, now)
            # A frame still arriving starts the frame timer; a frame completed since restarts it (a busy
            # connection whose reads always end mid-frame is making progress, not trickling).
            if not session.buffered:
                conn.partial_since = None
            elif conn.partial_since is None or session.completed != completed:
                conn.partial_since = now
            if session.authenticated and not conn.counted_authenticated:
                conn.counted_authenticated = True
                self.limiter.authenticated(conn.address)
            await self._handle_rejections(out.rejections, conn)
            if len(session.devices) != len(before):
                await self._came_online(conn, session.devices - before)
            for publication in out.publications:
                await self._publish(publication.topic, publication.payload)
            self.counters.published += len(out.publications)
            if out.auth_failures:
                delay = max(self._throttle.failed(mn, conn.address, now) for mn in out.auth_failures)
                self.counters.auth_delayed += 1
                # Answer late: one connection (or many against one MN) cannot guess at wire speed.
                await asyncio.sleep(delay)
            if out.replies:
                conn.writer.write(b"".join(out.replies))
                self.counters.replies += len(out.replies)
                await self._drain(conn)
            if session.closing is not None:
                raise _Closing(session.closing)
            if self.downlink is not None and self.downlink.has_work:
                await self._pump_downlink()

    async def _drain(self, conn: _Connection) -> None:
        try:
            async with asyncio.timeout(self.guard.write_timeout_s):
                await conn.writer.drain()
        except TimeoutError:
            raise _Closing("write_timeout") from None

    async def _handle_rejections(self, rejections: list[Hj212Rejection], conn: _Connection) -> None:
        authenticated = conn.session.authenticated
        # Refusals on a connection whose logger proved its PW are keyed by that MN, all others by address.
        source = dead_letter_source(min(conn.session.devices) if authenticated and conn.session.devices else None,
                                    conn.address)
        burst = self.guard.dead_letters_per_interval_device if authenticated else None
        now = time.monotonic()
        for rejection in rejections:
            self._rejection_log.note(rejection.reason.value, conn.peer, rejection.detail, device=rejection.mn)
            if self._dead_letter is None:
                continue
            if self._letters.admit(source, rejection.reason.value, now, burst=burst):
                await self._dead_letter(rejection, conn.peer)
            else:
                self.counters.dead_letters_suppressed += 1

    async def _flush_dead_letters(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.guard.dead_letter_interval_s / 2))
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_summaries()

    async def _send_summaries(self, force: bool = False) -> None:
        if self._dead_letter is None:
            return
        for summary in self._letters.due(time.monotonic(), all_=force):
            await self._dead_letter(summary_rejection(summary), summary.source.partition(":")[2])

    async def _came_online(self, conn: _Connection, mns: Iterable[str]) -> None:
        for mn in mns:
            self._owner[mn] = conn
            if self.limits.publish_status:
                status = DeviceStatus(ts=utcnow(), online=True, agent=STAGE)
                await self._publish(device_topic(Kind.EMISSION, mn, Channel.STATUS), encode(status), retain=True)

    async def _went_offline(self, conn: _Connection) -> None:
        for mn in conn.session.devices:
            if self._owner.get(mn) is not conn:
                continue  # the logger already reconnected on another connection
            del self._owner[mn]
            if self.downlink is not None:
                self.downlink.disconnected(mn)
            if not self.limits.publish_status:
                continue
            status = DeviceStatus(ts=utcnow(), online=False, reason="connection closed", agent=STAGE)
            try:
                await self._publish(device_topic(Kind.EMISSION, mn, Channel.STATUS), encode(status), retain=True)
            except Exception:  # shutting down or broker gone; status is best effort
                log.debug("hj212: could not publish offline status of %s", mn)

    # ------------------------------------------------------------------ downlink

    async def _downlink_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._pump_downlink()
            except (ConnectionError, OSError) as exc:
                log.debug("hj212 downlink: %s", exc)

    async def _pump_downlink(self) -> None:
        """Write the commands due now to their loggers' connections; record and publish the audit."""
        assert self.downlink is not None
        async with self._downlink_lock:
            for outgoing in self.downlink.poll(time.monotonic()):
                conn = self._owner.get(outgoing.mn)
                if conn is None or conn.writer.is_closing():
                    continue  # the retry timer re-sends it once the logger is back
                conn.writer.write(outgoing.frame)
                self.counters.downlink_sent += 1
            await self._write_audit()

    async def _write_audit(self) -> None:
        if self.downlink is None:
            return
        records = self.downlink.take_audit()
        if not records:
            return
        if self._audit is not None:
            try:
                self._audit.write(records)
            except OSError as exc:  # the events below still carry the records to the platform
                log.error("hj212: could not write the command audit file %s: %s", self._audit.path, exc)
        for record in records:
            log.info("hj212 command %s CN %s QN %s to %s: %s %s", record.event, record.cn, record.qn, record.mn,
                     record.detail, record.cp)
            await self._publish_audit(record)

    async def _publish_audit(self, record: AuditRecord) -> None:
        topic = device_topic(Kind.EMISSION, record.mn, Channel.EVENT)
        await self._publish(topic, encode(record.to_event()))


def dead_letter_publisher(publish: PublishFn) -> DeadLetterHook:
    """A dead-letter hook that publishes contract ``DeadLetter`` records on the stage's topic."""
    sink = dead_letter_sink(publish, STAGE)

    async def hook(rejection: Hj212Rejection, peer: str) -> None:
        await sink(dead_letter_for(rejection, peer))

    return hook
