"""The NATS JetStream transport: the same handlers the MQTT client feeds, fed from partition streams.

A stage does not know which transport it runs on: ``DeviceIngest`` subscribes its handler and
publishes dead letters, the rules service publishes transitions, alerting publishes alert states, all
through ``subscribe`` and ``publish_nowait``. ``NatsBridge`` offers those two calls; the cluster
runtime (``vigil.cluster``) fetches a partition's stream and calls ``deliver`` with the batch as
``broker.mqtt.Message`` objects, exactly as ``MqttClient`` would.

Transitions go to the R3 stream ``VIGIL_TRANSITIONS`` with ``Nats-Msg-Id`` = fingerprint, status,
severity and episode start: an instance that takes a partition over and replays messages after the
last checkpoint re-makes the same transitions, and JetStream drops the copies (duplicate window).
They are stored one after the other, in order, each retried until stored; ``flush`` waits until
the queue is empty, and the runtime calls it before a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from paho.mqtt.client import topic_matches_sub

from broker.contracts import TOPIC_ROOT, decode_transition
from broker.mqtt import Message
from broker.nats_server import PARTITION_PREFIX

log = logging.getLogger(__name__)

TRANSITIONS_STREAM = "VIGIL_TRANSITIONS"
TRANSITIONS_SUBJECT = "vigil.transitions"
LEASES_BUCKET = "vigil_leases"
CHECKPOINTS_BUCKET = "vigil_checkpoints"
_TRANSITION_PREFIX = f"{TOPIC_ROOT}/transitions/"

Handler = Callable[[list[Message]], None]


def partition_stream(n: int) -> str:
    """The stream holding partition ``n``'s device messages."""
    return f"VIGIL_P{n}"


def topic_to_subject(topic: str) -> str:
    """An MQTT topic as NATS names it (``/`` -> ``.``, a ``.`` inside a level -> ``//``)."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def subject_to_topic(subject: str, drop: int = 0) -> str:
    """The MQTT topic of a subject, without its first ``drop`` tokens (the inverse of ``topic_to_subject``)."""
    return "/".join(tok.replace("//", ".") for tok in subject.split(".")[drop:])


def device_topic(subject: str) -> str:
    """``vigil.p.{n}.{kind}.{device}.{channel}`` -> ``vigil/v1/{kind}/{device}/{channel}``."""
    return f"{TOPIC_ROOT}/" + subject_to_topic(subject, 3)


def transition_msg_id(payload: bytes) -> str:
    """The de-duplication id of a transition: the same episode's same decision has the same id."""
    t = decode_transition(payload)
    started = t.started_at.timestamp() if t.started_at is not None else t.ts.timestamp()
    return f"{t.fingerprint}:{t.status}:{t.severity.value}:{started:.3f}"


async def ensure_layout(js: JetStreamContext, partitions: int, replicas: int, *, max_age_s: float,
                        duplicate_window_s: float) -> dict[str, KeyValue]:
    """Create (or find) the partition streams, the transitions stream and the KV buckets; returns the buckets.

    Every instance calls this at start; creating what exists with the same settings is a no-op.
    """
    for n in range(partitions):
        await _stream(js, StreamConfig(name=partition_stream(n), subjects=[f"{PARTITION_PREFIX}.{n}.>"],
                                       num_replicas=replicas, storage=StorageType.FILE, max_age=max_age_s,
                                       duplicate_window=min(duplicate_window_s, max_age_s)))
    await _stream(js, StreamConfig(name=TRANSITIONS_STREAM, subjects=[f"{TRANSITIONS_SUBJECT}.>"],
                                   num_replicas=replicas, storage=StorageType.FILE, max_age=max_age_s,
                                   duplicate_window=min(duplicate_window_s, max_age_s)))
    buckets = {}
    for name in (LEASES_BUCKET, CHECKPOINTS_BUCKET):
        try:
            buckets[name] = await js.key_value(name)
        except (NotFoundError, BadRequestError):
            # No TTL: lease expiry is judged by the instances (vigil.cluster_leases), so a JetStream
            # leader election longer than the lease time does not expire every lease at once.
            buckets[name] = await js.create_key_value(KeyValueConfig(
                bucket=name, history=1, replicas=replicas, storage=StorageType.FILE))
    return buckets


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.stream_info(config.name)  # created by another instance meanwhile


