"""``GatewayServer``: the asyncio TCP server every session-based gateway runs (JT/T 808, JT/T 809).

Devices connect over TCP; each connection gets a pure session from the gateway's platform
(``new_session(peer)``: ``feed(bytes, now)``, ``tick(now)``, ``close(reason)``, ``authenticated``,
``buffered``, ``peer``). Publications and rejections go through one bounded queue to the publish
sink; a reply that answers publications is queued behind them and written only after the sink took
them (for the gateways, after the outbox append), so a device never holds an answer for a message
a crash can still lose; if the sink raised on one of them the answer is withheld (counted in
``replies_withheld``) and the device retransmits. Other replies go straight back on the socket,
unless an earlier answer of the same connection is still queued (replies keep their order).
When the queue is full the server stops reading from devices (TCP backpressure) instead of
growing without bound. The server applies the caps every gateway needs: connections in total,
per address and unauthenticated per address (``ConnectionLimiter``), an authentication deadline
counted from the connection's start, an idle timeout, a write-buffer bound; refusals are counted,
logged (``RejectionLog``) and dead-lettered in aggregate (``DeadLetterAggregator``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from broker.contracts import DeadLetter, utcnow
from edge.runtime.connections import ConnectionCaps, ConnectionLimiter
from edge.runtime.counters import GatewayCounters
from edge.runtime.output import Publication, Rejection, SessionOutput
from edge.runtime.rejections import DeadLetterAggregator, RejectionLog

log = logging.getLogger(__name__)

CONNECTION_LIMIT: Final = "connection_limit"
"""Rejection reason of a connection refused by a cap (dead-lettered in aggregate)."""
AUTH_TIMEOUT: Final = "auth_timeout"
"""Rejection reason (and ``closed.`` key) of a connection that did not authenticate in time."""
IDLE: Final = "idle"
"""``closed.`` key of an authenticated connection that went silent."""


class PublishSink(Protocol):
    """Where telemetry, events and statuses go (``MqttClient.publish`` fits); awaits only for backpressure."""

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> Awaitable[None]:
        """Publish ``payload`` on ``topic`` (``retain`` for device statuses)."""
        ...


DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]
"""Where refused bytes go, as contract dead letters."""
DeadLetterOf = Callable[[Rejection, datetime], DeadLetter]
"""The protocol's dead-letter record of a rejection."""


class ServerSession(Protocol):
    """One connection's pure state machine, as the server drives it."""

    peer: str

    @property
    def authenticated(self) -> bool:
        """Whether the device proved who it is on this connection."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes the session holds (unfinished frames and messages)."""
        ...

    def feed(self, data: bytes, now: float) -> SessionOutput:
        """Handle received bytes (``now``: monotonic seconds)."""
        ...

    def tick(self, now: float) -> SessionOutput:
        """Housekeeping (expire unfinished messages)."""
        ...

    def close(self, reason: str) -> SessionOutput:
        """The connection is gone (offline statuses)."""
        ...


