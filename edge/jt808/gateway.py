"""JT/T 808 gateway: asyncio TCP server around the pure sessions, publishing to MQTT.

``vigil edge jt808 --listen HOST:PORT --mqtt URL`` runs ``main``. Terminals connect over TCP;
each connection gets a ``Jt808Session``; replies go straight back on the socket, telemetry and
events go through one bounded queue to the MQTT ``publish`` sink. When the queue is full the
gateway stops reading from terminals (TCP backpressure) instead of growing without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from broker.contracts import (
    Channel,
    DeadLetter,
    DeviceCommand,
    Kind,
    Rejected,
    RejectReason,
    dead_letter_topic,
    decode_command,
    device_topic,
    encode,
    parse_device_topic,
    utcnow,
)
from broker.credentials import add_mqtt_arguments
from edge.jt808.alarms import ALARMS_FILE, SqliteAlarmStore
from edge.jt808.codec import RejectionReason
from edge.jt808.limits import Aggregator
from edge.jt808.registrations import (
    ADMIN_COMMANDS,
    MemoryRegistrations,
    RegistrationStore,
    RegistrationStoreError,
    SqliteRegistrations,
    admin_main,
    store_path,
)
from edge.jt808.registry import RegistryTerminals
from edge.jt808.session import (
    STAGE,
    Jt808Platform,
    Jt808Session,
    Publication,
    Rejection,
    SessionOutput,
    StaticTerminalRegistry,
    TerminalRegistry,
    dead_letter_of,
)

if TYPE_CHECKING:
    from broker.mqtt import Handler, Message

log = logging.getLogger(__name__)

class PublishSink(Protocol):
    """Where telemetry, events and statuses go (``MqttClient.publish`` fits); awaits only for backpressure."""

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> Awaitable[None]:
        """Publish ``payload`` on ``topic`` (``retain`` for device statuses)."""
        ...


DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]
"""Where refused frames go, as contract dead letters."""

DEFAULT_PORT: Final = 7808
COMMAND_FILTER: Final = device_topic(Kind.VEHICLE, "+", Channel.COMMAND)
"""Platform commands to terminals (the broker lets only platform accounts publish there)."""


class RejectionLog:
    """Logs rejections with their reason, at most ``burst`` lines per reason per ``window_s``."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._seen: dict[RejectionReason, tuple[float, int]] = {}

    def __call__(self, rej: Rejection) -> None:
        """Log one rejection unless its reason already used up this window."""
        now = self._clock()
        start, count = self._seen.get(rej.reason, (now, 0))
        if now - start > self.window_s:
            if count > self.burst:
                log.warning("jt808: %d more %s rejections in the last %.0f s", count - self.burst,
                            rej.reason.value, now - start)
            start, count = now, 0
        self._seen[rej.reason] = (start, count + 1)
        if count < self.burst:
            log.warning("jt808: refused %s from %s (device %s, msg %s): %s", rej.reason.value, rej.peer,
                        rej.device_id or "-", f"0x{rej.msg_id:04x}" if rej.msg_id is not None else "-", rej.detail)


