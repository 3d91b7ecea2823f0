"""One platform instance of a cluster: claims partitions through JetStream KV leases and runs the stages on them.

Per owned partition, a ``PartitionWorker`` runs the ordinary rules stage (``DeviceIngest`` +
``RulesService`` on a ``NatsBridge``) over that partition's stream. Every ``checkpoint_interval_s``
it waits until its transitions are stored, then writes the rule engine's state and the stream
sequence it covers to the KV bucket ``vigil_checkpoints`` (a fenced update: a stale owner's write
fails and it stops) and acknowledges up to that sequence. An instance that takes a partition over
loads that checkpoint and replays the stream from the next sequence, so a device's pending timers,
windows and firing alerts continue where they were; transitions re-made by the replay carry the
same ``Nats-Msg-Id`` and JetStream drops them.

One instance at a time (the holder of the ``alerting`` lease) runs the alerting stage on the
transitions stream with a durable consumer. Leases live in a KV bucket whose TTL is the lease time:
a holder renews with a revision-checked update, a dead holder's key expires and another instance's
create succeeds. See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.contracts import TOPIC_ROOT, Rejected, decode_transition
from broker.ingest import DeviceIngest, RegisteredDevices
from broker.mqtt import Message, MqttClient, NotDurable
from broker.nats_transport import (
    CHECKPOINTS_BUCKET,
    LEASES_BUCKET,
    TRANSITIONS_STREAM,
    TRANSITIONS_SUBJECT,
    NatsBridge,
    ensure_layout,
    message_of,
    partition_stream,
    start_consumer,
    subject_to_topic,
)
from broker.registry import DeviceRegistry
from rules.service import RulesService
from rules.state import SnapshotEncoder, engine_from_doc
from vigil.cluster_config import ClusterSettings
from vigil.cluster_leases import HEARTBEAT_PREFIX, LeaseTable, fair_share
from vigil.config import VigilConfig
from vigil.errors import ProgramError

log = logging.getLogger(__name__)
ALERTING_LEASE = "alerting"
T = TypeVar("T")


class LeaseLost(ProgramError):
    """Another instance owns what this one was working on; stop without writing anything more."""


async def connect(settings: ClusterSettings, name: str) -> NatsClient:
    """A NATS connection that reconnects to any node of the cluster, forever."""

    async def on_error(exc: Exception) -> None:
        log.warning("cluster %s: nats: %s", name, exc)

    return await nats.connect(servers=settings.servers, name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, connect_timeout=2, error_cb=on_error)


async def _patiently(call: Callable[[], Awaitable[T]], what: str, attempts: int = 30) -> T:
    """``call()``, retried while the cluster fails over (a JetStream leader election takes seconds)."""
    for attempt in range(attempts):
        try:
            return await call()
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying", what, exc or type(exc).__name__)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


class PartitionWorker:
    """The rules stage on one partition's stream, checkpointed to KV."""

    def __init__(self, instance: ClusterInstance, partition: int) -> None:
        self.instance = instance
        self.partition = partition
        self.key = f"p{partition}"
        self.bridge = NatsBridge(instance.nc, instance.js, f"{instance.name}/p{partition}")
        self.last_seq = 0
        self.acked_seq = 0
        self.checkpoint_rev: int | None = None
        self.processed = 0
        self.replayed_from = 0
        self.checkpoints = 0
        self.checkpoint_errors = 0
        self.service: RulesService | None = None
        self._last_msg: Any = None

    async def _load_checkpoint(self) -> dict[str, Any] | None:
        try:
            entry = await self.instance.checkpoints.get(self.key)
        except KeyNotFoundError:
            return None
        self.checkpoint_rev = entry.revision
        doc: dict[str, Any] = msgspec.json.decode(entry.value or b"{}")
        return doc

    def _build(self, doc: dict[str, Any] | None) -> RulesService:
        cfg, inst = self.instance.config, self.instance
        state = inst.state_dir / f"p{self.partition}"
        # Local files of an earlier ownership are stale: the checkpoint is the partition's state.
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        known = RegisteredDevices(cfg.registry, inst.registry.devices) if cfg.registry else None
        # The bridge offers the MqttClient calls the stages make (subscribe, publish_nowait).
        mqtt = cast(MqttClient, self.bridge)
        ingest = DeviceIngest(mqtt, stage=f"{cfg.node}-p{self.partition}", known_device=known)
        service = RulesService(cfg.rules, mqtt=mqtt, ingest=ingest, registry=inst.registry, state_dir=state)
        if doc is not None and doc.get("engine"):
            engine_from_doc(service.engine, doc["engine"])
        service.attach()
        return service

    async def run(self) -> None:
        """Restore, replay and follow the partition until cancelled or the lease is lost."""
        doc = await _patiently(self._load_checkpoint, f"partition {self.partition}: read checkpoint")
        self.service = service = self._build(doc)
        self.last_seq = self.acked_seq = self.replayed_from = int(doc.get("seq", 0)) if doc else 0
        settings = self.instance.settings

        async def consumer() -> JetStreamContext.PullSubscription:
            return await start_consumer(self.instance.js, partition_stream(self.partition),
                                        f"rules-p{self.partition}", self.last_seq)

        sub = await _patiently(consumer, f"partition {self.partition}: start consumer")
        log.info("cluster %s: partition %d from sequence %d (%d devices restored)", self.instance.name,
                 self.partition, self.last_seq + 1, len(service.engine.devices))
        next_tick = time.monotonic() + service.config.tick_interval_s
        next_checkpoint = time.monotonic() + settings.checkpoint_interval_s
        try:
            while True:
                try:
                    msgs = await sub.fetch(settings.fetch_batch, timeout=0.2)
                except (NatsTimeout, TimeoutError):
                    msgs = []
                except Exception as exc:  # a node failing over: the fetch is retried
                    log.warning("cluster %s: partition %d fetch failed: %r", self.instance.name, self.partition, exc)
                    await asyncio.sleep(0.5)
                    msgs = []
                if msgs:
                    self._handle(msgs)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + service.config.tick_interval_s
                    service.tick()
                if now >= next_checkpoint:
                    try:
                        await self.checkpoint()
                    except (LeaseLost, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # the cluster failing over: the next one covers more
                        self.checkpoint_errors += 1
                        log.warning("cluster %s: partition %d checkpoint failed: %s", self.instance.name,
                                    self.partition, exc or type(exc).__name__)
                    next_checkpoint = time.monotonic() + settings.checkpoint_interval_s
        finally:
            service.store.close()

    def _handle(self, msgs: list[Any]) -> None:
        batch: list[Message] = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= self.last_seq:
                continue  # a redelivery of what is already handled
            self.last_seq = seq
            self._last_msg = m
            batch.append(message_of(m.subject, m.data))
        if not batch:
            return
        self.processed += len(batch)
        try:
            self.bridge.deliver(batch)
        except NotDurable as exc:
            # Only the local journal can refuse (the checkpoint is the durable state here); retry it now.
            with contextlib.suppress(NotDurable, OSError):
                exc.retry()

    async def checkpoint(self) -> None:
        """Save state + sequence once every transition so far is stored, then ack up to that sequence.

        Raises:
            LeaseLost: another instance wrote the checkpoint since this one read it.
        """
        assert self.service is not None
        await self.bridge.flush()
        if self.last_seq == self.acked_seq and self.checkpoint_rev is not None:
            return
        seq, last = self.last_seq, self._last_msg
        # Encoded in slices: this partition's loop waits for its checkpoint (so the state stays that of
        # ``seq``), while the other partitions of the process keep running between slices.
        enc = SnapshotEncoder(self.service.engine, 0)
        while not enc.step(0.004):
            await asyncio.sleep(0)
        head = msgspec.json.encode({"seq": seq, "owner": self.instance.name, "at": time.time()})
        value = head[:-1] + b',"engine":' + enc.result() + b"}"
        kv = self.instance.checkpoints
        try:
            if self.checkpoint_rev is None:
                self.checkpoint_rev = await kv.create(self.key, value)
            else:
                self.checkpoint_rev = await kv.update(self.key, value, last=self.checkpoint_rev)
        except KeyWrongLastSequenceError:
            raise LeaseLost(f"partition {self.partition}: checkpoint written by another instance") from None
        self.checkpoints += 1
        if last is not None and seq > self.acked_seq:
            with contextlib.suppress(Exception):  # acks only trim redelivery; the checkpoint is the truth
                await last.ack()
        self.acked_seq = seq

    def stats(self) -> dict[str, Any]:
        """Counters of this partition."""
        out: dict[str, Any] = {"seq": self.last_seq, "checkpointed_seq": self.acked_seq, "processed": self.processed,
                               "replayed_from": self.replayed_from, "checkpoints": self.checkpoints,
                               "checkpoint_errors": self.checkpoint_errors,
                               **self.bridge.counters}
        if self.service is not None:
            out["rules"] = self.service.stats()
        return out


class AlertingWorker:
    """The alerting stage on the transitions stream (one instance at a time, by lease)."""

    def __init__(self, instance: ClusterInstance) -> None:
        from alerting.service import AlertingService

        self.instance = instance
        self.bridge = NatsBridge(instance.nc, instance.js, f"{instance.name}/alerting")
        state = instance.state_dir / "alerting"
        state.mkdir(parents=True, exist_ok=True)
        self.service = AlertingService(instance.config.alerting, mqtt=cast(MqttClient, self.bridge), ingest=None,
                                       registry=instance.registry, state_dir=state)
        self.service.attach()
        self.handled = 0

    async def run(self) -> None:
        """Consume transitions and run alerting's timers and senders until cancelled."""
        js = self.instance.js
        sub = await js.pull_subscribe(f"{TRANSITIONS_SUBJECT}.>", durable="alerting", stream=TRANSITIONS_STREAM,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=10.0,
                                                            max_ack_pending=100_000))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.service.run(), name="alerting-stage")
                tg.create_task(self._consume(sub), name="alerting-consume")
        finally:
            self.service.close()

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(200, timeout=0.5)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception as exc:
                log.warning("cluster %s: alerting fetch failed: %r", self.instance.name, exc)
                await asyncio.sleep(0.5)
                continue
            batch = [Message(f"{TOPIC_ROOT}/transitions/" + subject_to_topic(m.subject, 2), m.data, 1, False,
                             time.time()) for m in msgs]
            for part in split_episodes(batch):
                try:
                    self.bridge.deliver(part)
                except NotDurable as exc:
                    await self._retry(exc)
            self.handled += len(msgs)
            for m in msgs:  # after alerting committed them
                with contextlib.suppress(Exception):
                    await m.ack()

    async def _retry(self, exc: NotDurable) -> None:
        while True:
            try:
                exc.retry()
                return
            except (NotDurable, OSError):
                await asyncio.sleep(0.5)

    def stats(self) -> dict[str, Any]:
        """Alerting's counters."""
        return {"handled": self.handled, **self.service.stats()}


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


