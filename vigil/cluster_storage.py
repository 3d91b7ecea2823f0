"""The storage stage on one partition of a cluster instance: the outbox before the checkpoint, the written position in it.

A partition worker (``vigil.cluster.PartitionWorker``) hands every fetched batch to its ingest, whose
storage consumer appends the batch's lines to this partition's durable outbox (``storage.outbox``)
before the worker goes on; a checkpoint (and the stream acknowledgement) is written only after
that, so a message is in the outbox before its stream position is saved. The outbox is on the
instance's disk, though, and an instance killed for good takes its undrained lines with it. So the
checkpoint also carries ``stored_seq``: the last stream sequence whose lines the drainer has
written to the time-series store. The next owner re-stores the messages after ``stored_seq`` (a
storage-only catch-up: the rules state already covers them) before it continues. Replayed points
have the same measurement, tags and timestamp as the first copy, so InfluxDB overwrites them with
the same fields; only status messages without a timestamp of their own (stamped at receipt) can
land twice.

Alert states and dead letters are published on plain NATS subjects in a cluster (nothing there
stores them), so ``LoopbackClient`` hands a stage's own publishes on those topics to the storage
stage of the same worker: each partition stores its ingest's dead letters, and the alerting holder
stores the alert state changes (``alert_storage``). Those points are written at most once across a
crash (an alert's change is committed to alerting's database, and replicated, before it is
published; a holder killed before its outbox drained loses the points, not the alert).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from msgspec.structs import replace
from paho.mqtt.client import topic_matches_sub

from broker.contracts import ALERTS_FILTER, DEAD_LETTER_FILTER, Channel
from broker.ingest import DeviceIngest, RegisteredDevices
from broker.mqtt import Message, MqttClient, NotDurable
from broker.registry import DeviceRegistry
from storage.config import StorageConfig
from storage.service import StorageService

log = logging.getLogger(__name__)


def stored_channels(config: StorageConfig) -> set[Channel]:
    """The device channels the storage stage keeps (as ``StorageService.attach`` chooses them)."""
    out = set()
    if config.store_telemetry:
        out.add(Channel.TELEMETRY)
    if config.store_events:
        out.add(Channel.EVENT)
    if config.store_status:
        out.add(Channel.STATUS)
    return out


class PartitionStorage:
    """One partition's storage stage and the map from outbox lines to stream sequences."""

    def __init__(self, config: StorageConfig, *, mqtt: MqttClient, ingest: DeviceIngest, registry: DeviceRegistry,
                 state_dir: Path, stored_seq: int, known: RegisteredDevices | None, stage: str) -> None:
        self.service = StorageService(config, mqtt=mqtt, ingest=ingest, registry=registry, state_dir=state_dir)
        self.config = config
        self.mqtt = mqtt
        self.known = known
        self.stage = stage
        self.stored_seq = stored_seq
        """Every message up to this stream sequence is in the time-series store."""
        self._marks: deque[tuple[int, int]] = deque()
        """(outbox lines appended once the batch was in, the batch's last stream sequence), oldest first."""
        self._catch_up: DeviceIngest | None = None
        self.caught_up = 0

    def attach(self) -> None:
        """Open the outbox and register the storage consumer on the partition's ingest."""
        self.service.attach()

    def appended(self, seq: int) -> None:
        """The batch ending at stream sequence ``seq`` is in the outbox (its handler returned)."""
        total = self.service.outbox.counters["appended"]
        if self._marks and self._marks[-1][0] == total:
            self._marks[-1] = (total, seq)  # nothing stored from it (not stored channels): same outbox position
        else:
            self._marks.append((total, seq))

    def written_seq(self) -> int:
        """The last stream sequence whose lines the drainer has written (or dropped, counted) by now."""
        counters = self.service.outbox.counters
        done = counters["committed"] + counters["dropped"]
        while self._marks and self._marks[0][0] <= done:
            self.stored_seq = max(self.stored_seq, self._marks.popleft()[1])
        return self.stored_seq

    def catch_up(self, batch: list[Message]) -> None:
        """Store messages the rules state already covers (after a takeover): a storage-only ingest.

        Raises:
            NotDurable: the outbox refused the lines; the caller retries.
        """
        if self._catch_up is None:
            # Its own ingest, called directly: its subscription must not reach the partition's bridge.
            self._catch_up = DeviceIngest(as_mqtt(_Unsubscribed(self.mqtt)), stage=f"{self.stage}-catchup",
                                          known_device=self.known)
            self._catch_up.add_consumer(stored_channels(self.config), self.service.on_device_messages)
        self.caught_up += len(batch)
        self._catch_up.on_batch(batch)

    def stats(self) -> dict[str, float]:
        """The storage stage's counters and this partition's written position."""
        out = self.service.stats()
        out["stored_seq"] = float(self.written_seq())
        out["caught_up"] = float(self.caught_up)
        return out


