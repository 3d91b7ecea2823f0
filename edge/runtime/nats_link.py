"""``NatsEdgeLink``: an edge agent's store-and-forward uplink straight into a NATS JetStream cluster.

The MQTT uplink (``EdgeLink``) hands its outbox to a broker whose acknowledgement, on a NATS
cluster's MQTT listener, does not mean "stored in the partition stream" (docs/cluster.md). This link
publishes the same records as JetStream publishes instead: the topic ``vigil/v1/{kind}/{device}/{channel}``
becomes the subject ``vigil.v1.{kind}.{device}.{channel}`` (``broker.nats_transport.topic_to_subject``),
which the servers' mapping puts in the device's partition stream, exactly where the MQTT listener
would have put it. A record leaves the outbox only after the stream's PubAck (stored in R3), and each
publish carries ``Nats-Msg-Id`` made from the record (client id, outbox sequence, queue time), so a
retry after a lost acknowledgement is dropped by the stream's duplicate window instead of stored twice.

Order: at most one record per device is in flight at a time (a device's next record waits for its
previous one's acknowledgement), so a retried record never lands after a later one of the same device;
records of different devices are pipelined up to ``window``. The connection fails over to any node of
the cluster (nats-py reconnects); while no node answers, records stay in the outbox on disk.

Presence: the agent's own status (online on connect, heartbeats, offline on a clean stop) is published
on its status subject, best effort and outside the outbox, as ``EdgeLink`` does. NATS has no last will:
a vanished agent shows as silence (no heartbeat), not as an "offline" message.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from broker.contracts import (
    TOPIC_ROOT,
    DeviceStatus,
    encode,
    utcnow,
)
from broker.mqtt import Handler, Message
from broker.nats_server import PARTITION_PREFIX
from broker.nats_transport import device_topic as device_topic_of
from broker.nats_transport import subject_to_topic, topic_to_subject
from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLinkError, OutboxFront, lock_outbox_folder
from edge.runtime.outbox import DurableOutbox, OutboxError, OutboxMessage

log = logging.getLogger(__name__)

StatusDetail = Callable[[], dict[str, Any]]
_DEVICE_TOPIC_LEVELS = 4
"""``vigil/v1/{kind}/{device}``: the prefix that keys a device's order (its channels share one order)."""


def record_msg_id(client_id: str, message: OutboxMessage) -> str:
    """The ``Nats-Msg-Id`` of an outbox record: the same record always has the same id.

    The queue time (microseconds) is part of it so that a fresh outbox, whose sequence numbers start
    again at 1, does not collide with ids still inside the stream's duplicate window.
    """
    return f"{client_id}:{message.seq}:{round(message.queued_at * 1e6)}"


def order_key(topic: str) -> str:
    """What a record's order is kept within: its device (``vigil/v1/{kind}/{device}``), else its topic."""
    levels = topic.split("/")
    if len(levels) > _DEVICE_TOPIC_LEVELS and topic.startswith(f"{TOPIC_ROOT}/"):
        return "/".join(levels[:_DEVICE_TOPIC_LEVELS])
    return topic


