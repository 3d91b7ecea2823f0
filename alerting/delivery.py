"""The after-commit outlets: alert states published to MQTT, notifications handed to delivery workers.

Both hold what a batch produced until its commit succeeded (``AlertPublisher.flush``,
``DeliveryWorkers.after_commit``); nothing leaves the process before that.

``AlertPublisher``: alert states on ``vigil/v1/alerts/{kind}/{device_id}/{alert_id}`` and to in-process
watchers. An open alert's state is retained (a new subscriber sees every open alert); on resolution the
resolved state is published not retained, then the retained message is cleared with an empty retained
payload, so consumers must skip empty payloads.

``DeliveryWorkers``: outbox ids in, each delivered through the sender as its own task, every attempt
logged. An id committed while nothing waits in the send queue starts at once, in the committing callback:
its first attempt reaches the channel's thread before the event loop turns again (a queue read and a
task start would each wait behind whatever else is ready, under load a telemetry batch apiece). A full
queue leaves new ids pending in the outbox; they are read back when it drains. Each
delivery's outcome lands in the notification log: ``sent``, or ``dead`` with the last failure, counted
by whether it was permanent (no retry could help) or recoverable (retries ran out), and by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from alerting.lifecycle import AlertRecord, to_contract
from alerting.sender import AppriseSender, Attempt, Message, Started
from alerting.store import AlertStore, NotificationRow
from broker.contracts import Alert, alert_topic, encode
from broker.mqtt import MqttClient

if TYPE_CHECKING:
    from alerting.workorders.desk import WorkOrderDesk

log = logging.getLogger(__name__)


class AlertPublisher:
    """Queues changed alerts and publishes them after the commit, to MQTT and to ``watch()`` consumers."""

    def __init__(self, mqtt: MqttClient, counters: Counter[str]) -> None:
        self.mqtt = mqtt
        self.counters = counters
        self.pending: dict[str, AlertRecord] = {}
        self.watchers: set[asyncio.Queue[Alert]] = set()
        self.workorders: WorkOrderDesk | None = None

    def stage(self, rec: AlertRecord) -> None:
        """Queue an alert's latest state (published by ``flush``; the latest change of a batch wins)."""
        self.pending[rec.id] = rec

    def flush(self) -> None:
        """Publish every queued state (call after the commit)."""
        if not self.pending:
            return
        changed, self.pending = self.pending, {}
        for rec in changed.values():
            self.publish(rec)

    def publish(self, rec: AlertRecord) -> None:
        """Publish one alert's state now."""
        alert = to_contract(rec)
        if self.workorders is not None:
            alert = self.workorders.decorate(alert)
        topic = alert_topic(rec.kind, rec.device_id, rec.id)
        payload = encode(alert)
        if rec.is_open:
            self.mqtt.publish_nowait(topic, payload, qos=1, retain=True)
        else:
            self.mqtt.publish_nowait(topic, payload, qos=1, retain=False)
            self.mqtt.publish_nowait(topic, b"", qos=1, retain=True)
        self.counters["alerts_published"] += 1
        for q in list(self.watchers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                self.counters["watch_dropped"] += 1
            q.put_nowait(alert)

    async def watch(self, maxsize: int = 1000) -> AsyncIterator[Alert]:
        """Every alert state change as it happens; a slow consumer loses the oldest (``watch_dropped``)."""
        q: asyncio.Queue[Alert] = asyncio.Queue(maxsize)
        self.watchers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self.watchers.discard(q)


@dataclass(frozen=True, slots=True)
class _Job:
    """An outbox entry being delivered: its row, the recipient's channels and the message."""

    nid: int
    row: NotificationRow
    channels: list[str]
    msg: Message


class SendGuard(Protocol):
    """Asked before and told after each send (a cluster instance: was it sent by an earlier alerting holder?)."""

    async def sent_elsewhere(self, row: NotificationRow) -> bool:
        """True when the notification was already delivered elsewhere: it is then marked sent, not sent again."""

    async def record_sent(self, row: NotificationRow) -> None:
        """The notification was delivered here."""


class DeliveryWorkers:
    """The bounded send queue between the outbox and the sender."""

    def __init__(self, store: AlertStore, sender: AppriseSender, counters: Counter[str],
                 channels_of: Callable[[str], list[str]], clock: Callable[[], float], queue_size: int,
                 drain_s: float) -> None:
        self.store = store
        self.sender = sender
        self.counters = counters
        self.channels_of = channels_of
        self.clock = clock
        self.queue_size = queue_size
        self.drain_s = drain_s
        self.staged: list[int] = []
        """Outbox ids written since the last commit (``AlertingService.queue_notification`` adds to it too)."""
        self.handoffs: deque[dict[str, float]] = deque(maxlen=20000)
        self.queue: asyncio.Queue[int] | None = None
        self.backlog = False
        self._recv_at: dict[int, float] = {}
        self._inflight: set[int] = set()
        self._queued: set[int] = set()
        self._tasks: set[asyncio.Task[None]] | None = None
        """Deliveries running, while ``run`` runs (None otherwise: nothing starts outside the queue then)."""
        self.guard: SendGuard | None = None
        """Consulted around every send (its check is asynchronous, so guarded sends go through the queue)."""

    def stage(self, nid: int, received_at: float | None = None) -> None:
        """An outbox id to send once the transaction that wrote it is committed."""
        self.staged.append(nid)
        if received_at is not None:
            self._recv_at[nid] = received_at

    def after_commit(self) -> None:
        """Queue what was staged (the outbox rows are durable now)."""
        if self.staged:
            ids, self.staged = self.staged, []
            for nid in ids:
                self._enqueue(nid)

    def _enqueue(self, nid: int) -> None:
        if self.queue is None or self.queue.full():
            self.backlog = True  # stays pending in the outbox; re-read when the queue drains
            return
        if self.queue.empty() and self._launch(nid):
            return
        self.queue.put_nowait(nid)
        self._queued.add(nid)

    def _launch(self, nid: int) -> bool:
        """Start delivering ``nid`` now (its first attempt handed to the sender in this callback); False when it
        must go through the queue: ``run`` is not running, or a guard must be asked first (a cluster instance
        checks, asynchronously, whether another instance sent it)."""
        if self._tasks is None or self.guard is not None:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # committed outside the loop's thread: run() takes it from the queue
            return False
        try:
            job = self._begin(nid)
            started = self.sender.start(job.channels, job.msg) if job is not None else None
        except Exception:  # the queue's path reads the row again and reports what fails there
            self.counters["sender_errors"] += 1
            log.exception("alerting: starting notification %d failed; queued instead", nid)
            return False
        if job is not None:
            self._inflight.add(nid)
            self._spawn(nid, lambda: self._finish(job, started))
        return True

    def _spawn(self, nid: int, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        assert self._tasks is not None
        task = asyncio.create_task(self._guarded(nid, work), name=f"alerting-send-{nid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def requeue_pending(self) -> None:
        """Queue pending outbox rows (at start, and when a full queue has room again)."""
        assert self.queue is not None
        self.backlog = False
        for row in self.store.pending_notifications(self.queue_size):
            if row.id in self._queued or row.id in self._inflight:
                continue
            if self.queue.full():
                self.backlog = True
                break
            if row.status == "sending" and any(a["ok"] for a in self.store.attempts(row.id)):
                self.store.mark_notification(row.id, status="sent")
                continue
            self.queue.put_nowait(row.id)
            self._queued.add(row.id)
        if self.queue.full():
            # The read stops at queue_size rows: more may be pending; read again once there is room.
            self.backlog = True
        self.store.commit()

    def start(self) -> None:
        """Open the send queue and fill it with the outbox's pending rows (before ``run``)."""
        self.queue = asyncio.Queue(self.queue_size)
        self.requeue_pending()

    async def run(self) -> None:
        """Start every queued delivery as its own task: a delivery waiting on a hung channel holds no
        worker another channel's alert needs (the sender isolates channels; see alerting.sender)."""
        assert self.queue is not None, "call start() first"
        running = self._tasks = set()
        try:
            while True:
                nid = await self.queue.get()
                self._queued.discard(nid)
                self._inflight.add(nid)
                self._spawn(nid, functools.partial(self.send, nid))
        except asyncio.CancelledError:
            self._tasks = None  # from now on commits leave their ids in the queue / outbox
            # Let deliveries in flight finish (bounded) so a shutdown does not leave them half-recorded.
            if running:
                await asyncio.wait(running, timeout=self.drain_s)
            for task in running:
                task.cancel()
            raise

    async def _guarded(self, nid: int, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await work()
        except Exception:
            self.counters["sender_errors"] += 1
            log.exception("alerting: delivery of notification %d failed", nid)
        finally:
            self._inflight.discard(nid)

    def _begin(self, nid: int) -> _Job | None:
        """Read an outbox entry still to send and mark it ``sending`` (None: gone, or already settled)."""
        row = self.store.notification(nid)
        if row is None or row.status not in ("pending", "sending"):
            return None
        channels = self.channels_of(row.recipient)
        self.store.mark_notification(nid, status="sending")
        msg = Message(row.title, row.body, row.attach, "success" if row.kind == "resolved" else "failure")
        return _Job(nid, row, channels, msg)

    async def send(self, nid: int) -> None:
        """Deliver one outbox entry and record its attempts and outcome."""
        guard = self.guard
        if guard is not None:
            row = self.store.notification(nid)
            if row is None or row.status not in ("pending", "sending"):
                return
            if await guard.sent_elsewhere(row):
                self.store.mark_notification(nid, status="sent", done_at=self.clock(),
                                             error="sent by an earlier alerting holder")
                self.store.commit()
                self.counters["notifications_sent_elsewhere"] += 1
                return
        job = self._begin(nid)
        if job is None:
            return
        await self._finish(job, None)
        if guard is not None:
            after = self.store.notification(nid)
            if after is not None and after.status == "sent":
                await guard.record_sent(after)

    async def _finish(self, job: _Job, started: Started | None) -> None:
        """Deliver a begun entry (its first attempt perhaps already running) and record the attempts and outcome."""
        nid, row, channels, msg = job.nid, job.row, job.channels, job.msg
        count = 0

        def on_attempt(a: Attempt) -> None:
            nonlocal count
            count += 1
            self.store.add_attempt(nid, a.started_at, a.channel, a.attempt, a.ok, a.error, a.elapsed_ms)
            self.store.commit()

        result = await self.sender.deliver(channels, msg, on_attempt, started)
        status = "sent" if result.ok else "dead"
        self.store.mark_notification(nid, status=status, handed_at=result.handed_at, done_at=self.clock(),
                                     attempts=count, channel=result.channel, error=None if result.ok else result.error)
        self.store.commit()
        self.counters[f"notifications_{status}"] += 1
        if result.handed_at is not None:
            rec = {"id": float(nid), "handed_at": result.handed_at}
            if row.source_ts:
                rec["source_ts"] = row.source_ts
            recv = self._recv_at.pop(nid, None)
            if recv:
                rec["recv"] = recv
            self.handoffs.append(rec)
        failure = result.failure
        if not result.ok and failure is not None:
            self.counters[f"notifications_dead_{'recoverable' if failure.recoverable else 'permanent'}"] += 1
            self.counters[f"notifications_dead_{failure.reason}"] += 1
            log.warning("alerting: notification %d to %s dead-lettered after %d attempts (%s): %s", nid,
                        row.recipient, count, "retries ran out" if failure.recoverable else "permanent failure",
                        result.error)

    async def deliver_pending(self) -> int:
        """Deliver every pending outbox entry now, one by one (tests, maintenance tools); returns the count."""
        rows = self.store.pending_notifications()
        for row in rows:
            await self.send(row.id)
        return len(rows)

    def stats(self) -> dict[str, float]:
        """Queue depth, the sender's counters (``delivery_failed_permanent``, ``delivery_failed_http_401``,
        ``delivery_retries``, ...) and hand-off latency percentiles (ms)."""
        out = {"send_queue": float(self.queue.qsize() if self.queue is not None else 0)}
        for k, v in self.sender.counters.items():
            out[f"delivery_{k}"] = float(v)
        for name, key in (("internal", "recv"), ("source", "source_ts")):
            lat = sorted((h["handed_at"] - h[key]) * 1000 for h in self.handoffs if h.get(key))
            if lat:
                out[f"handoff_{name}_ms_p50"] = lat[len(lat) // 2]
                out[f"handoff_{name}_ms_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return out
