"""Vigil's MQTT client layer: paho-mqtt driven by the asyncio event loop.

Why not aiomqtt: both sit on paho, but aiomqtt hands every message through an async
iterator and a queue, which costs several times paho's own per-message time (see
docs/benchmarks.md). Here paho's socket is registered with the event loop directly, and
messages reach handlers in batches, synchronously, in the loop thread.

Guarantees:
- QoS 1 by default and persistent sessions (``clean_start=False`` with a session expiry), so
  a restarted service receives what was published while it was away.
- Manual acknowledgement: a message is acknowledged only after its handler returned, so a
  crash inside a handler's batch leads to redelivery, not loss. A handler that could not make
  its work durable (disk full) raises ``NotDurable``: the batch is then not acknowledged, reading
  stops (the broker keeps the rest) and the client retries the handler's ``retry`` with backoff
  until it succeeds, then acknowledges and reads on (``stalled_since`` tells the health model).
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
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker.errors import BrokerError
from broker.mqtt_routes import RouteIndex

log = logging.getLogger(__name__)
_time_func: Callable[[], float] = getattr(paho, "time_func", time.monotonic)


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


def _paho_has_read_internals() -> bool:
    """Whether this paho has the internals ``MqttClient._read_buffered`` relies on (checked once)."""
    needed = ("_sock_recv", "_packet_handle", "_loop_rc_handle", "_in_packet", "_packet_queue", "_msgtime_mutex",
              "_last_bytes_received")
    probe = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    try:
        return all(hasattr(probe, name) for name in needed)
    finally:
        probe.on_socket_close = None


_FAST_READ = _paho_has_read_internals()
_PUBACK_CMD = 0x40
_PUBACK_WORD = 0x4002_0000
"""A PUBACK (success, no properties) is 4 bytes: 0x40, remaining length 2, packet id; as a big-endian
32-bit word that is this | id, so a batch's PUBACKs are one ``struct.pack``."""