def filter_to_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject filter (``+`` -> ``*``, ``#`` -> ``>``).

    A device filter ``vigil/v1/{kind}/{device}/{channel}`` becomes ``vigil.p.*.{kind}.{device}.{channel}``:
    the servers' mapping rewrites every device subject when it is published (commands included), so
    that is the subject a subscriber sees.
    """
    levels = topic_to_subject(topic_filter).split(".")
    tokens = ["*" if tok == "+" else ">" if tok == "#" else tok for tok in levels]
    if len(tokens) == 5 and tokens[:2] == ["vigil", "v1"] and ">" not in tokens:
        tokens = [*PARTITION_PREFIX.split("."), "*", *tokens[2:]]
    return ".".join(tokens)


def subject_topic(subject: str) -> str:
    """The MQTT topic of a received subject (a partitioned device subject loses its partition)."""
    if subject.startswith(f"{PARTITION_PREFIX}."):
        return device_topic_of(subject)
    return subject_to_topic(subject)


class NatsEdgeLink(OutboxFront):
    """Durable, acknowledged publishing of an edge agent's outbox into a NATS JetStream cluster, plus presence."""

    def __init__(
        self,
        servers: Sequence[str],
        identity: EdgeIdentity,
        data_dir: Path,
        *,
        max_queued: int = 100_000,
        window: int = 256,
        heartbeat_s: float = 30.0,
        publish_timeout_s: float = 5.0,
        backoff_min: float = 0.2,
        backoff_max: float = 5.0,
        status_detail: StatusDetail | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the outbox under ``data_dir`` (publishing works before ``start``).

        Args:
            servers: NATS URLs of the cluster's nodes (``nats://host:4222``); any one of them will do.
            identity: client id, credentials (NATS user and password) and status topic.
            data_dir: folder of the outbox; one link per folder (a lock file enforces it).
            max_queued: the outbox bound in records (past it the oldest unsent are dropped and counted).
            window: records awaiting their acknowledgement at once (at most one per device).
            heartbeat_s: period of the online status with figures.
            publish_timeout_s: how long one publish waits for its acknowledgement before it is retried.
            backoff_min: first delay before connecting again or retrying a failed publish, in seconds.
            backoff_max: longest such delay, in seconds.
            status_detail: extra figures merged into each heartbeat's ``detail``.
            clock: epoch seconds (tests inject one).

        Raises:
            EdgeLinkError: no server given, another process holds the outbox, or it cannot be opened.
        """
        if not servers:
            raise EdgeLinkError("a NATS uplink needs at least one server URL")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.identity = identity
        self.servers = list(servers)
        self._window = window
        self._heartbeat_s = heartbeat_s
        self._timeout = publish_timeout_s
        self._backoff = (backoff_min, backoff_max)
        self._status_detail = status_detail
        self._clock = clock
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeLinkError(f"cannot create outbox folder {data_dir}: {exc.strerror}") from None
        self._lock_fd = lock_outbox_folder(data_dir / "outbox.lock")
        try:
            self.outbox = DurableOutbox(data_dir / "outbox.sqlite3", max_queued)
        except OutboxError as exc:
            os.close(self._lock_fd)
            raise EdgeLinkError(str(exc)) from exc
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._subscriptions: list[tuple[str, Handler]] = []
        self._waiting: list[OutboxMessage] = []
        """Records taken from the outbox and not in flight (their device is busy, or a retry), by sequence."""
        self._busy: set[str] = set()
        self._inflight = 0
        self._acked: list[int] = []
        self._retry_after = 0.0
        self._failed_rounds = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._started_at = clock()
        self._stopped = False
        self._online = True
        self._offline_reason = ""
        self._status_dirty = False
        self._connects_seen = 0
        self._last_warning = 0.0
        self.counters: dict[str, int] = {
            "published": 0, "duplicates": 0, "publish_errors": 0, "refused_by_cluster": 0, "outbox_errors": 0,
            "connects": 0, "disconnects": 0, "heartbeats": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> NatsEdgeLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start connecting in the background; returns at once (the agent works offline too)."""
        cid = self.identity.client_id
        self._tasks = [asyncio.create_task(self._connect_forever(), name=f"nats-connect-{cid}"),
                       asyncio.create_task(self._drain(), name=f"nats-drain-{cid}"),
                       asyncio.create_task(self._presence(), name=f"nats-presence-{cid}")]
        self._wake.set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a connection to a node; returns whether there is one."""
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def flush(self) -> None:
        """Wait until the outbox is empty (every record acknowledged by its stream)."""
        while len(self.outbox) > 0 or self._inflight > 0 or self._acked:
            self._wake.set()
            await asyncio.sleep(0.01)

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout``, say offline, disconnect, close the outbox."""
        if self._stopped:
            return
        self._stopped = True
        if self.connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()
            with contextlib.suppress(Exception):
                await self._publish_status(False, "shutdown")
        tasks = [*self._tasks, *self._sends]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._tasks.clear()
        if self.nc is not None:
            # Bounded: the client's close can wait on a connection that is half gone (a node just killed).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self.nc.close()
        self._commit_acks()
        self.outbox.close()
        os.close(self._lock_fd)

    # ------------------------------------------------------------------ publishing

    # publish(), publish_telemetry/event/device_status() and set_online() come from OutboxFront. A record's
    # ``retain`` is kept but means nothing to a stream: the stream keeps every status in order, so a newer
    # "offline" always lands after an older "online".

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Receive messages (platform commands) on plain NATS; ``handler`` gets each as a one-message batch."""
        self._subscriptions.append((topic_filter, handler))
        if self.nc is not None and self.nc.is_connected:
            task = asyncio.get_running_loop().create_task(self._subscribe(topic_filter, handler))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """Whether a node's connection is up now."""
        return self.nc is not None and bool(self.nc.is_connected)

    @property
    def in_flight(self) -> int:
        """Records published and not yet acknowledged."""
        return self._inflight

    def stats(self) -> dict[str, float]:
        """Counters and gauges: queue depth, drops, deliveries, connection."""
        return {
            "queued": float(len(self.outbox)),
            "in_flight": float(self._inflight),
            "appended": float(self.outbox.appended),
            "delivered": float(self.outbox.delivered),
            "dropped": float(self.outbox.dropped),
            "oldest_queued_s": self.outbox.oldest_age(self._clock()),
            "connected": 1.0 if self.connected else 0.0,
            **{k: float(v) for k, v in self.counters.items()},
        }

    # ------------------------------------------------------------------ connection

    async def _connect_forever(self) -> None:
        import nats

        async def on_error(exc: Exception) -> None:
            self._warn(f"connection: {exc or type(exc).__name__}")

        async def on_disconnected() -> None:
            self.counters["disconnects"] += 1

        async def on_reconnected() -> None:
            self.counters["connects"] += 1
            self._wake.set()

        low, high = self._backoff
        attempt = 0
        while True:
            try:
                # nats-py tries every server in turn and, once connected, reconnects forever by itself;
                # only the first connection has to be retried here.
                self.nc = await nats.connect(
                    servers=self.servers, name=self.identity.client_id, user=self.identity.username,
                    password=self.identity.password, max_reconnect_attempts=-1, reconnect_time_wait=low,
                    connect_timeout=2, error_cb=on_error, disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected)
            except (TimeoutError, OSError, NatsError) as exc:
                attempt += 1
                self._warn(f"no NATS server reachable ({exc or type(exc).__name__}); "
                           f"{len(self.outbox)} records kept in the outbox")
                await asyncio.sleep(min(high, low * 2 ** min(attempt, 8)))
                continue
            self._js = self.nc.jetstream(timeout=self._timeout)
            for topic_filter, handler in self._subscriptions:
                await self._subscribe(topic_filter, handler)
            self.counters["connects"] += 1  # after the subscriptions: a first connect counted is a ready one
            self._wake.set()
            return

    async def _subscribe(self, topic_filter: str, handler: Handler) -> None:
        assert self.nc is not None

        async def on_message(msg: Msg) -> None:
            try:
                handler([Message(subject_topic(msg.subject), msg.data, 1, False, time.time())])
            except Exception:
                log.exception("edge %s: handler for %s failed", self.identity.client_id, topic_filter)

        await self.nc.subscribe(filter_to_subject(topic_filter), cb=on_message)

    # ------------------------------------------------------------------ presence

    def _status_payload(self, online: bool, reason: str | None, detail: dict[str, Any] | None = None) -> bytes:
        return encode(DeviceStatus(ts=utcnow(), online=online, reason=reason, agent=self.identity.agent,
                                   detail=detail or {}))

    async def _publish_status(self, online: bool, reason: str, detail: dict[str, Any] | None = None) -> None:
        if self._js is None:
            return
        subject = topic_to_subject(self.identity.status_topic)
        await self._js.publish(subject, self._status_payload(online, reason, detail), timeout=self._timeout)

    def _heartbeat_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"uptime_s": round(self._clock() - self._started_at, 1), "queued": len(self.outbox),
                                  "dropped": self.outbox.dropped, "delivered": self.outbox.delivered}
        if self._status_detail is not None:
            try:
                detail.update(self._status_detail())
            except Exception:
                log.exception("edge %s: status detail provider failed", self.identity.client_id)
        return detail

    async def _presence(self) -> None:
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            if not self.connected:
                continue
            now = time.monotonic()
            why = ("connected" if self.counters["connects"] != self._connects_seen
                   else "changed" if self._status_dirty
                   else "heartbeat" if now - last_beat >= self._heartbeat_s else "")
            if not why:
                continue
            self._connects_seen = self.counters["connects"]
            self._status_dirty = False
            last_beat = now
            if why == "heartbeat":
                self.counters["heartbeats"] += 1
            try:
                await self._publish_status(self._online, why if self._online else self._offline_reason,
                                           self._heartbeat_detail())
            except Exception as exc:  # presence is best effort; the next heartbeat says it again
                self._warn(f"status not stored ({exc or type(exc).__name__})")

    # ------------------------------------------------------------------ delivery

    def _warn(self, text: str) -> None:
        # A failover makes many of these at once: one line per 5 s is enough.
        if time.monotonic() - self._last_warning > 5.0:
            self._last_warning = time.monotonic()
            log.warning("edge %s: %s", self.identity.client_id, text)

    def _commit_acks(self) -> None:
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        try:
            self.outbox.remove(acked)
        except OutboxError as exc:
            # Kept records are sent again after a restart with the same id: the stream drops the copy.
            self.counters["outbox_errors"] += 1
            log.warning("edge %s: %s", self.identity.client_id, exc)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._commit_acks()
            if not self.connected or self._js is None:
                continue
            wait = self._retry_after - time.monotonic()
            if wait > 0:
                loop.call_later(wait, self._wake.set)
                continue
            room = self._window - self._inflight - len(self._waiting)
            if room > 0:
                try:
                    self._waiting.extend(self.outbox.take(room))
                except Exception as exc:
                    self.counters["outbox_errors"] += 1
                    log.warning("edge %s: cannot read outbox: %s", self.identity.client_id, exc)
                    loop.call_later(1.0, self._wake.set)
            self._send_waiting()

    def _send_waiting(self) -> None:
        """Start a publish for each waiting record whose device has nothing in flight, oldest first."""
        kept: list[OutboxMessage] = []
        blocked: set[str] = set()
        for message in self._waiting:
            key = order_key(message.topic)
            if key in self._busy or key in blocked or self._inflight >= self._window:
                blocked.add(key)  # a device's later records wait behind its earlier ones
                kept.append(message)
                continue
            self._busy.add(key)
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(message, key))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        self._waiting = kept

    async def _send(self, message: OutboxMessage, key: str) -> None:
        assert self._js is not None
        msg_id = record_msg_id(self.identity.client_id, message)
        try:
            ack = await self._js.publish(topic_to_subject(message.topic), message.payload, timeout=self._timeout,
                                         headers={"Nats-Msg-Id": msg_id})
        except APIError as exc:
            if exc.code == 400 or exc.err_code in (10054,):  # a bad request (or too big) is never stored
                self.counters["refused_by_cluster"] += 1
                log.warning("edge %s: the cluster refused record %d on %s: %s", self.identity.client_id,
                            message.seq, message.topic, exc)
                self._acked.append(message.seq)
            else:
                self._retry(message, exc)
        except Exception as exc:  # no leader yet, node gone, timeout: all retried with the same id
            self._retry(message, exc)
        else:
            self._failed_rounds = 0
            self.counters["published"] += 1
            if ack.duplicate:
                self.counters["duplicates"] += 1
            self._acked.append(message.seq)
        finally:
            self._busy.discard(key)
            self._inflight -= 1
            self._wake.set()

    def _retry(self, message: OutboxMessage, exc: BaseException) -> None:
        self.counters["publish_errors"] += 1
        now = time.monotonic()
        if now >= self._retry_after:
            # The first failure after a pause starts the next, longer pause; the rest of the window's
            # failures (one failover fails them all) share it.
            self._failed_rounds += 1
            low, high = self._backoff
            self._retry_after = now + min(high, low * 2 ** min(self._failed_rounds - 1, 5))
        bisect.insort(self._waiting, message, key=lambda m: m.seq)
        self._warn(f"record {message.seq} not stored yet ({exc or type(exc).__name__}); retrying "
                   f"({self.counters['publish_errors']} failures so far)")


