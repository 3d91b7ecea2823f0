"""One platform instance of a cluster: claims partitions through JetStream KV leases and runs the stages on them.

Per owned partition, a ``PartitionWorker`` runs the ordinary rules stage (``DeviceIngest`` +
``RulesService`` on a ``NatsBridge``) over that partition's stream. Every ``checkpoint_interval_s``
it waits until its transitions are stored, then writes the rule engine's state and the stream
sequence it covers to the KV bucket ``vigil_checkpoints`` (a fenced update: a stale owner's write
fails and it stops) and acknowledges up to that sequence. An instance that takes a partition over
loads that checkpoint and replays the stream from the next sequence, so a device's pending timers,
windows and firing alerts continue where they were; transitions re-made by the replay carry the
same ``Nats-Msg-Id`` and JetStream drops them. With ``storage`` in the services, the storage stage
runs on the same batches and the checkpoint also records what InfluxDB has (vigil.cluster_storage).

One instance at a time (the holder of the ``alerting`` lease) runs the alerting stage on the
transitions stream, its database replicated into JetStream (vigil.cluster_alerting). A holder renews
its leases with revision-checked updates; another instance takes a lease it has seen unchanged for
``lease_ttl_s`` (vigil.cluster_leases). Every instance serves /health and /metrics
(vigil.cluster_health). See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.ingest import DeviceIngest, RegisteredDevices
from broker.mqtt import Message, NotDurable
from broker.nats_transport import (
    CHECKPOINTS_BUCKET,
    LEASES_BUCKET,
    NatsBridge,
    ensure_layout,
    message_of,
    partition_stream,
    start_consumer,
)
from broker.registry import DeviceRegistry
from rules.service import RulesService
from rules.state import SnapshotEncoder, engine_from_doc
from vigil.cluster_alerting import AlertingWorker
from vigil.cluster_config import ClusterSettings
from vigil.cluster_leases import HEARTBEAT_PREFIX, LeaseLost, LeaseTable, fair_share, patiently
from vigil.cluster_storage import LoopbackClient, PartitionStorage, as_mqtt
from vigil.config import VigilConfig
from vigil.errors import ProgramError

log = logging.getLogger(__name__)
ALERTING_LEASE = "alerting"


async def connect(settings: ClusterSettings, name: str) -> NatsClient:
    """A NATS connection that reconnects to any node of the cluster, forever."""

    async def on_error(exc: Exception) -> None:
        log.warning("cluster %s: nats: %s", name, exc)

    return await nats.connect(servers=settings.servers, name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, connect_timeout=2, error_cb=on_error)


class PartitionWorker:
    """The rules stage (and the storage stage, when configured) on one partition's stream, checkpointed to KV."""

    def __init__(self, instance: ClusterInstance, partition: int) -> None:
        self.instance = instance
        self.partition = partition
        self.key = f"p{partition}"
        self.bridge = NatsBridge(instance.nc, instance.js, f"{instance.name}/p{partition}")
        self.last_seq = 0
        """The last stream sequence handed to the stages (rules and storage)."""
        self.rules_seq = 0
        """The last stream sequence the rule engine's state covers (above ``last_seq`` while catching up)."""
        self.acked_seq = 0
        self.checkpointed: tuple[int, int] | None = None
        """(rules sequence, stored sequence) of the last saved checkpoint."""
        self.checkpoint_rev: int | None = None
        self.checkpointed_at: float | None = None
        self.processed = 0
        self.replayed_from = 0
        self.checkpoints = 0
        self.checkpoint_errors = 0
        self.lag = 0
        """Messages in the stream after the last one fetched (the consumer's pending count)."""
        self.stalled_since: float | None = None
        """Monotonic time since a batch could not be made durable (the partition waits), else None."""
        self.last_not_durable = ""
        self.service: RulesService | None = None
        self.storage: PartitionStorage | None = None
        self._acks: deque[tuple[int, Any]] = deque()
        """(stream sequence, message) of each handled batch's last message, for the cumulative ack."""

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
        # Local files of an earlier ownership are stale: the checkpoint is the partition's state (and
        # the storage outbox's undrained lines are re-stored from the stream, see vigil.cluster_storage).
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        known = RegisteredDevices(cfg.registry, inst.registry.devices) if cfg.registry else None
        # With storage, the ingest's dead letters are also handed to the partition's storage (LoopbackClient).
        mqtt = as_mqtt(LoopbackClient(self.bridge) if "storage" in cfg.services else self.bridge)
        stage = f"{cfg.node}-p{self.partition}"
        ingest = DeviceIngest(mqtt, stage=stage, known_device=known)
        service = RulesService(cfg.rules, mqtt=mqtt, ingest=ingest, registry=inst.registry, state_dir=state)
        if doc is not None and doc.get("engine"):
            engine_from_doc(service.engine, doc["engine"])
        service.attach()
        if "storage" in cfg.services:
            seq = int(doc.get("seq", 0)) if doc else 0
            self.storage = PartitionStorage(cfg.storage, mqtt=mqtt, ingest=ingest, registry=inst.registry,
                                            state_dir=state / "storage", known=known, stage=stage,
                                            stored_seq=int(doc.get("stored_seq", seq)) if doc else 0)
            self.storage.attach()
        return service

    async def run(self) -> None:
        """Restore, replay and follow the partition until cancelled or the lease is lost."""
        doc = await patiently(self._load_checkpoint, f"partition {self.partition}: read checkpoint")
        self.service = service = self._build(doc)
        self.rules_seq = int(doc.get("seq", 0)) if doc else 0
        start = min(self.rules_seq, self.storage.stored_seq) if self.storage is not None else self.rules_seq
        self.last_seq = self.acked_seq = self.replayed_from = start
        if doc is not None:
            self.checkpointed = (self.rules_seq, start)
        settings = self.instance.settings

        async def consumer() -> JetStreamContext.PullSubscription:
            return await start_consumer(self.instance.js, partition_stream(self.partition),
                                        f"rules-p{self.partition}", self.last_seq)

        sub = await patiently(consumer, f"partition {self.partition}: start consumer")
        log.info("cluster %s: partition %d from sequence %d (%d devices restored, rules at %d)", self.instance.name,
                 self.partition, self.last_seq + 1, len(service.engine.devices), self.rules_seq)
        storage_task = (asyncio.get_running_loop().create_task(self.storage.service.run(),
                                                               name=f"storage-p{self.partition}")
                        if self.storage is not None else None)
        next_tick = time.monotonic() + service.config.tick_interval_s
        next_checkpoint = time.monotonic() + settings.checkpoint_interval_s
        try:
            while True:
                if storage_task is not None and storage_task.done():
                    raise ProgramError(f"partition {self.partition}: storage stopped: {storage_task.exception()!r}")
                try:
                    msgs = await sub.fetch(settings.fetch_batch, timeout=0.2)
                except (NatsTimeout, TimeoutError):
                    msgs = []
                except Exception as exc:  # a node failing over: the fetch is retried
                    log.warning("cluster %s: partition %d fetch failed: %r", self.instance.name, self.partition, exc)
                    await asyncio.sleep(0.5)
                    msgs = []
                if msgs:
                    await self._handle(msgs)
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
            if storage_task is not None:
                # Its own finally writes what it can within ``writer.shutdown_flush_s``; the rest is re-stored
                # from the stream by the next owner (the checkpoint's stored_seq).
                storage_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await storage_task
            if self.storage is not None:
                self.storage.service.close()
            service.store.close()

    async def _handle(self, msgs: list[Any]) -> None:
        catch_up: list[Message] = []
        batch: list[Message] = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= self.last_seq:
                continue  # a redelivery of what is already handled
            self.last_seq = seq
            (catch_up if seq <= self.rules_seq else batch).append(message_of(m.subject, m.data))
        self.lag = int(msgs[-1].metadata.num_pending)
        if not batch and not catch_up:
            return
        if catch_up and self.storage is not None:
            await self._durably(self.storage.catch_up, catch_up)
        if batch:
            self.processed += len(batch)
            self.rules_seq = self.last_seq
            await self._durably(self.bridge.deliver, batch)
        if self.storage is not None:
            self.storage.appended(self.last_seq)
        self._acks.append((self.last_seq, msgs[-1]))

    async def _durably(self, handler: Callable[[list[Message]], None], batch: list[Message]) -> None:
        """Run ``handler``; while a stage cannot make its work durable (disk full), retry and hold the partition.

        Only the storage outbox (and the local rules journal) can refuse; the stream keeps the messages
        meanwhile, and nothing after this batch is handled, checkpointed or acknowledged until it is in.
        """
        try:
            handler(batch)
            return
        except NotDurable as exc:
            pending = exc
        self.stalled_since = time.monotonic()
        while True:
            self.last_not_durable = pending.reason
            await asyncio.sleep(0.5)
            try:
                pending.retry()
                break
            except NotDurable as exc:
                pending = exc
            except OSError as exc:
                pending = NotDurable(str(exc), pending.retry)
        self.stalled_since = None

    async def checkpoint(self) -> None:
        """Save state + sequences once every transition so far is stored, then ack up to the rules' sequence.

        Raises:
            LeaseLost: another instance wrote the checkpoint since this one read it.
        """
        assert self.service is not None
        await self.bridge.flush()
        seq = self.rules_seq
        stored = self.storage.written_seq() if self.storage is not None else seq
        stored = min(stored, self.last_seq)
        if self.checkpointed == (seq, stored) and self.checkpoint_rev is not None:
            self.checkpointed_at = time.monotonic()  # the saved one is still current (nothing new)
            return
        # Encoded in slices: this partition's loop waits for its checkpoint (so the state stays that of
        # ``seq``), while the other partitions of the process keep running between slices.
        enc = SnapshotEncoder(self.service.engine, 0)
        while not enc.step(0.004):
            await asyncio.sleep(0)
        head = msgspec.json.encode({"seq": seq, "stored_seq": stored, "owner": self.instance.name, "at": time.time()})
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
        self.checkpointed = (seq, stored)
        self.checkpointed_at = time.monotonic()
        # Acknowledge up to what the checkpoint covers. Acks only trim redelivery (the streams keep messages
        # for ``stream_max_age_s`` whatever is acknowledged): a new owner starts from the checkpoint's
        # ``min(seq, stored_seq)``, not from the consumer's ack floor, so a time-series store that is down
        # does not hold the consumer's pending acks (and with them the rules) back.
        last = None
        while self._acks and self._acks[0][0] <= seq:
            last = self._acks.popleft()
        if last is not None and last[0] > self.acked_seq:
            with contextlib.suppress(Exception):
                await last[1].ack()
            self.acked_seq = last[0]

    def stats(self) -> dict[str, Any]:
        """Counters of this partition."""
        age = time.monotonic() - self.checkpointed_at if self.checkpointed_at is not None else -1.0
        out: dict[str, Any] = {"seq": self.last_seq, "rules_seq": self.rules_seq,
                               "checkpointed_seq": self.checkpointed[0] if self.checkpointed else 0,
                               "stored_seq": self.checkpointed[1] if self.checkpointed else 0,
                               "acked_seq": self.acked_seq, "lag": self.lag, "checkpoint_age_s": round(age, 3),
                               "stalled": self.stalled_since is not None, "processed": self.processed,
                               "replayed_from": self.replayed_from, "checkpoints": self.checkpoints,
                               "checkpoint_errors": self.checkpoint_errors, **self.bridge.counters}
        if self.service is not None:
            out["rules"] = self.service.stats()
        if self.storage is not None:
            out["storage"] = self.storage.stats()
        return out


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
        self.counters: dict[str, int] = {"claims": 0, "releases": 0, "lost": 0, "round_errors": 0,
                                         "round_failing": 0}
        self.renewed: dict[str, float] = {}
        """lease key -> when (monotonic) this instance last wrote it."""
        self.health: Any = None
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
        health = self._start_health()
        try:
            while not stop.is_set():
                try:
                    await self._round(first)
                    first = False
                    self.counters["round_failing"] = 0
                except Exception as exc:  # the cluster failing over: nothing seen counts, next round
                    self.table.forget()
                    self.counters["round_errors"] += 1
                    self.counters["round_failing"] = 1
                    log.warning("cluster %s: lease round failed: %s", self.name, exc or type(exc).__name__)
                await self._reap()
                with contextlib.suppress(OSError):
                    stats_path.write_text(json.dumps({"ts": time.time(), **self.stats()}, default=str))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await stop.wait()
        finally:
            for task in health:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for key in list(self.workers):
                with contextlib.suppress(Exception):
                    await self._release(key)
            with contextlib.suppress(Exception):
                await self.leases.delete(f"{HEARTBEAT_PREFIX}{self.name}")
            await self.nc.close()

    def _start_health(self) -> list[asyncio.Task[None]]:
        """/health and /metrics with the cluster's facts, and the platform's own alerts (vigil.cluster_health)."""
        if not self.config.health.enabled:
            return []
        from vigil.cluster_health import ClusterHealthMonitor, ClusterPlatform

        platform = ClusterPlatform(self, NatsBridge(self.nc, self.js, f"{self.name}/health"), self.nc)
        self.health = ClusterHealthMonitor(platform, self.config.health)
        loop = asyncio.get_running_loop()
        return [loop.create_task(self.health.run(), name="health"),
                loop.create_task(platform.monitor.run(), name="health-loop-lag")]

    def partition_workers(self) -> list[PartitionWorker]:
        """The partition workers running now."""
        return [w for w, _t, _r in self.workers.values() if isinstance(w, PartitionWorker)]

    def alerting_service(self) -> Any:
        """The alerting stage while this instance holds the lease (and it has started), else None."""
        held = self.workers.get(ALERTING_LEASE)
        return held[0].service if held is not None else None

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
            self.renewed[key] = time.monotonic()
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
        self.renewed[key] = time.monotonic()
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
        now = time.monotonic()
        leases = {k: {"revision": rev, "renewed_s_ago": round(now - self.renewed.get(k, now), 3)}
                  for k, (_w, _t, rev) in self.workers.items()}
        return {"node": self.name, "counters": dict(self.counters), "owned": sorted(self.workers), "leases": leases,
                "workers": {k: w.stats() for k, (w, _t, _r) in self.workers.items()}}


async def run_cluster_instance(config: VigilConfig, registry: DeviceRegistry, stop: asyncio.Event) -> None:
    """Run one instance until ``stop`` is set (``vigil run`` with a ``cluster:`` section)."""
    instance = ClusterInstance(config, registry)
    await instance.start()
    await instance.run(stop)