class _Connection(asyncio.BufferedProtocol):
    """Thin socket adapter: bytes to the session, replies to the socket, the rest to the gateway.

    Reads go into one buffer shared by all connections (``get_buffer`` and ``buffer_updated`` run
    back to back in the loop thread), so a read is at most ``read_size`` bytes: that bounds the
    work, and the publications, one read can add before backpressure applies.
    """

    def __init__(self, gateway: Jt808Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.session: Jt808Session | None = None
        self.host = ""
        self.opened = self.last_rx = 0.0
        self.preauth = True
        """Counted among its address's unauthenticated connections."""
        self.write_paused = False
        self.close_reason = "connection closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self.gateway.admit(self, name):
            transport.abort()  # refused before anything is allocated for it
            return
        self.session = self.gateway.platform.new_session(name)
        self.opened = self.last_rx = self.gateway.clock()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.gateway.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.gateway.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Hand received bytes to the session."""
        if self.session is None or self.transport is None or self.transport.is_closing():
            return
        self.last_rx = now = self.gateway.clock()
        try:
            out = self.session.feed(data, now)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("jt808: session of %s failed; closing it", self.session.peer)
            self.transport.close()
            return
        if self.preauth and self.session.authenticated:
            self.gateway.authenticated(self)
        self.gateway.handle_output(self, out)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        # The terminal is not reading its replies: stop reading its requests until it does.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and self not in self.gateway.paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.paused.discard(self)
        if self.session is not None:
            self.gateway.forget(self)
            self.gateway.enqueue(self.session.close(self.close_reason))


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds of one gateway."""

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
    """Publications waiting for MQTT before the gateway stops reading from terminals."""
    max_write_buffer: int = 256 * 1024
    """Replies buffered for one terminal beyond which it is dropped (reading pauses long before)."""
    dead_letter_burst: int = 5
    """Dead letters per source address and reason per ``dead_letter_window_s``; the rest become one summary."""
    dead_letter_window_s: float = 10.0
    sweep_interval_s: float = 5.0
    backlog: int = 4096
    read_size: int = 16 * 1024
    """Bytes read from one terminal at a time (~300 location frames)."""


class Jt808Gateway:
    """The TCP server: accepts terminals, runs their sessions, feeds the publish sink."""

    def __init__(self, platform: Jt808Platform, publish: PublishSink, *, dead_letter: DeadLetterSink | None = None,
                 limits: GatewayLimits = GatewayLimits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.platform = platform
        self.limits = limits
        self.clock = clock
        self.connections: set[_Connection] = set()
        self.paused: set[_Connection] = set()
        self.read_buffer = memoryview(bytearray(limits.read_size))
        self._publish = publish
        self._dead_letter = dead_letter
        self._queue: deque[Publication | Rejection] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log_rejection = RejectionLog()
        self._per_address: Counter[str] = Counter()
        self._preauth: Counter[str] = Counter()
        self._dead_letters = Aggregator(limits.dead_letter_burst, limits.dead_letter_window_s)

    @property
    def counters(self) -> dict[str, int]:
        """Counters of the platform plus the gateway's own."""
        snap = self.platform.counters.snapshot()
        snap["connections"] = len(self.connections)
        snap["connections_preauth"] = sum(self._preauth.values())
        snap["queued"] = len(self._queue)
        snap["buffered_bytes"] = sum(c.session.buffered for c in self.connections if c.session is not None)
        snap["reassembly_bytes"] = self.platform.reassembly_budget.used
        snap["reassembly_bytes_peak"] = self.platform.reassembly_budget.peak
        return snap

    def admit(self, conn: _Connection, peer: str) -> bool:
        """Count a new connection in, or refuse it (counted, dead-lettered in aggregate) past a cap."""
        limits, host = self.limits, conn.host
        why = ""
        if len(self.connections) >= limits.max_connections:
            why = f"{len(self.connections)} connections open (cap {limits.max_connections})"
        elif self._per_address[host] >= limits.max_per_address:
            why = f"{self._per_address[host]} connections from {host} (cap {limits.max_per_address})"
        elif self._preauth[host] >= limits.max_preauth_per_address:
            why = (f"{self._preauth[host]} unauthenticated connections from {host} "
                   f"(cap {limits.max_preauth_per_address})")
        if why:
            counters = self.platform.counters
            counters.connections_refused += 1
            counters.rejected[RejectionReason.CONNECTION_LIMIT] += 1
            self.enqueue(SessionOutput(rejections=[Rejection(RejectionReason.CONNECTION_LIMIT, why, peer, None, None,
                                                             b"")]))
            return False
        self.connections.add(conn)
        self._per_address[host] += 1
        self._preauth[host] += 1
        return True

    def authenticated(self, conn: _Connection) -> None:
        """The connection's terminal authenticated: it no longer counts as unauthenticated."""
        conn.preauth = False
        self._uncount(self._preauth, conn.host)

    def forget(self, conn: _Connection) -> None:
        """The connection closed: release its place under the caps."""
        if conn in self.connections:
            self.connections.discard(conn)
            self._uncount(self._per_address, conn.host)
            if conn.preauth:
                self._uncount(self._preauth, conn.host)

    @staticmethod
    def _uncount(counts: Counter[str], host: str) -> None:
        counts[host] -= 1
        if counts[host] <= 0:
            del counts[host]

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=self.limits.backlog)
        self._tasks = [asyncio.create_task(self._drain(), name="jt808-publish"),
                       asyncio.create_task(self._sweep(), name="jt808-sweep")]
        bound = self._server.sockets[0].getsockname()
        log.info("jt808: listening on %s:%d", bound[0], bound[1])
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

    async def __aenter__(self) -> Jt808Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self) -> None:
        """Wait until everything queued has been handed to the sinks."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def handle_output(self, conn: _Connection, out: SessionOutput) -> None:
        """Send replies, queue publications and rejections, apply backpressure and closes."""
        transport = conn.transport
        assert transport is not None
        if out.replies:
            transport.write(b"".join(out.replies) if len(out.replies) > 1 else out.replies[0])
        if (out.publications or out.rejections) and self.enqueue(out) and conn not in self.paused:
            transport.pause_reading()
            self.paused.add(conn)
        if out.close or transport.get_write_buffer_size() > self.limits.max_write_buffer:
            transport.close()

    def command(self, device_id: str, command: DeviceCommand) -> None:
        """Send a platform command to a terminal on its connection; the audit goes to the event queue."""
        session, out = self.platform.command(device_id, command, self.clock())
        conn = next((c for c in self.connections if session is not None and c.session is session), None)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            self.handle_output(conn, out)
        else:
            self.enqueue(SessionOutput(publications=out.publications))

    def on_commands(self, batch: list[Message]) -> None:
        """MQTT handler of ``vigil/v1/vehicle/+/command``: retained, malformed or repeated ones are refused."""
        for message in batch:
            try:
                topic = parse_device_topic(message.topic)
                if message.retain or topic.kind is not Kind.VEHICLE or topic.channel is not Channel.COMMAND:
                    raise Rejected(RejectReason.BAD_TOPIC, "retained or not a vehicle command topic")
                command = decode_command(message.payload)
            except Rejected as exc:
                self.platform.commands.counts["invalid"] = self.platform.commands.counts.get("invalid", 0) + 1
                log.warning("jt808: platform command on %s refused: %s", message.topic[:120], exc)
                continue
            if self.platform.commands.repeated(command):
                continue  # a redelivery (QoS 1): the terminal must not get the text twice
            self.command(topic.device_id, command)

    def enqueue(self, out: SessionOutput) -> bool:
        """Queue a session's publications and rejections; True when the queue is full."""
        if out.publications or out.rejections:
            self._queue.extend(out.publications)
            now = self.clock()
            for rej in out.rejections:
                self._log_rejection(rej)
                # A flood of refusals from one address must not become a flood of dead letters:
                # the first few per address and reason go out, the rest as one summary per window.
                host = rej.peer.rpartition(":")[0] or rej.peer
                if self._dead_letter is not None and self._dead_letters.admit((host, rej.reason.value), now):
                    self._queue.append(rej)
            self._idle.clear()
            self._wake.set()
        return len(self._queue) >= self.limits.queue_limit

    def _summaries(self, now: float, *, all_: bool = False) -> None:
        if self._dead_letter is None:
            return
        rejections = [Rejection(RejectionReason(reason), f"{count} more {reason} refusals from {host} in the last "
                                f"{seconds:.0f} s (each counted in rejected_{reason}; dead letters aggregated)",
                                host, None, None, b"")
                      for (host, reason), count, seconds in self._dead_letters.due(now, all_=all_)]
        if rejections:
            self._queue.extend(rejections)
            self._idle.clear()
            self._wake.set()

    async def _drain(self) -> None:
        queue, low_water = self._queue, self.limits.queue_limit // 2
        handled = 0
        while True:
            if not queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            item = queue.popleft()
            try:
                if isinstance(item, Publication):
                    if item.retain:
                        await self._publish(item.topic, item.payload, retain=True)
                    else:
                        await self._publish(item.topic, item.payload)
                elif self._dead_letter is not None:
                    await self._dead_letter(dead_letter_of(item, utcnow()))
            except Exception as exc:  # the broker's trouble must not stop the gateway
                self.platform.counters.publish_failures += 1
                if self.platform.counters.publish_failures % 1000 == 1:
                    log.warning("jt808: publish failed (%d so far): %s", self.platform.counters.publish_failures, exc)
            handled += 1
            if self.paused and len(queue) <= low_water:
                for conn in list(self.paused):
                    if conn.transport is not None and not conn.transport.is_closing() and not conn.write_paused:
                        conn.transport.resume_reading()
                self.paused.clear()
            if handled % 512 == 0:
                await asyncio.sleep(0)  # let terminals' bytes in between long runs

    async def _sweep(self) -> None:
        last_log = self.clock()
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            now = self.clock()
            for conn in list(self.connections):
                if conn.session is None or conn.transport is None or conn.transport.is_closing():
                    continue
                if not conn.session.authenticated and now - conn.opened > self.limits.auth_timeout_s:
                    # Measured from the connection's start, not its last byte: one byte a second
                    # must not keep an unauthenticated connection open.
                    self.platform.counters.sessions_auth_timeout += 1
                    self.platform.counters.rejected[RejectionReason.AUTH_TIMEOUT] += 1
                    conn.close_reason = "authentication timeout"
                    self.enqueue(SessionOutput(rejections=[Rejection(
                        RejectionReason.AUTH_TIMEOUT, f"not authenticated {now - conn.opened:.0f} s after connecting "
                        f"(limit {self.limits.auth_timeout_s:.0f} s)", conn.session.peer, None, None, b"")]))
                    conn.transport.abort()
                    continue
                if now - conn.last_rx > self.limits.idle_timeout_s:
                    self.platform.counters.sessions_idle_closed += 1
                    conn.close_reason = "idle timeout"
                    conn.transport.close()
                    continue
                out = conn.session.tick(now)
                if out.rejections:
                    self.handle_output(conn, out)
            expired = self.platform.commands.expire(now)
            if expired:
                self.enqueue(SessionOutput(publications=expired))
            self._summaries(now)
            if now - last_log >= 60.0:
                last_log = now
                log.info("jt808: %s", self.counters)