class NatsLinkPublisher:
    """A gateway's publish sink over a ``NatsEdgeLink``: every message, retained ones too, goes through the outbox."""

    def __init__(self, link: NatsEdgeLink) -> None:
        self.link = link
        self.counters: dict[str, int] = {"stored": 0}

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Store ``payload`` for ordered, acknowledged delivery to its stream.

        Raises:
            ValueError: wildcard topic or oversized payload.
            OutboxError: the disk write failed (the caller's device should send again).
        """
        self.link.publish(topic, payload, retain=retain)
        self.counters["stored"] += 1

    def stats(self) -> dict[str, float]:
        """The link's figures plus this sink's counters."""
        return {**self.link.stats(), **{k: float(v) for k, v in self.counters.items()}}


@contextlib.asynccontextmanager
async def nats_link_publisher(servers: Sequence[str], identity: EdgeIdentity, data_dir: Path,
                              **link_options: Any) -> AsyncIterator[NatsLinkPublisher]:
    """Open a ``NatsEdgeLink`` on ``data_dir`` and a ``NatsLinkPublisher`` over it; stop both on exit.

    Raises:
        EdgeLinkError: no server, or the outbox folder is unusable or held by another process.
    """
    link = NatsEdgeLink(servers, identity, data_dir, **link_options)
    await link.start()
    try:
        yield NatsLinkPublisher(link)
    finally:
        await link.stop()
        log.info("edge %s: NATS link stopped: delivered %d, dropped %d, appended %d", identity.client_id,
                 link.outbox.delivered, link.outbox.dropped, link.outbox.appended)
