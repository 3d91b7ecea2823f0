"""``EdgeLink``: an edge agent's store-and-forward connection to the broker.

Every message an agent publishes is first committed to the durable outbox, then handed to
MQTT with QoS 1 in sequence order, at most ``window`` at a time, and deleted only after the
broker's PUBACK. While the broker is unreachable the outbox fills (bounded, oldest dropped
and counted past the bound); when it returns, paho re-sends the messages that were in
flight (same order, DUP set) and the link continues with the rest. Delivery is at least
once: a message in flight when the connection or the agent died can arrive twice.

The agent's own retained ``DeviceStatus`` says online on every connect, the MQTT last will
says offline (``connection_lost``), a clean stop says offline (``shutdown``), and a heartbeat
re-publishes the online status with queue figures every ``heartbeat_s`` seconds. Status
messages bypass the outbox: a stale "online" replayed after an outage would be a lie.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.contracts import (
    MAX_PAYLOAD_BYTES,
    Channel,
    DeviceEvent,
    DeviceStatus,
    Kind,
    Telemetry,
    device_topic,
    encode,
    utcnow,
)
from broker.mqtt import NO_MATCHING_SUBSCRIBERS, Handler, MqttClient, MqttError, Will
from edge.errors import EdgeError
from edge.runtime.identity import EdgeIdentity
from edge.runtime.outbox import DurableOutbox, OutboxError

log = logging.getLogger(__name__)
_HOLD_RETRY_S = 1.0
"""How long held (unrouted) messages wait before they are sent again."""

StatusDetail = Callable[[], dict[str, Any]]


class EdgeLinkError(EdgeError):
    """The link cannot be used (outbox locked by another process, unusable data folder)."""


def lock_outbox_folder(path: Path) -> int:
    """Take the exclusive lock file ``path`` of an outbox folder; returns its descriptor (close it to release).

    Raises:
        EdgeLinkError: another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EdgeLinkError(f"outbox folder {path.parent} is in use by another agent") from None
    return fd


class OutboxFront:
    """What every edge link offers its agent or gateway: commit to the durable outbox, say whether the device answers.

    The link (MQTT ``EdgeLink`` or NATS ``NatsEdgeLink``) provides ``outbox``, ``counters``, ``_clock``,
    ``_wake`` (set when there is something to send) and the online state its status messages report.
    """

    outbox: DurableOutbox
    counters: dict[str, int]
    _clock: Callable[[], float]
    _wake: asyncio.Event
    _online: bool
    _offline_reason: str
    _status_dirty: bool

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Commit a message to the outbox for delivery; returns its sequence number.

        Raises:
            ValueError: the topic is not a publish topic or the payload exceeds the contract's limit.
            OutboxError: the disk write failed (the message is not stored).
        """
        if not topic or "+" in topic or "#" in topic or len(topic.encode("utf-8")) > 65535:
            raise ValueError(f"not a publish topic: {topic[:200]!r}")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            seq = self.outbox.append(topic, payload, retain=retain, now=self._clock())
        except OutboxError:
            self.counters["outbox_errors"] += 1
            raise
        self._wake.set()
        return seq

    def publish_telemetry(self, kind: Kind | str, device_id: str, telemetry: Telemetry) -> int:
        """Queue a device's telemetry on ``vigil/v1/{kind}/{id}/telemetry``."""
        return self.publish(device_topic(kind, device_id, Channel.TELEMETRY), encode(telemetry))

    def publish_event(self, kind: Kind | str, device_id: str, event: DeviceEvent) -> int:
        """Queue a device's event on ``vigil/v1/{kind}/{id}/event``."""
        return self.publish(device_topic(kind, device_id, Channel.EVENT), encode(event))

    def publish_device_status(self, kind: Kind | str, device_id: str, status: DeviceStatus) -> int:
        """Queue a hosted device's status (gateways report each field device this way; retained on MQTT)."""
        return self.publish(device_topic(kind, device_id, Channel.STATUS), encode(status), retain=True)

    def set_online(self, online: bool, reason: str) -> None:
        """Say whether the device behind the agent answers (an agent can be up while its box is not).

        The next status message says so (at once when connected) and later heartbeats repeat it.
        """
        if online != self._online or (not online and reason != self._offline_reason):
            self._online = online
            self._offline_reason = "" if online else reason
            self._status_dirty = True