LOOPBACK_FILTERS = (ALERTS_FILTER, DEAD_LETTER_FILTER)


class LoopbackClient:
    """A bridge whose own publishes on alert and dead-letter topics also reach the handlers subscribed here."""

    def __init__(self, inner: object) -> None:
        self.inner = as_mqtt(inner)
        self.local: list[tuple[str, Callable[[list[Message]], None]]] = []
        self.counters = {"looped": 0, "loop_not_stored": 0}

    @property
    def connected(self) -> bool:
        """The inner client's connection."""
        return bool(self.inner.connected)

    def subscribe(self, topic_filter: str, handler: Callable[[list[Message]], None], qos: int = 1) -> None:
        """Alert and dead-letter filters stay here (fed by publishes); the rest go to the inner client."""
        if topic_filter in LOOPBACK_FILTERS:
            self.local.append((topic_filter, handler))
        else:
            self.inner.subscribe(topic_filter, handler, qos)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, **kwargs: Any) -> None:
        """Publish on the inner client, and hand the message to the matching local handlers."""
        self.inner.publish_nowait(topic, payload, qos, retain, **kwargs)
        for topic_filter, handler in self.local:
            if not topic_matches_sub(topic_filter, topic):
                continue
            self.counters["looped"] += 1
            try:
                handler([Message(topic, payload, qos, retain, time.time())])
            except NotDurable as exc:
                try:  # once more; a full disk then costs this point (counted), never the publisher's work
                    exc.retry()
                except (NotDurable, OSError) as again:
                    self.counters["loop_not_stored"] += 1
                    log.warning("cluster storage: %s not stored: %s", topic, again)


def alert_storage(config: StorageConfig, *, mqtt: MqttClient, registry: DeviceRegistry,
                  state_dir: Path) -> StorageService:
    """A storage stage for the alerting holder: alert states and dead letters only (``mqtt``: a loopback)."""
    only = replace(config, store_telemetry=False, store_events=False, store_status=False)
    ingest = DeviceIngest(as_mqtt(_Unsubscribed(mqtt)), stage="alerting-storage")
    return StorageService(only, mqtt=mqtt, ingest=ingest, registry=registry, state_dir=state_dir)


class _Unsubscribed:
    """A client whose subscriptions go nowhere (the caller feeds the handler); publishes go to ``mqtt``."""

    def __init__(self, mqtt: MqttClient) -> None:
        self.mqtt = mqtt

    def subscribe(self, *_: Any, **__: Any) -> None:
        """Ignored: the catch-up ingest is called directly."""

    def publish_nowait(self, *args: Any, **kwargs: Any) -> None:
        """Dead letters of the catch-up go out as the partition's would."""
        self.mqtt.publish_nowait(*args, **kwargs)


def as_mqtt(bridge: object) -> MqttClient:
    """The bridge offers the MqttClient calls the stages make (``subscribe``, ``publish_nowait``)."""
    return cast(MqttClient, bridge)
