"""Vigil's MQTT client layer: paho-mqtt driven by the asyncio event loop.

Why not aiomqtt: both sit on paho, but aiomqtt hands every message through an async
iterator and a queue, which costs several times paho's own per-message time (see
docs/benchmarks.md). Here paho's socket is registered with the event loop directly, and
messages reach handlers in batches, synchronously, in the loop thread.

Guarantees:
- QoS 1 by default and persistent sessions (``clean_start=False`` with a session expiry), so
  a restarted service receives what was published while it was away.
- Manual acknowledgement: a message is acknowledged only after its handler returned, so a
  crash inside a handler's batch leads to redelivery, not loss.
- Reconnect with jittered exponential backoff; subscriptions are renewed on every connect.
- Backpressure: ``publish`` waits while ``max_pending`` QoS 1 messages are unacknowledged
  (also while disconnected), and handlers can ``pause()`` reading when their queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


def _paho_has_ack_internals() -> bool:
    """Whether this paho has the internals ``_QuickAckClient`` relies on (checked once, at import)."""
    needed = ("_handle_pubackcomp", "_do_on_publish", "_out_messages", "_out_message_mutex", "_in_packet")
    probe = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    try:
        return all(hasattr(probe, name) for name in needed)
    finally:
        probe.on_socket_close = None


class _QuickAckClient(paho.Client):
    """paho with a short path for the common PUBACK: a success code and no properties.

    paho builds a ReasonCode and a Properties object for every PUBACK it receives (about 40% of a
    publishing gateway's CPU at QoS 1, measured with bench/bench_jt808.py). A PUBACK that carries
    only the packet id and a success code (MQTT 3.1.1; MQTT 5 with 0x00 "success" or 0x10 "no
    matching subscribers" and no properties, as Mosquitto sends them) is answered here with
    shared, read-only objects; any other PUBACK (a refusal, a reason string) goes through paho.
    """

    _REASONS: ClassVar[dict[int, ReasonCode]] = {}
    _NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def _handle_pubackcomp(self, cmd: Any) -> Any:
        packet = self._in_packet["packet"]
        n = len(packet)
        if cmd == "PUBACK" and (n == 2 or (n == 3 and packet[2] < 0x80) or (n == 4 and packet[2] < 0x80
                                                                            and packet[3] == 0)):
            mid = (packet[0] << 8) | packet[1]
            code = packet[2] if n > 2 else 0
            reason = self._REASONS.get(code)
            if reason is None:
                reason = self._REASONS[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, reason, self._NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)


_CLIENT_CLASS: type[paho.Client] = _QuickAckClient if _paho_has_ack_internals() else paho.Client


@dataclass(frozen=True, slots=True)
class Message:
    """One received MQTT message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float
    """Wall-clock time (epoch seconds) at which the client read the message."""


Handler = Callable[[list[Message]], None]
AckCallback = Callable[[bool], None]
"""Called once per QoS 1 publish: True when the broker accepted it (PUBACK), False when it refused it."""


@dataclass(frozen=True, slots=True)
class Will:
    """The MQTT last will, published by the broker when the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to connect, parsed from ``mqtt://user:password@host:port``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    protocol: int = 5
    """MQTT protocol level: 5, or 4 for MQTT 3.1.1 (``?protocol=3.1.1`` in the URL, for old brokers)."""

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> BrokerAddress:
        """Parse an ``mqtt://`` or ``mqtts://`` URL.

        Raises:
            ValueError: the URL is not an MQTT URL (the message never contains the password).
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got scheme {parts.scheme!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise ValueError("MQTT URL has no host")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError("MQTT URL has an invalid port") from None
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        query = urllib.parse.parse_qs(parts.query)
        level = query.get("protocol", ["5"])[-1]
        if level not in ("5", "3.1.1"):
            raise ValueError(f"MQTT URL protocol must be 5 or 3.1.1, got {level!r}")
        return cls(parts.hostname, port, user, password, tls, ca_file, 5 if level == "5" else 4)

    def masked(self) -> str:
        """The address for logs: the password never appears."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


class MqttError(Exception):
    """The broker could not be reached or refused the client."""


class MqttClient:
    """An asyncio MQTT 5 client with batched, acknowledged-after-handling delivery."""

    READ_BURST = 64
    """Most packets read per wake-up: one batch for the handlers, so the loop is never held for long
    (64 x ~70 µs ≈ 5 ms; 256 gave a p99 alert latency of 237 ms instead of 145 ms, docs/benchmarks.md)."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        clean_start: bool = False,
        will: Will | None = None,
        max_pending: int = 1000,
        session_expiry: int = 7 * 24 * 3600,
        keepalive: int = 30,
        ca_file: str | None = None,
        backoff_min: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        self.address = BrokerAddress.parse(url, ca_file)
        self.client_id = client_id
        self._clean_start = clean_start
        self._will = will
        self._max_pending = max_pending
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._backoff = (backoff_min, backoff_max)
        self._handlers: dict[str, list[Handler]] = {}
        self._sub_qos: dict[str, int] = {}
        self._batch: dict[Handler, list[Message]] = {}
        self._route_cache: dict[str, tuple[Handler, ...]] = {}
        self._writer_on = False
        self._to_ack: list[tuple[int, int]] = []
        self._pending = 0
        self._ack_callbacks: dict[int, AckCallback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connected = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._sock: socket.socket | None = None
        self._paused = False
        self._closing = False
        self._connect_idle = threading.Event()
        self._connect_idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._refused: str | None = None
        self.counters: dict[str, int] = {
            "received": 0, "published": 0, "acked_out": 0, "handler_errors": 0, "connects": 0, "disconnects": 0,
        }
        self._client = self._make_client()

    # ------------------------------------------------------------------ setup

    def _make_client(self) -> paho.Client:
        if self.address.protocol == 5:
            client = _CLIENT_CLASS(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True,
            )
        else:
            client = _CLIENT_CLASS(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311, manual_ack=True,
                clean_session=self._clean_start,
            )
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            ctx = ssl.create_default_context(cafile=self.address.ca_file)
            client.tls_set_context(ctx)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        # paho walks its whole in-flight list on every PUBACK when it enforces its own limit (~95 µs at
        # 1,000 in flight); max_pending already bounds what is in flight, so turn paho's off.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def __aenter__(self) -> MqttClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and keep connected; returns once the first connection is up.

        Raises:
            MqttError: no connection within ``timeout`` or the broker refused the client.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tasks.append(asyncio.create_task(self._supervise(), name=f"mqtt-supervise-{self.client_id}"))
        self._tasks.append(asyncio.create_task(self._misc(), name=f"mqtt-misc-{self.client_id}"))
        try:
            async with asyncio.timeout(timeout):
                while not self._connected.is_set():
                    if self._refused is not None:
                        raise MqttError(f"{self.address.masked()} refused {self.client_id!r}: {self._refused}")
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self.stop()
            raise MqttError(f"no connection to {self.address.masked()} within {timeout:.0f} s") from None
        except MqttError:
            await self.stop()
            raise

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Wait for pending publishes (bounded), then disconnect cleanly."""
        if self._closing:
            return
        if self._connected.is_set() and self._pending:
            try:
                async with asyncio.timeout(drain_timeout):
                    await self.flush()
            except TimeoutError:
                log.warning("mqtt %s: %d messages still unacknowledged at stop", self.client_id, self._pending)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        # A connect attempt runs in a worker thread that cancellation cannot stop; let it
        # finish so that the socket it may open is closed here rather than leaked.
        if not self._connect_idle.is_set():
            await asyncio.to_thread(self._connect_idle.wait, 15.0)
        if self._client.socket() is not None:
            self._client.disconnect()
            self._flush_io()
        self._remove_socket()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        """Whether the client is connected now."""
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """QoS 1 messages published but not yet acknowledged by the broker."""
        return self._pending

    # ------------------------------------------------------------------ public API

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` in batches.

        Several handlers may share a filter; each sees every message. The handler runs in
        the event loop thread and must not block; messages are acknowledged after it returns.
        """
        first = topic_filter not in self._handlers
        self._handlers.setdefault(topic_filter, []).append(handler)
        self._sub_qos[topic_filter] = max(qos, self._sub_qos.get(topic_filter, 0))
        self._route_cache.clear()
        if first and self._connected.is_set():
            self._client.subscribe(topic_filter, self._sub_qos[topic_filter])

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                       on_acked: AckCallback | None = None) -> paho.MQTTMessageInfo:
        """Queue a message without waiting (callers that must not block use this).

        ``on_acked`` (QoS 1 only) is called in the loop thread when the broker's PUBACK
        arrives; store-and-forward callers delete their durable copy only then.
        """
        info = self._client.publish(topic, payload, qos, retain)
        self.counters["published"] += 1
        if qos > 0 and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_QUEUE_SIZE):
            self._pending += 1
            if on_acked is not None:
                self._ack_callbacks[info.mid] = on_acked
            if self._pending >= self._max_pending:
                self._drained.clear()
        return info

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                      on_acked: AckCallback | None = None) -> None:
        """Publish; waits only while ``max_pending`` messages are unacknowledged."""
        while self._pending >= self._max_pending:
            self._drained.clear()
            await self._drained.wait()
        self.publish_nowait(topic, payload, qos, retain, on_acked=on_acked)

    async def flush(self) -> None:
        """Wait until every QoS 1 message published so far is acknowledged."""
        while self._pending > 0:
            await asyncio.sleep(0.005)

    def pause(self) -> None:
        """Stop reading from the broker (backpressure); the broker holds the messages."""
        if not self._paused:
            self._paused = True
            if self._sock is not None and self._loop is not None:
                self._loop.remove_reader(self._sock)

    def resume(self) -> None:
        """Start reading again after ``pause``."""
        if self._paused:
            self._paused = False
            if self._sock is not None and self._loop is not None:
                self._loop.add_reader(self._sock, self._on_readable)

    # ------------------------------------------------------------------ paho callbacks

    def _route(self, topic: str) -> tuple[Handler, ...]:
        handlers = self._route_cache.get(topic)
        if handlers is None:
            found: list[Handler] = []
            for topic_filter, hs in self._handlers.items():
                if paho.topic_matches_sub(topic_filter, topic):
                    found.extend(h for h in hs if h not in found)
            handlers = tuple(found)
            if len(self._route_cache) > 200_000:
                self._route_cache.clear()
            self._route_cache[topic] = handlers
        return handlers

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        # Messages that match no handler (subscriptions left in a persistent session) are acked too.
        self._to_ack.append((msg.mid, msg.qos))
        handlers = self._route(msg.topic)
        if not handlers:
            return
        message = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time())
        for handler in handlers:
            batch = self._batch.get(handler)
            if batch is None:
                self._batch[handler] = [message]
            else:
                batch.append(message)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties) -> None:
        self.counters["acked_out"] += 1
        callback = self._ack_callbacks.pop(mid, None) if self._ack_callbacks else None
        if callback is not None:
            try:
                callback(not rc.is_failure)
            except Exception:
                log.exception("mqtt %s: ack callback failed for message %d", self.client_id, mid)
        if self._pending > 0:
            self._pending -= 1
        if self._pending < self._max_pending // 2 or self._pending == 0:
            self._drained.set()

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._refused = str(rc)
            log.error("mqtt %s: %s refused the connection: %s", self.client_id, self.address.masked(), rc)
            return
        self._refused = None
        self.counters["connects"] += 1
        for topic_filter, qos in self._sub_qos.items():
            client.subscribe(topic_filter, qos)
        self._connected.set()
        log.info("mqtt %s: connected to %s (session present: %s)", self.client_id, self.address.masked(),
                 getattr(flags, "session_present", None))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.counters["disconnects"] += 1
            if not self._closing:
                log.warning("mqtt %s: disconnected from %s: %s", self.client_id, self.address.masked(), rc)

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        # paho calls back from its own finaliser too, possibly on another thread and after
        # the loop has closed; there is nothing left to unregister then.
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._add_socket, sock)

    def _add_socket(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if self._closing or sock.fileno() < 0:
            return
        self._sock = sock
        if not self._paused:
            self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._in_loop(self._remove_socket)

    def _remove_socket(self) -> None:
        self._writer_on = False
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._sock = None

    def _on_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        if not self._writer_on or threading.get_ident() != self._loop_thread:
            self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: socket.socket) -> None:
        if self._loop is not None and sock is self._sock:
            self._writer_on = True
            self._loop.add_writer(sock, self._on_writable)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: socket.socket) -> None:
        self._writer_on = False
        if self._loop is not None:
            self._loop.remove_writer(sock)

    # ------------------------------------------------------------------ I/O

    def _on_readable(self) -> None:
        # paho's public loop_read() reads a single packet when nothing is in flight outwards,
        # which costs one event-loop wake-up per message; read what has arrived in one go.
        client = self._client
        read_packet = getattr(client, "_packet_read", None)
        if read_packet is None:
            client.loop_read()
        else:
            for _ in range(self.READ_BURST):
                if client._sock is None:
                    break
                rc = read_packet()
                if rc == paho.MQTT_ERR_AGAIN:
                    break
                if rc > 0:
                    client._loop_rc_handle(rc)
                    break
        self._deliver()

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _flush_io(self) -> None:
        with contextlib.suppress(Exception):
            self._client.loop_write()

    def _deliver(self) -> None:
        batches, self._batch = self._batch, {}
        acks, self._to_ack = self._to_ack, []
        for handler, messages in batches.items():
            try:
                handler(messages)
            except Exception:
                self.counters["handler_errors"] += 1
                log.exception("mqtt %s: handler %r failed on %d messages", self.client_id, handler, len(messages))
        self.counters["received"] += len(acks)
        ack = self._client.ack
        for mid, qos in acks:
            if qos > 0:
                ack(mid, qos)
        if acks:
            # Send the batch's PUBACKs now, in as few writes as the socket takes.
            self._client.loop_write()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._client.loop_misc()

    async def _supervise(self) -> None:
        attempt = 0
        first = True
        while True:
            if not self._connected.is_set() and self._sock is None:
                if not first:
                    low, high = self._backoff
                    delay = min(high, low * (2 ** min(attempt, 16))) * random.uniform(0.5, 1.0)
                    await asyncio.sleep(delay)
                first = False
                attempt += 1
                try:
                    self._connect_idle.clear()
                    await asyncio.to_thread(self._connect_blocking)
                except OSError as exc:
                    log.warning("mqtt %s: cannot reach %s: %s", self.client_id, self.address.masked(), exc)
                    continue
                # Wait for CONNACK (or a failure that closes the socket).
                for _ in range(200):
                    if self._connected.is_set() or self._sock is None or self._refused:
                        break
                    await asyncio.sleep(0.025)
                if self._connected.is_set():
                    attempt = 0
                elif self._sock is not None:
                    self._client.disconnect()
                    self._remove_socket()
            await asyncio.sleep(0.1)

    def _connect_blocking(self) -> None:
        try:
            self._connect_blocking_inner()
        finally:
            self._connect_idle.set()

    def _connect_blocking_inner(self) -> None:
        if self.address.protocol != 5:
            self._client.connect(self.address.host, self.address.port, keepalive=self._keepalive)
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if self._clean_start else self._session_expiry
        self._client.connect(
            self.address.host, self.address.port, keepalive=self._keepalive,
            clean_start=self._clean_start, properties=props,
        )
        # Later reconnects reuse the session.
        self._clean_start = False