class Message(msgspec.Struct, frozen=True):
    """One received MQTT message (a Struct: built for every message, ~6x cheaper than a frozen dataclass)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float
    """Wall-clock time (epoch seconds) at which the client read the message."""


Handler = Callable[[list[Message]], None]
AckCallback = Callable[[bool], None]
"""Called once per QoS 1 publish: True when the broker accepted it (PUBACK), False when it refused it."""
ReasonCallback = Callable[[int], None]
"""Called once per QoS 1 publish with the PUBACK reason code: 0 success, 0x10 no matching subscribers
(MQTT 5: the broker accepted it but nobody will receive it), 0x80 and above refused."""
NO_MATCHING_SUBSCRIBERS = 0x10


@dataclass(frozen=True, slots=True)
class Will:
    """The MQTT last will, published by the broker when the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to connect, parsed from ``mqtt://user:password@host:port``.

    A URL with a user and no password takes the password from ``VIGIL_MQTT_PASSWORD`` or the
    file ``VIGIL_MQTT_PASSWORD_FILE`` names (``broker.credentials``), so it need not be in argv.
    """

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
        if user is not None and parts.password is None:
            # mqtt://user@host: the password comes from the environment or a file, never argv.
            from broker.credentials import password_from_environment

            password = password_from_environment()
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


class MqttError(BrokerError):
    """The broker could not be reached or refused the client."""


class NotDurable(BrokerError):
    """Raised by a handler whose work could not be made durable; its batch must not be acknowledged.

    ``retry`` makes the same work durable (without handling the messages again); it raises
    ``NotDurable`` (or ``OSError``) while it still cannot. The client calls it with backoff.
    """

    def __init__(self, reason: str, retry: Callable[[], None]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry

    @staticmethod
    def combine(errors: list[NotDurable]) -> NotDurable:
        """One ``NotDurable`` for several consumers of a batch: its retry retries those still failing."""
        if len(errors) == 1:
            return errors[0]
        remaining = list(errors)

        def retry() -> None:
            still: list[NotDurable] = []
            for err in remaining:
                try:
                    err.retry()
                except NotDurable as exc:
                    still.append(exc)
                except OSError as exc:
                    still.append(NotDurable(str(exc), err.retry))
            remaining[:] = still
            if still:
                raise NotDurable.combine(still)

        return NotDurable("; ".join(e.reason for e in errors), retry)


class MqttClient:
    """An asyncio MQTT 5 client with batched, acknowledged-after-handling delivery."""

    READ_BURST = 64
    """Most packets read per wake-up on paho's own read path (used only when paho lacks the internals
    the buffered reader needs)."""
    READ_BYTES = 16 * 1024
    """Bytes read per wake-up by the buffered reader: one batch for the handlers (~100 telemetry
    messages, ~7 ms), so the loop is never held for long and the alarm lane gets its turn. Measured
    against 32 KiB: the same CPU per message (68 µs), alarm p99 29 ms instead of 70 ms (docs/benchmarks.md)."""

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
        self._route_index: RouteIndex[Handler] | None = None
        self._stale: set[str] = set()
        self._writer_on = False
        self._to_ack: list[tuple[int, int]] = []
        self._rbuf = bytearray()
        self._fast_read = _FAST_READ
        self._pending = 0
        self._ack_callbacks: dict[int, AckCallback] = {}
        self._reason_callbacks: dict[int, ReasonCallback] = {}
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
        self._stalled_since: float | None = None
        self._held_acks: list[tuple[int, int]] = []
        self._ack_words: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._retries: list[NotDurable] = []
        self._retry_task: asyncio.Task[None] | None = None
        self.last_not_durable: str | None = None
        self.counters: dict[str, int] = {
            "received": 0, "published": 0, "acked_out": 0, "handler_errors": 0, "connects": 0, "disconnects": 0,
            "not_durable": 0, "durable_retries": 0,
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
            with contextlib.suppress(Exception):
                self._flush_acks()  # what was handled is acknowledged before leaving
            self._client.disconnect()
            self._flush_io()
        self._remove_socket()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        """Whether the client is connected now."""
        return self._connected.is_set()

    @property
    def stalled_since(self) -> float | None:
        """Monotonic time since which a batch waits to be made durable (reading stopped), else None."""
        return self._stalled_since

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
        self._stale.discard(topic_filter)
        self._routes_changed()
        if first and self._connected.is_set():
            self._client.subscribe(topic_filter, self._sub_qos[topic_filter])

    def subscribe_many(self, topic_filters: Iterable[str], handler: Handler, qos: int = 1) -> None:
        """``subscribe`` for many filters at once (one handler), sent in batched SUBSCRIBE packets."""
        new: list[str] = []
        for topic_filter in topic_filters:
            handlers = self._handlers.get(topic_filter)
            if handlers is None:
                self._handlers[topic_filter] = [handler]
                new.append(topic_filter)
            elif handler not in handlers:
                handlers.append(handler)
            self._sub_qos[topic_filter] = max(qos, self._sub_qos.get(topic_filter, 0))
            self._stale.discard(topic_filter)
        self._routes_changed()
        if new and self._connected.is_set():
            self._send_subscribe(new)

    def unsubscribe_many(self, topic_filters: Iterable[str], handler: Handler) -> None:
        """Stop delivering these filters to ``handler``; filters left without a handler are unsubscribed."""
        gone: list[str] = []
        for topic_filter in topic_filters:
            handlers = self._handlers.get(topic_filter)
            if handlers is None:
                continue
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                del self._handlers[topic_filter]
                self._sub_qos.pop(topic_filter, None)
                gone.append(topic_filter)
        self._routes_changed()
        if gone and self._connected.is_set():
            self._send_unsubscribe(gone)

    def forget(self, topic_filters: Iterable[str]) -> None:
        """Unsubscribe filters a persistent session may still hold from an earlier layout, on every connect.

        A persistent session keeps its subscriptions across restarts: a process that used to read every
        device topic and now reads only its partition's devices must drop the old filters, or the broker
        keeps sending it everything. Filters this client subscribes itself are never forgotten.
        """
        stale = [f for f in topic_filters if f not in self._handlers and f not in self._stale]
        self._stale.update(stale)
        if stale and self._connected.is_set():
            self._send_unsubscribe(stale)

    @property
    def topic_filters(self) -> frozenset[str]:
        """The filters this client subscribes (renewed on every connect)."""
        return frozenset(self._sub_qos)

    SUBSCRIBE_BATCH = 500
    """Filters per SUBSCRIBE / UNSUBSCRIBE packet (a partition subscribes one filter per device)."""

    def _send_subscribe(self, topic_filters: list[str]) -> None:
        for k in range(0, len(topic_filters), self.SUBSCRIBE_BATCH):
            chunk = topic_filters[k:k + self.SUBSCRIBE_BATCH]
            self._client.subscribe([(f, self._sub_qos.get(f, 1)) for f in chunk])

    def _send_unsubscribe(self, topic_filters: list[str]) -> None:
        for k in range(0, len(topic_filters), self.SUBSCRIBE_BATCH):
            self._client.unsubscribe(topic_filters[k:k + self.SUBSCRIBE_BATCH])

    def _routes_changed(self) -> None:
        self._route_cache.clear()
        self._route_index = None

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                       on_acked: AckCallback | None = None,
                       on_reason: ReasonCallback | None = None) -> paho.MQTTMessageInfo:
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
            if on_reason is not None:
                self._reason_callbacks[info.mid] = on_reason
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
            self._update_reader()

    def resume(self) -> None:
        """Start reading again after ``pause``."""
        if self._paused:
            self._paused = False
            self._update_reader()

    def _update_reader(self) -> None:
        if self._sock is None or self._loop is None:
            return
        # While stalled, reading continues until the connection is up, so a CONNACK is seen.
        if self._paused or (self._stalled_since is not None and self._connected.is_set()):
            self._loop.remove_reader(self._sock)
        else:
            self._loop.add_reader(self._sock, self._on_readable)

    # ------------------------------------------------------------------ paho callbacks

    def _index(self) -> RouteIndex[Handler]:
        index = self._route_index
        if index is None:
            index = self._route_index = RouteIndex(self._handlers)
        return index

    def _route(self, topic: str) -> tuple[Handler, ...]:
        handlers = self._route_cache.get(topic)
        if handlers is None:
            handlers = self._index().match(topic)
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
        self._add_to_batches(handlers, message)

    def _add_to_batches(self, handlers: tuple[Handler, ...], message: Message) -> None:
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
        by_reason = self._reason_callbacks.pop(mid, None) if self._reason_callbacks else None
        if by_reason is not None:
            try:
                by_reason(int(rc.value))
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
        if self._sub_qos:
            self._send_subscribe(list(self._sub_qos))
        if self._stale:
            self._send_unsubscribe(sorted(self._stale))
        self._connected.set()
        if self._stalled_since is not None:
            self._update_reader()
        log.info("mqtt %s: connected to %s (session present: %s)", self.client_id, self.address.masked(),
                 getattr(flags, "session_present", None))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        # Packet ids of held messages belong to the lost connection; the broker redelivers them.
        self._held_acks.clear()
        self._ack_words.clear()
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
        self._rbuf = bytearray()
        self._update_reader()

    def _on_socket_close(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._in_loop(self._remove_socket)

    def _remove_socket(self) -> None:
        self._writer_on = False
        self._rbuf = bytearray()
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
        if self._fast_read:
            self._read_buffered()
        elif read_packet is None:
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

    def _read_buffered(self) -> None:
        """Read up to ``READ_BYTES`` with one recv and handle every complete packet in them.

        paho reads a packet with three or more recv calls and builds an MQTTMessage and a
        Properties object per PUBLISH; here QoS 0/1 PUBLISH packets (all the platform receives)
        are parsed in place (their MQTT 5 properties are skipped: Vigil uses none), and every
        other packet is handed to paho's own handler unchanged.
        """
        client = self._client
        try:
            data = client._sock_recv(self.READ_BYTES)
        except BlockingIOError:
            return
        except (OSError, ConnectionError):
            client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
            self._deliver()
            return
        if not data:
            client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
            self._deliver()
            return
        with client._msgtime_mutex:
            client._last_bytes_received = _time_func()
        # Parse from ``bytes``: a payload slice is then the message's own bytes, one copy (a
        # bytearray slice would be copied twice); only an incomplete tail is kept for the next read.
        rest = self._rbuf
        buf = bytes(rest + data) if rest else bytes(data)  # bytes(data) is data itself when it is bytes
        n = len(buf)
        pos = 0
        v5 = self.address.protocol == 5
        now = time.time()
        route = self._route
        to_ack = self._to_ack
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while pos + 2 <= n:
            cmd = buf[pos]
            # Remaining length: 1 - 4 bytes, 7 bits each.
            length = 0
            mult = 1
            i = pos + 1
            while True:
                if i >= n:
                    length = -1
                    break
                byte = buf[i]
                length += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult *= 128
                if i - pos > 4:
                    rc = paho.MQTT_ERR_PROTOCOL
                    break
            if rc or length < 0 or i + length > n:
                break
            end = i + length
            qos = (cmd >> 1) & 3
            if cmd & 0xF0 == 0x30 and qos < 2:
                tlen = (buf[i] << 8) | buf[i + 1]
                j = i + 2 + tlen
                try:
                    topic = buf[i + 2:j].decode()
                except UnicodeDecodeError:
                    topic = ""
                mid = 0
                if qos:
                    mid = (buf[j] << 8) | buf[j + 1]
                    j += 2
                if v5:
                    plen = 0
                    shift = 0
                    while True:
                        byte = buf[j]
                        j += 1
                        plen |= (byte & 0x7F) << shift
                        shift += 7
                        if not byte & 0x80 or shift > 21:
                            break
                    j += plen
                to_ack.append((mid, qos))
                handlers = route(topic) if topic else ()
                if handlers:
                    message = Message(topic, buf[j:end], qos, bool(cmd & 1), now)
                    if len(handlers) == 1:  # the common case, inline (this runs for every message)
                        batch = self._batch.get(handlers[0])
                        if batch is None:
                            self._batch[handlers[0]] = [message]
                        else:
                            batch.append(message)
                    else:
                        self._add_to_batches(handlers, message)
            else:
                client._in_packet = {"command": cmd, "have_remaining": 1, "remaining_count": [],
                                     "remaining_mult": 1, "remaining_length": length,
                                     "packet": bytearray(buf[i:end]), "to_process": 0, "pos": 0}
                try:
                    rc = client._packet_handle()
                except MalformedPacket:
                    rc = paho.MQTT_ERR_PROTOCOL
                client._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [],
                                     "remaining_mult": 1, "remaining_length": 0, "packet": bytearray(b""),
                                     "to_process": 0, "pos": 0}
            pos = end
            if rc:
                break
        if self._rbuf is rest:  # else the socket was closed (and the buffer reset) while handling a packet
            self._rbuf = bytearray(buf[pos:]) if pos < n and not rc else bytearray()
        if rc:
            client._loop_rc_handle(rc)
        else:
            pending = getattr(client._sock, "pending", None)
            if pending is not None and pending() and self._loop is not None:
                # TLS: decrypted bytes wait in the SSL object, invisible to the selector.
                self._loop.call_soon(self._read_pending)
        self._deliver()

    def _read_pending(self) -> None:
        # Only while reading is on: a pause or a stall since the call was scheduled keeps it off.
        if self._sock is not None and not self._paused and self._stalled_since is None:
            self._on_readable()

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _flush_io(self) -> None:
        with contextlib.suppress(Exception):
            self._client.loop_write()

    def _deliver(self) -> None:
        batches, self._batch = self._batch, {}
        acks, self._to_ack = self._to_ack, []
        failed: list[NotDurable] = []
        for handler, messages in batches.items():
            try:
                handler(messages)
            except NotDurable as exc:
                failed.append(exc)
            except Exception:
                self.counters["handler_errors"] += 1
                log.exception("mqtt %s: handler %r failed on %d messages", self.client_id, handler, len(messages))
        self.counters["received"] += len(acks)
        if failed or self._retries:
            self._hold(acks, failed)
            return
        self._send_acks(acks)

    def _hold(self, acks: list[tuple[int, int]], failed: list[NotDurable]) -> None:
        """Keep the batch unacknowledged, stop reading and retry until its work is durable."""
        self._held_acks.extend(acks)
        self._retries.extend(failed)
        self.counters["not_durable"] += len(failed)
        if self._stalled_since is None:
            self._stalled_since = time.monotonic()
            self.last_not_durable = failed[0].reason if failed else self.last_not_durable
            log.error("mqtt %s: a handler could not store its work (%s); not acknowledging, reading "
                      "stopped, retrying", self.client_id, self.last_not_durable)
            self._update_reader()
        if self._retry_task is None or self._retry_task.done():
            self._tasks = [t for t in self._tasks if not t.done()]
            self._retry_task = asyncio.get_running_loop().create_task(
                self._retry_durable(), name=f"mqtt-durable-{self.client_id}")
            self._tasks.append(self._retry_task)

    async def _retry_durable(self) -> None:
        low, high = self._backoff[0], min(self._backoff[1], 5.0)
        delay = low
        last_log = time.monotonic()
        while self._retries:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(high, delay * 2)
            still: list[NotDurable] = []
            for item in self._retries:
                self.counters["durable_retries"] += 1
                try:
                    item.retry()
                except NotDurable as exc:
                    still.append(exc)
                    self.last_not_durable = exc.reason
                except OSError as exc:
                    still.append(item)
                    self.last_not_durable = str(exc)
            self._retries = still
            if still and time.monotonic() - last_log >= 30.0:
                last_log = time.monotonic()
                log.error("mqtt %s: still cannot store a batch (%s) after %.0f s; the broker keeps the messages",
                          self.client_id, self.last_not_durable, time.monotonic() - (self._stalled_since or 0.0))
        acks, self._held_acks = self._held_acks, []
        if self._stalled_since is not None:
            log.warning("mqtt %s: stored again after %.1f s; reading on", self.client_id,
                        time.monotonic() - self._stalled_since)
        self._stalled_since = None
        if self._sock is not None:
            self._send_acks(acks)
        self._update_reader()

    ACK_DELAY_S = 0.002
    """PUBACKs of handled messages wait up to this long to share one write with later batches'. A reader that is
    not saturated wakes for a few messages at a time, and a send per wake-up cost 8% of the platform's CPU
    (py-spy, docs/benchmarks.md); the broker's in-flight window (1,000) covers far more than 2 ms of traffic."""
    ACK_BATCH = 512
    """PUBACKs that are sent at once, without waiting for ``ACK_DELAY_S``."""

    def _send_acks(self, acks: list[tuple[int, int]]) -> None:
        client = self._client
        if self._fast_read:
            # One buffer of PUBACKs (4 bytes each: success, no properties) instead of a queued
            # packet per message; paho writes it like any other packet.
            words = self._ack_words
            for mid, qos in acks:
                if qos == 1:
                    words.append(_PUBACK_WORD | mid)
                elif qos == 2:
                    client.ack(mid, qos)
            if len(words) >= self.ACK_BATCH or self._loop is None:
                self._flush_acks()
            elif words and self._ack_timer is None:
                self._ack_timer = self._loop.call_later(self.ACK_DELAY_S, self._flush_acks)
            return
        else:
            ack = client.ack
            for mid, qos in acks:
                if qos > 0:
                    ack(mid, qos)
        if acks:
            # Send the batch's PUBACKs now, in as few writes as the socket takes.
            client.loop_write()

    def _flush_acks(self) -> None:
        """Send the PUBACKs waiting in ``_ack_words`` (one packet buffer, one write)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        words, self._ack_words = self._ack_words, []
        if words and self._sock is not None:
            self._client._packet_queue(_PUBACK_CMD, struct.pack(f"!{len(words)}I", *words), 0, 1)
            self._client.loop_write()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                if self._stalled_since is not None or self._paused:
                    # Not reading means PINGRESPs are not seen; keep pinging (the broker must not drop
                    # the session) without paho taking the silence for a dead connection.
                    with contextlib.suppress(AttributeError), self._client._msgtime_mutex:
                        self._client._last_bytes_received = _time_func()
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