class ServerPlatform(Protocol):
    """What the server needs from a protocol's platform (what all sessions share)."""

    @property
    def counters(self) -> GatewayCounters:
        """The gateway's counters (the server counts connections, closes and refusals in them)."""
        ...

    def new_session(self, peer: str) -> ServerSession:
        """A session for a new connection (``peer`` is ``host:port``)."""
        ...


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds of one gateway server."""

    idle_timeout_s: float = 180.0
    """Close an authenticated connection that sent nothing for this long (terminals heartbeat every ~30-60 s)."""
    auth_timeout_s: float = 30.0
    """Close a connection that has not authenticated this long after connecting (or after its logout)."""
    max_connections: int = 20_000
    """Connections at once; more are refused (``connection_limit``)."""
    max_per_address: int = 1_000
    """Connections at once from one source address (terminals behind carrier NAT share one)."""
    max_preauth_per_address: int = 64
    """Unauthenticated connections at once from one source address."""
    queue_limit: int = 10_000
    """Publications waiting for MQTT before the gateway stops reading from devices."""
    max_write_buffer: int = 256 * 1024
    """Replies buffered for one device beyond which it is dropped (reading pauses long before)."""
    dead_letter_burst: int = 5
    """Dead letters per source address and reason per ``dead_letter_window_s``; the rest become one summary."""
    dead_letter_window_s: float = 10.0
    sweep_interval_s: float = 5.0
    backlog: int = 4096
    read_size: int = 16 * 1024
    """Bytes read from one device at a time (~300 JT/T 808 location frames)."""

    @property
    def caps(self) -> ConnectionCaps:
        """The connection caps among these limits."""
        return ConnectionCaps(self.max_connections, self.max_per_address, self.max_preauth_per_address)


class _Connection(asyncio.BufferedProtocol):
    """Thin socket adapter: bytes to the session, replies to the socket, the rest to the server.

    Reads go into one buffer shared by all connections (``get_buffer`` and ``buffer_updated`` run
    back to back in the loop thread), so a read is at most ``read_size`` bytes: that bounds the
    work, and the publications, one read can add before backpressure applies.
    """

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: ServerSession | None = None
        self.host = ""
        self.opened = self.last_rx = 0.0
        self.preauth = True
        """Counted among its address's unauthenticated connections."""
        self.write_paused = False
        self.close_reason = "connection closed"
        self.replies_queued = 0
        """Replies of this connection waiting in the server's queue behind what they answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self.server.admit(self, name):
            transport.abort()  # refused before anything is allocated for it
            return
        self.session = self.server.platform.new_session(name)
        self.opened = self.last_rx = self.server.clock()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Hand received bytes to the session."""
        if self.session is None or self.transport is None or self.transport.is_closing():
            return
        self.last_rx = now = self.server.clock()
        try:
            out = self.session.feed(data, now)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("%s: session of %s failed; closing it", self.server.name, self.session.peer)
            self.transport.close()
            return
        if self.preauth and self.session.authenticated:
            self.server.authenticated(self)
        self.server.handle_output(self, out)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        # The device is not reading its replies: stop reading its requests until it does.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and self not in self.server.paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.paused.discard(self)
        if self.session is not None:
            self.server.forget(self)
            self.server.enqueue(self.session.close(self.close_reason))


@dataclass(slots=True)
class _Reply:
    """Answer bytes written after the ``covers`` queue items just before it were handed to the sinks."""

    conn: _Connection
    data: bytes
    covers: int
    close: bool