class ClusterInstance:
    """A platform instance: heartbeat, leases, and a worker per owned partition (plus alerting when held)."""

    def __init__(self, config: VigilConfig, registry: DeviceRegistry) -> None:
        assert config.cluster is not None
        self.config = config
        self.settings: ClusterSettings = config.cluster
        self.registry = registry
        self.name = config.node
        self.state_dir = Path(config.state_dir) / config.node
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.workers: dict[str, tuple[Any, asyncio.Task[None], int]] = {}
        """lease key -> (worker, task, lease revision)."""
        self.counters: dict[str, int] = {"claims": 0, "releases": 0, "lost": 0, "round_errors": 0}
        self.table = LeaseTable(self.settings.lease_ttl_s)
        self.nc: NatsClient
        self.js: JetStreamContext
        self.leases: KeyValue
        self.checkpoints: KeyValue

    async def start(self) -> None:
        """Connect and make sure the streams and buckets exist."""
        s = self.settings
        self.nc = await connect(s, self.name)
        self.js = self.nc.jetstream(timeout=5.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                buckets = await ensure_layout(self.js, s.partitions, s.replicas, max_age_s=s.stream_max_age_s,
                                              duplicate_window_s=s.duplicate_window_s)
                break
            except Exception as exc:  # JetStream still electing its leaders after the cluster started
                if time.monotonic() > deadline:
                    raise
                log.info("cluster %s: streams not ready yet: %s", self.name, exc)
                await asyncio.sleep(1.0)
        self.leases, self.checkpoints = buckets[LEASES_BUCKET], buckets[CHECKPOINTS_BUCKET]

    def wanted(self) -> list[str]:
        """The lease keys this instance may hold: every partition, and alerting when allowed."""
        keys = [f"p{n}" for n in range(self.settings.partitions)]
        if self.settings.alerting and "alerting" in self.config.services:
            keys.append(ALERTING_LEASE)
        return keys if "rules" in self.config.services else keys[self.settings.partitions:]

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat, rebalance and supervise workers until ``stop`` is set; then checkpoint and release."""
        period = self.settings.lease_ttl_s / 3
        first = True
        stats_path = self.state_dir / "stats.json"
        try:
            while not stop.is_set():
                try:
                    await self._round(first)
                    first = False
                except Exception as exc:  # the cluster failing over: nothing seen counts, next round
                    self.table.forget()
                    self.counters["round_errors"] += 1
                    log.warning("cluster %s: lease round failed: %s", self.name, exc or type(exc).__name__)
                await self._reap()
                with contextlib.suppress(OSError):
                    stats_path.write_text(json.dumps({"ts": time.time(), **self.stats()}, default=str))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await stop.wait()
        finally:
            for key in list(self.workers):
                with contextlib.suppress(Exception):
                    await self._release(key)
            with contextlib.suppress(Exception):
                await self.leases.delete(f"{HEARTBEAT_PREFIX}{self.name}")
            await self.nc.close()

    async def _round(self, first: bool) -> None:
        me = json.dumps({"owner": self.name}).encode()
        await self.leases.put(f"{HEARTBEAT_PREFIX}{self.name}", me)
        for key, (worker, task, rev) in list(self.workers.items()):
            try:
                new_rev = await self.leases.update(key, me, last=rev)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                self._lose(key, "lease taken over")
                continue
            self.workers[key] = (worker, task, new_rev)
        prefix = f"$KV.{LEASES_BUCKET}."
        info = await self.js.stream_info(f"KV_{LEASES_BUCKET}", subjects_filter=f"{prefix}>")
        keys = {subject[len(prefix):] for subject in (info.state.subjects or {})}
        for key in sorted((keys | set(self.wanted())) - set(self.workers)):
            try:
                entry = await self.leases.get(key)
            except KeyNotFoundError:  # never written, or deleted by a holder that let it go
                self.table.observe(key, None, None)
                continue
            try:
                owner = str(json.loads(entry.value or b"{}")["owner"])
            except (ValueError, KeyError, TypeError):
                owner = "?"
            self.table.observe(key, entry.revision, owner)
        if first:
            return  # let the other instances announce themselves before claiming a share
        wanted = self.wanted()
        partitions = [k for k in wanted if k != ALERTING_LEASE]
        target = fair_share(len(partitions), len(self.table.live_instances(self.name)))
        mine = [k for k in self.workers if k != ALERTING_LEASE]
        for key in mine[target:]:
            await self._release(key)  # a newcomer takes its share
        for key in wanted:
            if key in self.workers:
                continue
            if key != ALERTING_LEASE and sum(1 for k in self.workers if k != ALERTING_LEASE) >= target:
                continue
            state, seen_rev = self.table.state(key)
            try:
                if state == "absent":
                    new_rev = await self.leases.create(key, me)
                elif state == "expired" and seen_rev is not None:
                    log.warning("cluster %s: %s held by %s has not been renewed for %.0f s; taking it over",
                                self.name, key, self.table.owner(key), self.settings.lease_ttl_s)
                    new_rev = await self.leases.update(key, me, last=seen_rev)
                else:
                    continue
            except KeyWrongLastSequenceError:
                continue  # another instance was quicker
            self._start(key, new_rev)

    def _start(self, key: str, rev: int) -> None:
        self.counters["claims"] += 1
        worker: PartitionWorker | AlertingWorker = (AlertingWorker(self) if key == ALERTING_LEASE
                                                    else PartitionWorker(self, int(key[1:])))
        task = asyncio.get_running_loop().create_task(worker.run(), name=f"cluster-{key}")
        self.workers[key] = (worker, task, rev)
        log.info("cluster %s: took %s", self.name, key)

    def _lose(self, key: str, why: str) -> None:
        _worker, task, _ = self.workers.pop(key)
        task.cancel()
        self.counters["lost"] += 1
        log.warning("cluster %s: lost %s (%s); stopped its worker", self.name, key, why)

    async def _reap(self) -> None:
        for key, (_worker, task, rev) in list(self.workers.items()):
            if task.done():
                error = None if task.cancelled() else task.exception()
                self._lose(key, f"worker ended: {error!r}")
                if isinstance(error, LeaseLost):
                    continue  # the lease is another instance's now: leave it alone
                if error is not None:
                    log.error("cluster %s: worker %s failed: %r", self.name, key, error)
                # Let the lease go (only if still ours) so that another instance, or this one next
                # round, restarts the partition from its checkpoint.
                with contextlib.suppress(Exception):
                    await self.leases.delete(key, last=rev)

    async def _release(self, key: str) -> None:
        worker, task, rev = self.workers.pop(key)
        alive = not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if isinstance(worker, PartitionWorker) and alive:
            # Hand over with a fresh checkpoint, so the next owner replays little.
            with contextlib.suppress(Exception):
                await worker.checkpoint()
        self.counters["releases"] += 1
        with contextlib.suppress(Exception):
            await self.leases.delete(key, last=rev)
        log.info("cluster %s: released %s", self.name, key)

    def stats(self) -> dict[str, Any]:
        """What this instance holds and has done."""
        return {"node": self.name, "counters": dict(self.counters), "owned": sorted(self.workers),
                "workers": {k: w.stats() for k, (w, _t, _r) in self.workers.items()}}


async def run_cluster_instance(config: VigilConfig, registry: DeviceRegistry, stop: asyncio.Event) -> None:
    """Run one instance until ``stop`` is set (``vigil run`` with a ``cluster:`` section)."""
    instance = ClusterInstance(config, registry)
    await instance.start()
    await instance.run(stop)
