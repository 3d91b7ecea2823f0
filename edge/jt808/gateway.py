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
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from broker.contracts import DeadLetter, Kind, dead_letter_topic, encode, utcnow
from edge.jt808.codec import RejectionReason
from edge.jt808.session import (
    STAGE,
    AuthCodeIssuer,
    Jt808Platform,
    Jt808Session,
    Publication,
    Rejection,
    SessionOutput,
    StaticTerminalRegistry,
    TerminalRegistry,
    dead_letter_of,
)

log = logging.getLogger(__name__)

class PublishSink(Protocol):
    """Where telemetry, events and statuses go (``MqttClient.publish`` fits); awaits only for backpressure."""

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> Awaitable[None]:
        """Publish ``payload`` on ``topic`` (``retain`` for device statuses)."""
        ...


DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]
"""Where refused frames go, as contract dead letters."""

DEFAULT_PORT: Final = 7808
SECRET_ENV: Final = "VIGIL_JT808_AUTH_SECRET"


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
        self.last_rx = 0.0
        self.write_paused = False
        self.close_reason = "connection closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.session = self.gateway.platform.new_session(name)
        self.last_rx = self.gateway.clock()
        self.gateway.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.gateway.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.gateway.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Hand received bytes to the session."""
        assert self.session is not None and self.transport is not None
        self.last_rx = now = self.gateway.clock()
        try:
            out = self.session.feed(data, now)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("jt808: session of %s failed; closing it", self.session.peer)
            self.transport.close()
            return
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
        self.gateway.connections.discard(self)
        self.gateway.paused.discard(self)
        if self.session is not None:
            self.gateway.enqueue(self.session.close(self.close_reason))


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds of one gateway."""

    idle_timeout_s: float = 180.0
    """Close a connection that sent nothing for this long (terminals heartbeat every ~30-60 s)."""
    queue_limit: int = 10_000
    """Publications waiting for MQTT before the gateway stops reading from terminals."""
    max_write_buffer: int = 1024 * 1024
    """Replies buffered for one terminal beyond which it is dropped (reading pauses long before)."""
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

    @property
    def counters(self) -> dict[str, int]:
        """Counters of the platform plus the gateway's own."""
        snap = self.platform.counters.snapshot()
        snap["connections"] = len(self.connections)
        snap["queued"] = len(self._queue)
        return snap

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

    def enqueue(self, out: SessionOutput) -> bool:
        """Queue a session's publications and rejections; True when the queue is full."""
        if out.publications or out.rejections:
            self._queue.extend(out.publications)
            for rej in out.rejections:
                self._log_rejection(rej)
                if self._dead_letter is not None:
                    self._queue.append(rej)
            self._idle.clear()
            self._wake.set()
        return len(self._queue) >= self.limits.queue_limit

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
                if conn.session is None or conn.transport is None:
                    continue
                if now - conn.last_rx > self.limits.idle_timeout_s:
                    self.platform.counters.sessions_idle_closed += 1
                    conn.close_reason = "idle timeout"
                    conn.transport.close()
                    continue
                out = conn.session.tick(now)
                if out.rejections:
                    self.handle_output(conn, out)
            if now - last_log >= 60.0:
                last_log = now
                log.info("jt808: %s", self.counters)


# ---------------------------------------------------------------------------- entry point

@dataclass(frozen=True, slots=True)
class RegistryTerminals:
    """Terminal lookup in Vigil's device registry: a known vehicle device id."""

    path: str

    def lookup(self, device_id: str) -> bool:
        """Whether the registry file lists this vehicle (the file is re-read when it changes)."""
        return device_id in _registry_vehicles(self.path, _mtime(self.path))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


_REGISTRY_CACHE: dict[str, tuple[float, frozenset[str]]] = {}


def _registry_vehicles(path: str, mtime: float) -> frozenset[str]:
    cached = _REGISTRY_CACHE.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    from broker.registry import DeviceRegistry, RegistryError

    try:
        reg = DeviceRegistry.load(path)
        ids = frozenset(d.id for d in reg.devices.values() if d.kind is Kind.VEHICLE)
    except RegistryError as exc:
        log.error("jt808: cannot load registry: %s; keeping the previous terminal list", exc)
        ids = cached[1] if cached is not None else frozenset()
    _REGISTRY_CACHE[path] = (mtime, ids)
    return ids


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
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", metavar="URL", help="broker URL")
    p.add_argument("--client-id", default="vigil-edge-jt808", help="MQTT client id")
    p.add_argument("--registry", metavar="FILE", help="device registry YAML: its vehicle ids may register")
    p.add_argument("--accept-unknown-devices", action="store_true", help="let any terminal register")
    p.add_argument("--auth-secret-env", default=SECRET_ENV, metavar="VAR",
                   help=f"environment variable holding the auth-code secret (default {SECRET_ENV})")
    p.add_argument("--idle-timeout", type=float, default=180.0, metavar="S", help="close silent connections after S")
    p.add_argument("--queue-limit", type=int, default=10_000, help="publications queued before reading pauses")
    p.add_argument("--telemetry-qos", type=int, choices=(0, 1), default=1,
                   help="MQTT QoS of positions (events and dead letters are always QoS 1)")
    p.add_argument("--data-dir", metavar="DIR", help="outbox folder: queue messages on disk while the broker is "
                   "unreachable and deliver them in order, all QoS 1 (default: publish directly)")
    p.add_argument("--gateway-name", default="jt808", help="gateway identity with --data-dir (default jt808)")
    return p


def platform_from_args(args: argparse.Namespace) -> Jt808Platform:
    """Build the platform (registry, auth secret) from parsed options."""
    secret = os.environ.get(args.auth_secret_env, "")
    if not secret:
        log.warning("jt808: %s is not set; auth codes change on restart (terminals will re-register)",
                    args.auth_secret_env)
        secret = secrets.token_hex(32)
    registry: TerminalRegistry = RegistryTerminals(args.registry) if args.registry else StaticTerminalRegistry()
    if not args.registry and not args.accept_unknown_devices:
        log.warning("jt808: no --registry and no --accept-unknown-devices: every terminal will be refused")
    return Jt808Platform(registry, AuthCodeIssuer(secret.encode()), accept_unknown=args.accept_unknown_devices)


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
            if getattr(args, "data_dir", None):
                from edge.runtime.identity import EdgeIdentity
                from edge.runtime.sink import link_publisher

                identity = EdgeIdentity.for_gateway(args.gateway_name, agent=STAGE)
                sink = await stack.enter_async_context(link_publisher(args.mqtt, identity, Path(args.data_dir)))
                publish = sink.publish
            else:
                mqtt = await stack.enter_async_context(MqttClient(args.mqtt, args.client_id))

                async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
                    qos = telemetry_qos if topic.endswith("/telemetry") else 1
                    await mqtt.publish(topic, payload, qos=qos, retain=retain)

            async def dead_letter(letter: DeadLetter) -> None:
                await publish(dl_topic, encode(letter))

            limits = GatewayLimits(idle_timeout_s=args.idle_timeout, queue_limit=args.queue_limit)
            gateway = Jt808Gateway(platform, publish, dead_letter=dead_letter, limits=limits)
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
    """Entry point of ``vigil edge jt808``; returns the exit status."""
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
    except (OSError, MqttError, EdgeLinkError, IdentityError) as exc:
        log.error("jt808: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
