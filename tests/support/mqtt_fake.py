"""The one in-memory MQTT client for pure-logic unit tests: ``FakeMqtt`` stands in for ``broker.mqtt.MqttClient``.

It has the client's public interface (``tests/unit/broker/test_mqtt_fake.py`` compares the signatures)
and its delivery rules: handlers subscribe to MQTT filters (``+`` and ``#``, matched by paho's own
``topic_matches_sub``), receive lists of ``broker.mqtt.Message``, and each handler of the matching
filters sees each message once, in one batch per delivery. Publishes are recorded with their QoS and
retain flag and, as with a real broker (MQTT's no-local off), reach this client's own matching
subscriptions, but only on ``deliver_pending()`` / ``flush()``: a handler never runs inside the
``publish`` that caused it. ``inject()`` delivers a message as if the broker sent it. QoS 1 publishes
are acknowledged at once (``on_acked(True)``, ``on_reason(0)``) unless ``refuse`` holds a reason code.

Tests that need a broker's own behaviour (sessions, ACLs, redelivery, backpressure) use a real
Mosquitto (tests/conftest.py), not this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import topic_matches_sub

from broker.mqtt import AckCallback, Handler, Message, ReasonCallback


@dataclass(frozen=True, slots=True)
class Published:
    """One message the code under test published."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class PublishInfo:
    """What ``publish_nowait`` returns (the fields callers read of paho's ``MQTTMessageInfo``)."""

    mid: int
    rc: int = 0


class FakeMqtt:
    """In-memory ``MqttClient``: records publishes, matches subscriptions, delivers batches on demand."""

    def __init__(self, client_id: str = "fake", *, connected: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.client_id = client_id
        self.published: list[Published] = []
        self.counters: dict[str, int] = {"published": 0, "received": 0}
        self.refuse: int | None = None
        """A PUBACK reason code (>= 0x80 refused, 0x10 no matching subscribers) for every QoS 1 publish; None: 0."""
        self.paused = False
        self.started = False
        self.last_not_durable: str | None = None
        self._connected = connected
        self._stalled_since: float | None = None
        self._clock = clock
        self._handlers: dict[str, list[Handler]] = {}
        self._sub_qos: dict[str, int] = {}
        self._stale: set[str] = set()
        self._queue: list[Message] = []
        self._mid = 0

    # ------------------------------------------------------------------ state, as MqttClient reports it

    @property
    def connected(self) -> bool:
        """Whether the client is connected (set by the test)."""
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self._connected = value

    @property
    def stalled_since(self) -> float | None:
        """Monotonic time since which a batch waits to be made durable; set by a test to simulate a stall."""
        return self._stalled_since

    @stalled_since.setter
    def stalled_since(self, value: float | None) -> None:
        self._stalled_since = value

    @property
    def pending(self) -> int:
        """Unacknowledged QoS 1 publishes: none, every publish is acknowledged at once."""
        return 0

    @property
    def topic_filters(self) -> frozenset[str]:
        """The filters subscribed."""
        return frozenset(self._sub_qos)

    @property
    def forgotten(self) -> frozenset[str]:
        """Filters ``forget`` was asked to drop."""
        return frozenset(self._stale)

    # ------------------------------------------------------------------ MqttClient's public API

    async def __aenter__(self) -> FakeMqtt:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 10.0) -> None:
        """Mark the client started and connected."""
        self.started = True
        self._connected = True

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Deliver what is queued, then disconnect."""
        self.deliver_pending()
        self._connected = False

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` in batches."""
        self._handlers.setdefault(topic_filter, []).append(handler)
        self._sub_qos[topic_filter] = max(qos, self._sub_qos.get(topic_filter, 0))
        self._stale.discard(topic_filter)

    def subscribe_many(self, topic_filters: Iterable[str], handler: Handler, qos: int = 1) -> None:
        """``subscribe`` for each filter."""
        for f in topic_filters:
            self.subscribe(f, handler, qos)

    def unsubscribe_many(self, topic_filters: Iterable[str], handler: Handler) -> None:
        """Stop delivering these filters to ``handler``; a filter without handlers is unsubscribed."""
        for f in topic_filters:
            handlers = [h for h in self._handlers.get(f, []) if h != handler]
            if handlers:
                self._handlers[f] = handlers
            else:
                self._handlers.pop(f, None)
                self._sub_qos.pop(f, None)

    def forget(self, topic_filters: Iterable[str]) -> None:
        """Record filters a persistent session may still hold (never the ones subscribed here)."""
        self._stale.update(f for f in topic_filters if f not in self._handlers)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                       on_acked: AckCallback | None = None,
                       on_reason: ReasonCallback | None = None) -> PublishInfo:
        """Record the message, queue it for this client's matching subscriptions, acknowledge QoS 1."""
        self._mid += 1
        self.published.append(Published(topic, bytes(payload), qos, retain))
        self.counters["published"] += 1
        self._queue.append(Message(topic, bytes(payload), qos, retain, self._clock()))
        if qos > 0:
            reason = 0 if self.refuse is None else self.refuse
            if on_reason is not None:
                on_reason(reason)
            if on_acked is not None:
                on_acked(reason < 0x80)
        return PublishInfo(self._mid)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
                      on_acked: AckCallback | None = None) -> None:
        """``publish_nowait`` (the fake never has unacknowledged messages to wait for)."""
        self.publish_nowait(topic, payload, qos, retain, on_acked=on_acked)

    async def flush(self) -> None:
        """Deliver everything queued (a real client waits for its PUBACKs here)."""
        self.deliver_pending()

    def pause(self) -> None:
        """Stop delivering: messages wait in the queue until ``resume``."""
        self.paused = True

    def resume(self) -> None:
        """Deliver again."""
        self.paused = False

    # ------------------------------------------------------------------ test helpers

    def inject(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Deliver one message as if the broker sent it; returns the number of handlers that got it."""
        return self._deliver([Message(topic, payload, qos, retain, self._clock())])

    def deliver_pending(self) -> int:
        """Deliver queued publishes (and any they cause) to matching handlers; returns deliveries made."""
        made = 0
        while self._queue and not self.paused:
            batch, self._queue = self._queue, []
            made += self._deliver(batch)
        return made

    def handlers_for(self, topic: str) -> list[Handler]:
        """The handlers a message on ``topic`` reaches: of every matching filter, each once, in subscription order."""
        out: list[Handler] = []
        for f, hs in self._handlers.items():
            if topic_matches_sub(f, topic):
                out.extend(h for h in hs if h not in out)
        return out

    def topics(self, prefix: str = "") -> list[str]:
        """Topics published so far, in order, optionally only those starting with ``prefix``."""
        return [p.topic for p in self.published if p.topic.startswith(prefix)]

    def payloads(self, topic_filter: str = "#") -> list[bytes]:
        """Payloads published on topics matching ``topic_filter``, in order."""
        return [p.payload for p in self.published if topic_matches_sub(topic_filter, p.topic)]

    def _deliver(self, messages: list[Message]) -> int:
        batches: dict[Handler, list[Message]] = {}  # bound methods compare equal: one batch per handler
        for m in messages:
            self.counters["received"] += 1
            for h in self.handlers_for(m.topic):
                batches.setdefault(h, []).append(m)
        for handler, batch in batches.items():
            handler(batch)
        return sum(len(b) for b in batches.values())

    def __getattr__(self, name: str) -> Any:
        # A clear failure when code under test uses a client method the fake lacks.
        raise AttributeError(f"FakeMqtt has no {name!r}; add it (tests/support/mqtt_fake.py) if MqttClient has it")