# ---------------------------------------------------------------------------- entry point

def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``PORT``, or ``[v6]:PORT``)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", value
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} out of range")
    return host.strip("[]") or "0.0.0.0", number


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``vigil edge jt808`` (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(prog="vigil edge jt808", description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=parse_listen, default=("0.0.0.0", DEFAULT_PORT), metavar="HOST:PORT",
                   help=f"TCP address terminals connect to (default 0.0.0.0:{DEFAULT_PORT})")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--client-id", default="vigil-edge-jt808", help="MQTT client id")
    p.add_argument("--registry", metavar="FILE", help="device registry YAML: its vehicle ids may register")
    p.add_argument("--accept-unknown-devices", action="store_true", help="let any terminal register")
    p.add_argument("--registrations", metavar="FILE", help="registration store (SQLite; default "
                   "DATA_DIR/jt808-registrations.sqlite3 with --data-dir, else memory only: lost on restart)")
    p.add_argument("--idle-timeout", type=float, default=180.0, metavar="S",
                   help="close authenticated connections silent for S seconds")
    p.add_argument("--auth-timeout", type=float, default=30.0, metavar="S",
                   help="close connections not authenticated S seconds after connecting")
    p.add_argument("--max-connections", type=int, default=20_000, metavar="N", help="connections at once")
    p.add_argument("--max-per-address", type=int, default=1_000, metavar="N",
                   help="connections at once from one source address")
    p.add_argument("--max-preauth-per-address", type=int, default=64, metavar="N",
                   help="unauthenticated connections at once from one source address")
    p.add_argument("--queue-limit", type=int, default=10_000, help="publications queued before reading pauses")
    p.add_argument("--telemetry-qos", type=int, choices=(0, 1), default=1,
                   help="MQTT QoS of positions (events and dead letters are always QoS 1)")
    p.add_argument("--data-dir", metavar="DIR", help="outbox folder: queue messages on disk while the broker is "
                   "unreachable and deliver them in order, all QoS 1; also keeps open alarms across restarts "
                   f"({ALARMS_FILE}) (default: publish directly, alarms open at a restart never end)")
    p.add_argument("--no-commands", action="store_true", help="do not subscribe to platform commands "
                   "(vigil/v1/vehicle/+/command: alarm confirmation, text, terminal parameters)")
    p.add_argument("--gateway-name", default="jt808", help="gateway identity with --data-dir (default jt808)")
    return p


def platform_from_args(args: argparse.Namespace) -> Jt808Platform:
    """Build the platform (registry, registration store) from parsed options.

    Raises:
        RegistrationStoreError: the registration store cannot be opened.
    """
    registry: TerminalRegistry = RegistryTerminals(args.registry) if args.registry else StaticTerminalRegistry()
    if not args.registry and not args.accept_unknown_devices:
        log.warning("jt808: no --registry and no --accept-unknown-devices: every terminal will be refused")
    path = store_path(args.registrations, getattr(args, "data_dir", None))
    store: RegistrationStore
    if path is None:
        log.warning("jt808: no --registrations or --data-dir: registrations are kept in memory only; after a "
                    "restart every terminal must register again")
        store = MemoryRegistrations()
    else:
        store = SqliteRegistrations(path)
    alarm_store: SqliteAlarmStore | None = None
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        # Open alarms survive a restart: on each terminal's first report they are ended (bit now
        # clear) or continued under their original event ids. Without --data-dir they are lost.
        try:
            alarm_store = SqliteAlarmStore(Path(data_dir) / ALARMS_FILE)
        except (OSError, sqlite3.Error) as exc:
            raise RegistrationStoreError(f"{Path(data_dir) / ALARMS_FILE}: {exc}") from None
    platform = Jt808Platform(registry, store, accept_unknown=args.accept_unknown_devices, alarm_store=alarm_store)
    if platform.alarms.restored:
        log.info("jt808: %d open alarm(s) from before the restart; each ends or goes on at its terminal's next "
                 "position", platform.alarms.restored)
    return platform


def limits_from_args(args: argparse.Namespace) -> GatewayLimits:
    """The gateway's bounds from parsed options."""
    return GatewayLimits(idle_timeout_s=args.idle_timeout, auth_timeout_s=args.auth_timeout,
                         max_connections=args.max_connections, max_per_address=args.max_per_address,
                         max_preauth_per_address=args.max_preauth_per_address, queue_limit=args.queue_limit)


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None,
                ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run the gateway with MQTT until ``stop`` is set (or SIGINT/SIGTERM); ``ready`` gets the bound address."""
    from broker.mqtt import MqttClient

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    platform = platform_from_args(args)
    dl_topic = dead_letter_topic(STAGE)
    telemetry_qos: int = args.telemetry_qos
    try:
        async with contextlib.AsyncExitStack() as stack:
            publish: PublishSink
            subscribe: Callable[[str, Handler], None]
            if getattr(args, "data_dir", None):
                from edge.runtime.identity import EdgeIdentity
                from edge.runtime.sink import link_publisher

                identity = EdgeIdentity.for_gateway(args.gateway_name, agent=STAGE)
                sink = await stack.enter_async_context(link_publisher(args.mqtt, identity, Path(args.data_dir)))
                publish = sink.publish
                subscribe = sink.link.subscribe
            else:
                mqtt = await stack.enter_async_context(MqttClient(args.mqtt, args.client_id))
                subscribe = mqtt.subscribe

                async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
                    qos = telemetry_qos if topic.endswith("/telemetry") else 1
                    await mqtt.publish(topic, payload, qos=qos, retain=retain)

            async def dead_letter(letter: DeadLetter) -> None:
                await publish(dl_topic, encode(letter))

            limits = limits_from_args(args)
            gateway = Jt808Gateway(platform, publish, dead_letter=dead_letter, limits=limits)
            if not getattr(args, "no_commands", False):
                subscribe(COMMAND_FILTER, gateway.on_commands)
            bound = await gateway.start(*args.listen)
            if ready is not None:
                ready(bound)
            try:
                await stop.wait()
            finally:
                await gateway.stop()
                log.info("jt808: stopped: %s", gateway.counters)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil edge jt808`` (and its registration admin commands); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN_COMMANDS:
        return admin_main(argv)
    if argv and argv[0] == "send-command":
        from edge.jt808.command_cli import main as send_command

        return send_command(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with options parsed by ``build_parser`` (for a CLI that adds them to its own subparser)."""
    if args.registry and not Path(args.registry).is_file():
        log.error("jt808: registry file %s does not exist", args.registry)
        return 2
    from broker.mqtt import MqttError
    from edge.runtime import EdgeLinkError, IdentityError

    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, MqttError, EdgeLinkError, IdentityError, RegistrationStoreError) as exc:
        log.error("jt808: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
