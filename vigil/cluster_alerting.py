"""Alerting in a cluster: one holder at a time (the ``alerting`` lease), and its database follows the lease.

The holder runs the ordinary alerting stage (``AlertingService``: lifecycle, grouping, escalation,
the notification outbox, operator actions through its API) on the transitions stream. Its SQLite
database is replicated into JetStream as whole-database snapshots:

- whenever a committed change appeared (transitions handled, a notification sent, an escalation
  step, an operator's acknowledgement), with the transitions stream sequence it covers, but at most
  every ``max(SNAPSHOT_POLL_S, SNAPSHOT_COST_FACTOR x the last snapshot's cost)``: a snapshot costs
  ~6 ms of CPU per MB of database (bench/bench_cluster_alerting.py), so a big database is
  snapshotted less often rather than eating the core. Transitions are acknowledged only once a
  snapshot covers them (a new holder replays the rest);
- written as chunks under ``vigil_alerting`` in one of the holder's two slots (``{holder}.{0|1}.{n}``),
  the one the head key does not name, then the head key is replaced with a revision-checked update:
  a holder that lost its lease fails there and stops (fencing), a reader never sees half a snapshot,
  and a stale holder only ever overwrites its own slot that the head no longer names.

A new holder loads the latest snapshot into its state folder, opens alerting on it (open alerts,
groups, escalation positions, silences, acknowledgements and the notification outbox as they were),
and consumes the transitions stream from the sequence after the snapshot's. Notifications still
pending in the restored outbox are sent; every notification sent is recorded in the R3 KV bucket
``vigil_notified`` (key: a hash of its de-duplication key) right after the receiver accepted it, and
checked before sending, so one the old holder sent after its last snapshot is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import sqlite3
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from broker.contracts import TOPIC_ROOT, Rejected, decode_transition
from broker.mqtt import Message, NotDurable
from broker.nats_transport import TRANSITIONS_STREAM, NatsBridge, start_consumer, subject_to_topic
from broker.registry import DeviceRegistry
from storage.service import StorageService
from vigil.cluster_config import ClusterSettings
from vigil.cluster_leases import LeaseLost, patiently
from vigil.cluster_storage import LoopbackClient, alert_storage, as_mqtt
from vigil.config import VigilConfig

log = logging.getLogger(__name__)

SNAPSHOT_BUCKET = "vigil_alerting"
NOTIFIED_BUCKET = "vigil_notified"
HEAD_KEY = "head"
CHUNK_BYTES = 512 << 10
"""Below nats-server's default max_payload (1 MiB), whatever the servers' configuration."""
SNAPSHOT_POLL_S = 0.2
SNAPSHOT_COST_FACTOR = 10.0
NOTIFIED_MAX_AGE_S = 7 * 86_400.0
DB_NAME = "alerting.sqlite3"



class SentRow(Protocol):
    """What the sent-notification record needs of an alerting outbox row."""

    @property
    def id(self) -> int: ...

    @property
    def dedup_key(self) -> str: ...

class AlertingHost(Protocol):
    """What the alerting worker uses of its cluster instance."""

    name: str
    config: VigilConfig
    settings: ClusterSettings
    registry: DeviceRegistry
    state_dir: Path
    nc: NatsClient
    js: JetStreamContext


async def alerting_buckets(js: JetStreamContext, replicas: int) -> tuple[KeyValue, KeyValue]:
    """The snapshot bucket and the sent-notifications bucket (created if missing)."""
    out = []
    for name, max_age in ((SNAPSHOT_BUCKET, 0.0), (NOTIFIED_BUCKET, NOTIFIED_MAX_AGE_S)):
        try:
            out.append(await js.key_value(name))
        except (NotFoundError, BadRequestError):
            try:
                out.append(await js.create_key_value(KeyValueConfig(
                    bucket=name, history=1, replicas=replicas, storage=StorageType.FILE, ttl=max_age or None)))
            except BadRequestError:
                out.append(await js.key_value(name))  # created by another instance meanwhile
    return out[0], out[1]


class DatabaseSnapshots:
    """Whole-database snapshots of alerting's SQLite file in KV, fenced by the head key's revision."""

    def __init__(self, kv: KeyValue, owner: str) -> None:
        self.kv = kv
        self.owner = owner
        self.slot_prefix = re.sub(r"[^A-Za-z0-9_-]", "_", owner)
        self.rev: int | None = None
        self.generation = 0
        self.chunks = 0
        self.lock = asyncio.Lock()
        self.reader: sqlite3.Connection | None = None
        self.counters: dict[str, float] = {"snapshots": 0, "snapshot_bytes": 0, "snapshot_db_bytes": 0,
                                           "snapshot_ms_total": 0.0, "snapshot_errors": 0}
        self.saved_at: float | None = None
        self.last_cost_s = 0.0

    async def load(self) -> tuple[int, bytes | None]:
        """(transitions sequence covered, database image) of the latest snapshot; (0, None) if none."""
        try:
            entry = await self.kv.get(HEAD_KEY)
        except KeyNotFoundError:
            return 0, None
        self.rev = entry.revision
        head = msgspec.json.decode(entry.value or b"{}")
        self.generation, self.chunks = int(head["generation"]), int(head["chunks"])
        slot = str(head["slot"])
        parts = []
        for i in range(self.chunks):
            part = await self.kv.get(f"{slot}.{i}")
            parts.append(part.value or b"")
        image = zlib.decompress(b"".join(parts))
        log.info("alerting: snapshot generation %d of %s (%d bytes, transitions up to %d)", self.generation,
                 head.get("owner"), len(image), head["seq"])
        return int(head["seq"]), image

    def open(self, db_path: Path) -> None:
        """Read the database through its own connection: a snapshot holds committed state only."""
        self.reader = sqlite3.connect(str(db_path), check_same_thread=False)

    def close(self) -> None:
        """Close the reading connection."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _image(self) -> tuple[bytes, int]:
        assert self.reader is not None
        raw = self.reader.serialize()
        return zlib.compress(raw, 1), len(raw)

    async def save(self, seq: int) -> None:
        """Write a snapshot covering transitions up to ``seq``.

        Raises:
            LeaseLost: another holder wrote a snapshot since this one read or wrote the head.
        """
        async with self.lock:
            started = time.perf_counter()
            blob, raw_len = await asyncio.to_thread(self._image)
            gen = self.generation + 1
            slot = f"{self.slot_prefix}.{gen % 2}"
            chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
            for i, chunk in enumerate(chunks):
                await self.kv.put(f"{slot}.{i}", chunk)
            head = msgspec.json.encode({"seq": seq, "generation": gen, "slot": slot, "chunks": len(chunks),
                                        "owner": self.owner, "at": time.time(), "bytes": raw_len})
            try:
                if self.rev is None:
                    self.rev = await self.kv.create(HEAD_KEY, head)
                else:
                    self.rev = await self.kv.update(HEAD_KEY, head, last=self.rev)
            except KeyWrongLastSequenceError:
                raise LeaseLost("alerting: snapshot written by another holder") from None
            self.generation, self.chunks = gen, len(chunks)
            self.counters["snapshots"] += 1
            self.counters["snapshot_bytes"] = float(len(blob))
            self.counters["snapshot_db_bytes"] = float(raw_len)
            self.last_cost_s = time.perf_counter() - started
            self.counters["snapshot_ms_total"] += self.last_cost_s * 1000
            self.saved_at = time.monotonic()