async def start_consumer(js: JetStreamContext, stream: str, durable: str, after_seq: int, *,
                         ack_wait_s: float = 60.0) -> JetStreamContext.PullSubscription:
    """A fresh durable pull consumer on ``stream`` delivering from sequence ``after_seq + 1``.

    The previous owner's consumer (if any) is deleted first: where to start is the checkpoint's
    business, not the consumer's. Acks are cumulative (``AckPolicy.ALL``) and sent only for what a
    saved checkpoint covers.
    """
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, durable)
    start = (dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1) if after_seq
             else dict(deliver_policy=DeliverPolicy.ALL))
    await js.add_consumer(stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, ack_wait=ack_wait_s,
                                                 max_ack_pending=1_000_000, **start))
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


class NatsBridge:
    """``subscribe`` / ``publish_nowait`` for stages, on a NATS connection; ``deliver`` feeds the handlers."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, name: str) -> None:
        self.nc = nc
        self.js = js
        self.name = name
        self._handlers: list[tuple[str, Handler]] = []
        self._outbox: deque[tuple[str, bytes, str]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._core: list[asyncio.Task[None]] = []
        self._last_warning = 0.0
        self.counters: dict[str, int] = {"transitions": 0, "transition_duplicates": 0, "published": 0,
                                         "publish_errors": 0, "delivered": 0}

    # -- the MqttClient surface the stages use

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Register ``handler`` for messages whose topic matches ``topic_filter``."""
        self._handlers.append((topic_filter, handler))

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, **_: Any) -> None:
        """Publish without waiting: transitions to JetStream (de-duplicated), the rest on plain NATS."""
        if topic.startswith(_TRANSITION_PREFIX):
            try:
                msg_id = transition_msg_id(payload)
            except Exception:
                log.warning("%s: not a transition payload on %s; dropped", self.name, topic)
                return
            subject = f"{TRANSITIONS_SUBJECT}." + topic_to_subject(topic[len(_TRANSITION_PREFIX):])
            self._outbox.append((subject, payload, msg_id))
            self._idle.clear()
            if self._sender is None or self._sender.done():
                self._sender = asyncio.get_running_loop().create_task(self._send_transitions(),
                                                                      name=f"transitions-{self.name}")
            return
        self.counters["published"] += 1
        self._core = [t for t in self._core if not t.done()]
        self._core.append(asyncio.get_running_loop().create_task(self._publish_core(topic_to_subject(topic), payload)))

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up."""
        return bool(self.nc.is_connected)

    # -- the runtime's side

    def deliver(self, messages: list[Message]) -> None:
        """Hand a batch to every handler whose filter matches, in order (the handler may raise NotDurable)."""
        by_handler: dict[Handler, list[Message]] = {}
        for msg in messages:
            for topic_filter, handler in self._handlers:
                if topic_matches_sub(topic_filter, msg.topic):
                    by_handler.setdefault(handler, []).append(msg)
        self.counters["delivered"] += len(messages)
        for handler, batch in by_handler.items():
            handler(batch)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every transition published so far is stored by JetStream.

        Raises:
            TimeoutError: still not stored after ``timeout``; the caller must not checkpoint. The
                sender goes on retrying in the background.
        """
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def _send_transitions(self) -> None:
        """Store queued transitions one after the other, each retried until stored.

        One at a time keeps a device's transitions in their order in the stream (a retried "firing"
        must not land after its "resolved"); transitions are rare, so the round trip does not matter.
        """
        while self._outbox:
            subject, payload, msg_id = self._outbox[0]
            try:
                ack = await self.js.publish(subject, payload, timeout=5.0, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:
                self.counters["publish_errors"] += 1
                if time.monotonic() - self._last_warning > 5.0:  # a failover makes many of these at once
                    self._last_warning = time.monotonic()
                    log.warning("%s: transition %s not stored yet (%s); retrying (%d failures so far)", self.name,
                                msg_id, exc or type(exc).__name__, self.counters["publish_errors"])
                await asyncio.sleep(0.2)
                continue
            self._outbox.popleft()
            self.counters["transitions"] += 1
            if ack.duplicate:
                self.counters["transition_duplicates"] += 1
        self._idle.set()

    async def _publish_core(self, subject: str, payload: bytes) -> None:
        try:
            await self.nc.publish(subject, payload)
        except Exception as exc:  # alert states and dead letters on plain NATS are best effort, like QoS 0
            self.counters["publish_errors"] += 1
            log.debug("%s: publish %s failed: %s", self.name, subject, exc)


def message_of(subject: str, payload: bytes) -> Message:
    """A partition stream message as the ``Message`` the MQTT client would have made of it."""
    return Message(device_topic(subject), payload, 1, False, time.time())


def encode_json(obj: Any) -> bytes:
    """JSON bytes (msgspec) for KV values."""
    return msgspec.json.encode(obj)