class GatewayServer:
    """The TCP server: accepts devices, runs their sessions, feeds the publish sink."""

    def __init__(self, platform: ServerPlatform, publish: PublishSink, *, name: str, dead_letter_of: DeadLetterOf,
                 dead_letter: DeadLetterSink | None = None, limits: GatewayLimits = GatewayLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.platform = platform
        self.name = name
        self.limits = limits
        self.clock = clock
        self.connections: set[_Connection] = set()
        self.paused: set[_Connection] = set()
        self.read_buffer = memoryview(bytearray(limits.read_size))
        self.limiter = ConnectionLimiter(limits.caps)
        self._publish = publish
        self._dead_letter = dead_letter
        self._dead_letter_of = dead_letter_of
        self._queue: deque[Publication | Rejection | _Reply] = deque()
        self._handled = 0
        """Queue items handed to the sinks (or failed) so far."""
        self._last_failure = -1
        """``_handled`` index of the newest item the sinks raised on."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log_rejection = RejectionLog(name)
        self._dead_letters = DeadLetterAggregator(limits.dead_letter_burst, limits.dead_letter_window_s)

    @property
    def counters(self) -> GatewayCounters:
        """The gateway's counters (the platform's, shared with its sessions)."""
        return self.platform.counters

    def stats(self) -> dict[str, int]:
        """The counters flattened (``GatewayCounters.snapshot``) plus the server's gauges."""
        snap = self.platform.counters.snapshot()
        snap["connections_preauth"] = self.limiter.preauth_total
        snap["queued"] = len(self._queue)
        snap["buffered_bytes"] = sum(c.session.buffered for c in self.connections if c.session is not None)
        return snap

    def admit(self, conn: _Connection, peer: str) -> bool:
        """Count a new connection in, or refuse it (counted, dead-lettered in aggregate) past a cap."""
        limit = self.limiter.admit(conn.host)
        counters = self.platform.counters
        if limit is not None:
            counters.connections_refused += 1
            counters.refused[limit] += 1
            counters.rejected[CONNECTION_LIMIT] += 1
            why = self.limiter.describe(limit, conn.host)
            self.enqueue(SessionOutput(rejections=[Rejection(CONNECTION_LIMIT, why, peer, None, None, b"")]))
            return False
        self.connections.add(conn)
        counters.connections_open += 1
        counters.connections_total += 1
        return True

    def authenticated(self, conn: _Connection) -> None:
        """The connection's device authenticated: it no longer counts as unauthenticated."""
        conn.preauth = False
        self.limiter.authenticated(conn.host)

    def forget(self, conn: _Connection) -> None:
        """The connection closed: release its place under the caps."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.platform.counters.connections_open -= 1
            self.limiter.closed(conn.host, not conn.preauth)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=self.limits.backlog)
        self._tasks = [asyncio.create_task(self._drain(), name=f"{self.name}-publish"),
                       asyncio.create_task(self._sweep(), name=f"{self.name}-sweep")]
        bound = self._server.sockets[0].getsockname()
        log.info("%s: listening on %s:%d", self.name, bound[0], bound[1])
        return bound[0], bound[1]

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, close connections, publish what is queued (bounded), stop tasks."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.close_reason == "connection closed":
                conn.close_reason = "gateway stopped"
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # connection_lost runs soon after close: let it queue the offline statuses
        self._summaries(self.clock(), all_=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self.flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def flush(self) -> None:
        """Wait until everything queued has been handed to the sinks."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def handle_output(self, conn: _Connection, out: SessionOutput) -> None:
        """Send replies, queue publications and rejections, apply backpressure and closes."""
        transport = conn.transport
        assert transport is not None
        reply = b"".join(out.replies) if out.replies else b""
        deferred = bool(reply) and (bool(out.publications) or conn.replies_queued > 0)
        if out.publications or out.rejections:
            before = len(self._queue)
            full = self.enqueue(out)
            if deferred:
                self._queue.append(_Reply(conn, reply, len(self._queue) - before, out.close))
                conn.replies_queued += 1
            if full and conn not in self.paused:
                transport.pause_reading()
                self.paused.add(conn)
        elif deferred:
            self._queue.append(_Reply(conn, reply, 0, out.close))
            conn.replies_queued += 1
            self._idle.clear()
            self._wake.set()
        if deferred:
            return
        if reply:
            transport.write(reply)
        if out.close or transport.get_write_buffer_size() > self.limits.max_write_buffer:
            transport.close()

    def enqueue(self, out: SessionOutput) -> bool:
        """Queue a session's publications and rejections; True when the queue is full."""
        if out.publications or out.rejections:
            self._queue.extend(out.publications)
            now = self.clock()
            for rej in out.rejections:
                self._log_rejection.note(rej.reason, rej.peer, rej.detail, device=rej.device_id,
                                         what=f"msg 0x{rej.msg_id:04x}" if rej.msg_id is not None else None)
                if self._dead_letter is None:
                    continue
                # A flood of refusals from one address must not become a flood of dead letters:
                # the first few per address and reason go out, the rest as one summary per window.
                host = rej.peer.rpartition(":")[0] or rej.peer
                if self._dead_letters.admit(host, rej.reason, now):
                    self._queue.append(rej)
                else:
                    self.platform.counters.dead_letters_suppressed += 1
            self._idle.clear()
            self._wake.set()
        return len(self._queue) >= self.limits.queue_limit

    def housekeeping(self, now: float) -> SessionOutput | None:
        """Periodic work of the protocol beyond the sessions' ``tick`` (subclasses: command time-outs)."""
        return None

    def _summaries(self, now: float, *, all_: bool = False) -> None:
        if self._dead_letter is None:
            return
        rejections = [Rejection(s.reason, f"{s.suppressed} more {s.reason} refusals from {s.source} in the last "
                                f"{s.seconds:.0f} s (each counted in rejected.{s.reason}; dead letters aggregated)",
                                s.source, None, None, b"")
                      for s in self._dead_letters.due(now, all_=all_)]
        if rejections:
            self._queue.extend(rejections)
            self._idle.clear()
            self._wake.set()

    async def _drain(self) -> None:
        queue, low_water = self._queue, self.limits.queue_limit // 2
        counters = self.platform.counters
        handled = 0
        while True:
            if not queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            item = queue.popleft()
            if isinstance(item, _Reply):
                self._answer(item)
                continue
            try:
                if isinstance(item, Publication):
                    if item.retain:
                        await self._publish(item.topic, item.payload, retain=True)
                    else:
                        await self._publish(item.topic, item.payload)
                elif self._dead_letter is not None:
                    await self._dead_letter(self._dead_letter_of(item, utcnow()))
                counters.published += 1
            except Exception as exc:  # the broker's trouble must not stop the gateway
                self._last_failure = self._handled
                counters.publish_failures += 1
                if counters.publish_failures % 1000 == 1:
                    log.warning("%s: publish failed (%d so far): %s", self.name, counters.publish_failures, exc)
            handled += 1
            self._handled += 1
            if self.paused and len(queue) <= low_water:
                for conn in list(self.paused):
                    if conn.transport is not None and not conn.transport.is_closing() and not conn.write_paused:
                        conn.transport.resume_reading()
                self.paused.clear()
            if handled % 512 == 0:
                await asyncio.sleep(0)  # let devices' bytes in between long runs

    def _answer(self, item: _Reply) -> None:
        """Write a queued reply, unless the sinks refused one of the items it answers."""
        conn, counters = item.conn, self.platform.counters
        conn.replies_queued -= 1
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        if self._last_failure >= self._handled - item.covers:
            counters.replies_withheld += 1  # not stored: no answer, so the device sends it again
        else:
            transport.write(item.data)
        if item.close or transport.get_write_buffer_size() > self.limits.max_write_buffer:
            transport.close()

    async def _sweep(self) -> None:
        last_log = self.clock()
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            now = self.clock()
            self._sweep_connections(now)
            extra = self.housekeeping(now)
            if extra is not None:
                self.enqueue(extra)
            self._summaries(now)
            if now - last_log >= 60.0:
                last_log = now
                log.info("%s: %s", self.name, self.stats())

    def _sweep_connections(self, now: float) -> None:
        counters, limits = self.platform.counters, self.limits
        for conn in list(self.connections):
            if conn.session is None or conn.transport is None or conn.transport.is_closing():
                continue
            if not conn.session.authenticated and now - conn.opened > limits.auth_timeout_s:
                # Measured from the connection's start, not its last byte: one byte a second
                # must not keep an unauthenticated connection open.
                counters.closed[AUTH_TIMEOUT] += 1
                counters.rejected[AUTH_TIMEOUT] += 1
                conn.close_reason = "authentication timeout"
                self.enqueue(SessionOutput(rejections=[Rejection(
                    AUTH_TIMEOUT, f"not authenticated {now - conn.opened:.0f} s after connecting "
                    f"(limit {limits.auth_timeout_s:.0f} s)", conn.session.peer, None, None, b"")]))
                conn.transport.abort()
                continue
            if now - conn.last_rx > limits.idle_timeout_s:
                counters.closed[IDLE] += 1
                conn.close_reason = "idle timeout"
                conn.transport.close()
                continue
            out = conn.session.tick(now)
            if out.rejections:
                self.handle_output(conn, out)