class SentNotifications:
    """Records each sent notification in KV and skips one an earlier holder already sent."""

    def __init__(self, kv: KeyValue, owner: str) -> None:
        self.kv = kv
        self.owner = owner
        self.counters: dict[str, float] = {"sent_recorded": 0, "sent_elsewhere": 0, "sent_record_errors": 0}
        self.changed = asyncio.Event()

    @staticmethod
    def key(dedup_key: str) -> str:
        """The KV key of a notification (its de-duplication key is free text)."""
        return "n." + hashlib.sha256(dedup_key.encode()).hexdigest()[:40]

    def install(self, engine: Any) -> None:
        """Make the engine's delivery ask before and record after every send."""
        engine.delivery.guard = self

    async def sent_elsewhere(self, row: SentRow) -> bool:
        """True when an alerting holder already recorded this notification as sent."""
        try:
            await self.kv.get(self.key(row.dedup_key))
        except KeyNotFoundError:
            return False
        except Exception as exc:  # NATS unreachable: sending twice beats not sending
            log.warning("alerting: cannot check whether notification %d was sent before: %s", row.id, exc)
            return False
        self.counters["sent_elsewhere"] += 1
        self.changed.set()
        return True

    async def record_sent(self, row: SentRow) -> None:
        """Record a delivered notification, so a later holder does not send it again."""
        value = msgspec.json.encode({"owner": self.owner, "at": time.time(), "id": row.id})
        for _ in range(20):
            try:
                await self.kv.put(self.key(row.dedup_key), value)
                self.counters["sent_recorded"] += 1
                break
            except Exception:
                await asyncio.sleep(0.5)
        else:
            self.counters["sent_record_errors"] += 1
        self.changed.set()