class EdgeLink(OutboxFront):
    """Durable, ordered, acknowledged publishing plus presence for one edge agent."""

    def __init__(
        self,
        mqtt_url: str,
        identity: EdgeIdentity,
        data_dir: Path,
        *,
        max_queued: int = 100_000,
        window: int = 200,
        heartbeat_s: float = 30.0,
        keepalive: int = 30,
        ca_file: str | None = None,
        backoff_min: float = 0.2,
        backoff_max: float = 30.0,
        status_detail: StatusDetail | None = None,
        clock: Callable[[], float] = time.time,
        hold_unrouted: bool = False,
    ) -> None:
        """Open the outbox under ``data_dir`` (publishing works before ``start``).

        Args:
            mqtt_url: ``mqtt://host:port`` (credentials from ``identity`` are added).
            identity: client id, credentials and status topic.
            data_dir: folder of the outbox; one link per folder (a lock file enforces it).
            max_queued: the outbox bound in messages.
            window: QoS 1 messages in flight at once.
            heartbeat_s: period of the retained online status with figures.
            keepalive: MQTT keepalive in seconds (the broker fires the will after 1.5x).
            ca_file: CA bundle for ``mqtts://``.
            backoff_min: first reconnect delay in seconds.
            backoff_max: longest reconnect delay in seconds.
            status_detail: extra figures merged into each heartbeat's ``detail``.
            clock: epoch seconds (tests inject one).
            hold_unrouted: keep a message the broker accepted with "no matching subscribers" (MQTT 5
                reason 0x10) and send it again later. The platform's persistent session always
                subscribes to device topics, so 0x10 means the broker lost that session (a crash
                before its autosave): without holding, those messages would be dropped.

        Raises:
            EdgeLinkError: another process holds the outbox, or it cannot be opened.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self.identity = identity
        self._url = identity.broker_url(mqtt_url)
        self._window = window
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._status_detail = status_detail
        self._mqtt_options: dict[str, Any] = {
            "keepalive": keepalive, "ca_file": ca_file, "backoff_min": backoff_min, "backoff_max": backoff_max,
            "max_pending": max(window * 2, 100),
        }
        self._subscriptions: list[tuple[str, Handler, int]] = []
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeLinkError(f"cannot create outbox folder {data_dir}: {exc.strerror}") from None
        self._lock_fd = self._lock(data_dir / "outbox.lock")
        try:
            self.outbox = DurableOutbox(data_dir / "outbox.sqlite3", max_queued)
        except OutboxError as exc:
            os.close(self._lock_fd)
            raise EdgeLinkError(str(exc)) from exc
        self.mqtt = self._new_client()
        self._inflight = 0
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = clock()
        self._seen_connects = 0
        self._stopped = False
        self._online = True
        self._offline_reason = ""
        self._status_dirty = False
        self.counters: dict[str, int] = {"refused_by_broker": 0, "connect_refusals": 0, "heartbeats": 0,
                                         "outbox_errors": 0, "held_unrouted": 0}
        self._hold_unrouted = hold_unrouted
        self._unrouted_at: float | None = None

    @staticmethod
    def _lock(path: Path) -> int:
        return lock_outbox_folder(path)

    def _new_client(self) -> MqttClient:
        will = Will(self.identity.status_topic, self._status_payload(False, "connection_lost", with_ts=False))
        client = MqttClient(self._url, self.identity.client_id, will=will, **self._mqtt_options)
        for topic_filter, handler, qos in self._subscriptions:
            client.subscribe(topic_filter, handler, qos)
        return client

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EdgeLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start connecting in the background; returns at once (the agent works offline too)."""
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name=f"edge-connect-{self.identity.client_id}"),
            asyncio.create_task(self._drain(), name=f"edge-drain-{self.identity.client_id}"),
            asyncio.create_task(self._presence(), name=f"edge-presence-{self.identity.client_id}"),
        ]
        self._wake.set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a broker connection; returns whether there is one."""
        deadline = time.monotonic() + timeout
        while not self.mqtt.connected:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout``, say offline, disconnect, close the outbox."""
        if self._stopped:
            return
        self._stopped = True
        if self.mqtt.connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()
        if self.mqtt.connected:
            self.mqtt.publish_nowait(self.identity.status_topic, self._status_payload(False, "shutdown"),
                                     1, True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.mqtt.stop(drain_timeout=timeout)
        self._commit_acks()
        self.outbox.close()
        os.close(self._lock_fd)

    async def flush(self) -> None:
        """Wait until the outbox is empty (everything acknowledged by the broker)."""
        while len(self.outbox) > 0 or self._inflight > 0 or self._acked:
            self._wake.set()
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ publishing

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Receive messages (commands) in batches; see ``MqttClient.subscribe``."""
        self._subscriptions.append((topic_filter, handler, qos))
        self.mqtt.subscribe(topic_filter, handler, qos)

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        return self.mqtt.connected

    @property
    def in_flight(self) -> int:
        """Messages handed to MQTT and not yet acknowledged."""
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
            "connected": 1.0 if self.mqtt.connected else 0.0,
            "connects": float(self.mqtt.counters["connects"]),
            "disconnects": float(self.mqtt.counters["disconnects"]),
            **{k: float(v) for k, v in self.counters.items()},
        }

    # ------------------------------------------------------------------ internals

    def _status_payload(self, online: bool, reason: str | None, *, with_ts: bool = True,
                        detail: dict[str, Any] | None = None) -> bytes:
        return encode(DeviceStatus(ts=utcnow() if with_ts else None, online=online, reason=reason,
                                   agent=self.identity.agent, detail=detail or {}))

    def _heartbeat_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "uptime_s": round(self._clock() - self._started_at, 1),
            "queued": len(self.outbox),
            "dropped": self.outbox.dropped,
            "delivered": self.outbox.delivered,
        }
        if self._status_detail is not None:
            try:
                detail.update(self._status_detail())
            except Exception:
                log.exception("edge %s: status detail provider failed", self.identity.client_id)
        return detail

    async def _connect_forever(self) -> None:
        low, high = self._mqtt_options["backoff_min"], self._mqtt_options["backoff_max"]
        attempt = 0
        while True:
            try:
                # MqttClient keeps retrying unreachable brokers itself; it only gives up when refused.
                await self.mqtt.start(timeout=10 * 365 * 24 * 3600.0)
                return
            except MqttError as exc:
                self.counters["connect_refusals"] += 1
                log.error("edge %s: %s", self.identity.client_id, exc)
                attempt += 1
                await asyncio.sleep(min(high, low * 2 ** min(attempt, 16)) * random.uniform(0.5, 1.0))
                self.mqtt = self._new_client()
                self._seen_connects = 0

    async def _presence(self) -> None:
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            connects = self.mqtt.counters["connects"]
            now = time.monotonic()
            if not self.mqtt.connected:
                continue
            if connects != self._seen_connects:
                self._seen_connects = connects
                self._publish_presence("connected")
                last_beat = now
                self._wake.set()
            elif self._status_dirty:
                self._publish_presence("changed")
                last_beat = now
            elif now - last_beat >= self._heartbeat_s:
                self.counters["heartbeats"] += 1
                self._publish_presence("heartbeat")
                last_beat = now

    def _publish_presence(self, why: str) -> None:
        self._status_dirty = False
        reason = why if self._online else self._offline_reason
        self.mqtt.publish_nowait(self.identity.status_topic, self._status_payload(
            self._online, reason, detail=self._heartbeat_detail()), 1, True)

    def _on_acked(self, seq: int, accepted: bool) -> None:
        self._inflight -= 1
        self._acked.append(seq)
        if not accepted:
            # Retrying a message the broker refuses (ACL) would block the queue forever.
            self.counters["refused_by_broker"] += 1
            log.warning("edge %s: broker refused message %d", self.identity.client_id, seq)
        self._wake.set()

    def _on_reason(self, seq: int, code: int) -> None:
        if code == NO_MATCHING_SUBSCRIBERS:
            # Accepted but nobody subscribed: keep it and send it again once the platform is back.
            self._inflight -= 1
            self.counters["held_unrouted"] += 1
            if self._unrouted_at is None:
                log.warning("edge %s: no subscriber for device messages (the broker lost the platform's "
                            "session?); holding them in the outbox", self.identity.client_id)
            self._unrouted_at = time.monotonic()
            self._wake.set()
            return
        self._on_acked(seq, code < 0x80)

    def _held_wait(self) -> float:
        """Seconds until held messages are resent (0: resend now or nothing held)."""
        if self._unrouted_at is None:
            return 0.0
        if self._inflight > 0:
            return 0.05  # let the rest of the window come back first
        left = self._unrouted_at + _HOLD_RETRY_S - time.monotonic()
        if left > 0:
            return left
        self._unrouted_at = None
        self._commit_acks()
        self.outbox.rewind()  # the held messages are the oldest still stored: resent in order
        return 0.0

    def _commit_acks(self) -> None:
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        try:
            self.outbox.remove(acked)
        except OutboxError as exc:
            # Kept messages are sent again after a restart: a duplicate, never a loss.
            self.counters["outbox_errors"] += 1
            log.warning("edge %s: %s", self.identity.client_id, exc)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._commit_acks()
            if not self.mqtt.connected:
                continue
            wait = self._held_wait()
            if wait > 0:
                asyncio.get_running_loop().call_later(wait, self._wake.set)
                continue
            room = self._window - self._inflight
            if room <= 0:
                continue
            try:
                batch = self.outbox.take(room)
            except Exception as exc:
                self.counters["outbox_errors"] += 1
                log.warning("edge %s: cannot read outbox: %s", self.identity.client_id, exc)
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            for message in batch:
                self._inflight += 1
                try:
                    if self._hold_unrouted:
                        self.mqtt.publish_nowait(message.topic, message.payload, 1, message.retain,
                                                 on_reason=functools.partial(self._on_reason, message.seq))
                    else:
                        self.mqtt.publish_nowait(message.topic, message.payload, 1, message.retain,
                                                 on_acked=functools.partial(self._on_acked, message.seq))
                except (ValueError, TypeError) as exc:
                    # paho refused it locally; a stored message it can never send must not stall the queue.
                    log.warning("edge %s: cannot send message %d: %s", self.identity.client_id, message.seq, exc)
                    self._on_acked(message.seq, False)