class AlertingWorker:
    """The alerting stage on the transitions stream (one instance at a time, by lease), its database replicated."""

    def __init__(self, instance: AlertingHost) -> None:
        self.instance = instance
        self.bridge = NatsBridge(instance.nc, instance.js, f"{instance.name}/alerting")
        self.service: Any = None
        self.storage: StorageService | None = None
        self.snapshots: DatabaseSnapshots | None = None
        self.sent: SentNotifications | None = None
        self.seq = 0
        """The last transitions stream sequence handled."""
        self.saved_seq = 0
        self._acks: deque[tuple[int, Any]] = deque()
        self.restored_from = 0
        self.handled = 0

    async def run(self) -> None:
        """Restore the latest snapshot, then consume transitions and run alerting until cancelled."""
        from alerting.service import AlertingService

        inst = self.instance
        snaps_kv, sent_kv = await patiently(lambda: alerting_buckets(inst.js, inst.settings.replicas),
                                            "alerting: buckets")
        self.snapshots = snaps = DatabaseSnapshots(snaps_kv, inst.name)
        self.seq, image = await patiently(snaps.load, "alerting: load snapshot")
        self.restored_from = self.saved_seq = self.seq
        state = inst.state_dir / "alerting"
        # A local database of an earlier holding is stale: the snapshot is alerting's state.
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        if image is not None:
            (state / DB_NAME).write_bytes(image)
        mqtt = as_mqtt(self.bridge)
        if "storage" in inst.config.services:  # alert state changes to InfluxDB (vigil.cluster_storage)
            mqtt = as_mqtt(LoopbackClient(self.bridge))
            self.storage = alert_storage(inst.config.storage, mqtt=mqtt, registry=inst.registry,
                                         state_dir=state / "storage")
            self.storage.attach()
        self.service = service = AlertingService(inst.config.alerting, mqtt=mqtt, ingest=None,
                                                 registry=inst.registry, state_dir=state)
        service.attach()
        self.sent = SentNotifications(sent_kv, inst.name)
        self.sent.install(service)
        snaps.open(state / DB_NAME)
        log.info("cluster %s: alerting from transition %d (%d open alerts restored)", inst.name, self.seq + 1,
                 len(service.open))

        async def consumer() -> JetStreamContext.PullSubscription:
            return await start_consumer(inst.js, TRANSITIONS_STREAM, "alerting", self.seq, ack_wait_s=30.0)

        try:
            sub = await patiently(consumer, "alerting: start consumer")
            await patiently(lambda: snaps.save(self.seq), "alerting: first snapshot")  # takes the head (fencing)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(service.run(), name="alerting-stage")
                tg.create_task(self._consume(sub), name="alerting-consume")
                tg.create_task(self._replicate(), name="alerting-replicate")
                if self.storage is not None:
                    tg.create_task(self.storage.run(), name="alerting-storage")
        except ExceptionGroup as group:
            lost = group.subgroup(LeaseLost)
            if lost is not None:  # the instance treats a lost lease apart from a failure
                raise LeaseLost(str(lost.exceptions[0])) from group
            raise
        finally:
            # Stopping (shutdown, lease released): hand over what changed since the last snapshot.
            if snaps.rev is not None and self.service is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await snaps.save(self.seq)
            service.close()
            snaps.close()
            if self.storage is not None:
                self.storage.close()

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        assert self.snapshots is not None
        while True:
            try:
                msgs = await sub.fetch(200, timeout=0.5)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception as exc:
                log.warning("cluster %s: alerting fetch failed: %r", self.instance.name, exc)
                await asyncio.sleep(0.5)
                continue
            fresh = [m for m in msgs if m.metadata.sequence.stream > self.seq]
            batch = [Message(f"{TOPIC_ROOT}/transitions/" + subject_to_topic(m.subject, 2), m.data, 1, False,
                             time.time()) for m in fresh]
            for part in split_episodes(batch):
                try:
                    self.bridge.deliver(part)
                except NotDurable as exc:
                    await self._retry(exc)
            if fresh:
                self.seq = fresh[-1].metadata.sequence.stream
                self.handled += len(fresh)
                self._acks.append((self.seq, fresh[-1]))
                if self.sent is not None:
                    self.sent.changed.set()  # wakes the replication

    async def _save(self) -> None:
        """A snapshot of what is committed now, retried while the cluster fails over; then ack what it covers."""
        assert self.snapshots is not None
        seq = self.seq  # handled and committed (handlers commit before returning)
        while True:
            try:
                await self.snapshots.save(seq)
                break
            except LeaseLost:
                raise
            except Exception as exc:  # the cluster failing over: keep trying, acknowledge nothing meanwhile
                self.snapshots.counters["snapshot_errors"] += 1
                log.warning("cluster %s: alerting snapshot failed: %s", self.instance.name, exc or type(exc).__name__)
                await asyncio.sleep(0.5)
        self.saved_seq = seq
        last = None
        while self._acks and self._acks[0][0] <= seq:
            last = self._acks.popleft()
        if last is not None:
            with contextlib.suppress(Exception):  # acks only trim redelivery: a new holder starts at the snapshot
                await last[1].ack()

    async def _replicate(self) -> None:
        """Snapshot whenever a committed change appeared, at most every ``SNAPSHOT_COST_FACTOR`` x its cost."""
        assert self.snapshots is not None and self.sent is not None
        db = self.service.store.db
        seen = db.total_changes
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNAPSHOT_POLL_S):
                    await self.sent.changed.wait()
            self.sent.changed.clear()
            gap = max(SNAPSHOT_POLL_S, SNAPSHOT_COST_FACTOR * self.snapshots.last_cost_s)
            wait = last + gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if db.total_changes == seen and self.seq == self.saved_seq:
                continue
            # The snapshot reads committed state only: a change still inside an open transaction (a send
            # marked "sending" while it waits on its channel) makes the next round snapshot again.
            seen = -1 if db.in_transaction else db.total_changes
            last = time.monotonic()
            await self._save()

    async def _retry(self, exc: NotDurable) -> None:
        while True:
            try:
                exc.retry()
                return
            except (NotDurable, OSError):
                await asyncio.sleep(0.5)

    def stats(self) -> dict[str, Any]:
        """Alerting's counters and the replication's."""
        out: dict[str, Any] = {"handled": self.handled, "seq": self.seq, "restored_from": self.restored_from}
        if self.service is not None:
            out.update(self.service.stats())
        if self.snapshots is not None:
            out.update(self.snapshots.counters)
            saved = self.snapshots.saved_at
            out["snapshot_age_s"] = round(time.monotonic() - saved, 3) if saved is not None else -1.0
        if self.sent is not None:
            out.update(self.sent.counters)
        if self.storage is not None:
            out["storage"] = self.storage.stats()
        return out


def split_episodes(batch: list[Message]) -> list[list[Message]]:
    """Cut a batch of transitions wherever an alert's fingerprint repeats.

    A backlog (alerting's consumer catching up after a failover) can hold an alert's firing and its
    resolution; handed over as one batch, alerting would tell only the resolution. Cut there, each
    decision is flushed (and notified, with ``group_wait_s: 0``) before the next one is applied.
    """
    parts: list[list[Message]] = []
    current: list[Message] = []
    seen: set[str] = set()
    for msg in batch:
        try:
            fingerprint = decode_transition(msg.payload).fingerprint
        except Rejected:
            fingerprint = ""  # alerting dead-letters it
        if fingerprint and fingerprint in seen:
            parts.append(current)
            current, seen = [], set()
        current.append(msg)
        seen.add(fingerprint)
    if current:
        parts.append(current)
    return parts
