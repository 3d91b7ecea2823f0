"""The alerting engine: transitions in, alert states out on MQTT, notifications out through Apprise.

``AlertingEngine`` is the alerting stage without its HTTP API (``alerting.service.AlertingService`` adds
the API server); the desks, the surface and the API use it through its public members. This module
only wires. What happens to a batch is the ordered stage list of ``alerting.pipeline``
(``service.pipeline.names()``)::

    dedup -> decode -> lifecycle -> grouping -> muting -> targets -> render -> storm -> outbox

then the commit (``alerting.pipeline.CommitPoint``: the MQTT batch is acknowledged only once it is
durable), publication of the changed alerts and delivery of the new notifications (``alerting.delivery``:
``AlertPublisher``, and ``DeliveryWorkers`` over ``alerting.sender``). Timers (``alerting.timers``:
escalation rungs, deadlines, digests; group flushes are the grouping stage's) run the same list from a
later stage. See docs/alerting.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from alerting import stages as st
from alerting.config import AlertingConfig, EscalationPolicy, Receiver
from alerting.delivery import AlertPublisher, DeliveryWorkers
from alerting.desk import AlertDesk
from alerting.evidence import EvidencePolicy
from alerting.grouping import Grouper
from alerting.lifecycle import AlertBook, AlertRecord, AuditEvent
from alerting.muting import Inhibitor, MaintenanceCalendar, Muter, SilenceSet
from alerting.pipeline import Arrival, Batch, Change, CommitPoint, Pipeline
from alerting.restore import restore
from alerting.roster import DutyRoster
from alerting.router import Router
from alerting.sender import AppriseSender, Transport
from alerting.stages import StormControl
from alerting.store import AlertStore
from alerting.templates import MessageTemplates
from alerting.timers import AlertTimers
from alerting.workorders.desk import WorkOrderDesk
from broker.clocksteps import WallClockSteps
from broker.contracts import TRANSITIONS_FILTER, Alert, Transition
from broker.ingest import DeviceIngest
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry

log = logging.getLogger(__name__)


Job = tuple[str, Callable[[], Coroutine[Any, Any, None]]]
"""A task the engine runs beside its own: its name and a coroutine function."""


class AlertingEngine:
    """Alert lifecycle, routing, grouping, muting, duty, escalation and notification for one process."""

    def __init__(self, config: AlertingConfig, *, mqtt: MqttClient, ingest: DeviceIngest | None = None,
                 registry: DeviceRegistry | None = None, state_dir: Path,
                 clock: Callable[[], float] = time.time, transport: Transport | None = None,
                 clock_steps: WallClockSteps | None = None) -> None:
        self.config, self.mqtt, self.ingest, self.registry = config, mqtt, ingest, registry
        self._wall = clock
        # Steps of the real wall clock are watched by default; an injected clock brings its own detector
        # (or none: tests move their clocks on purpose).
        self.clock_steps = clock_steps if clock_steps is not None else (
            WallClockSteps() if clock is time.time else None)
        self.clock: Callable[[], float] = self._now
        """The wall clock every part of alerting reads (desk, API, work orders): shifts anchors after a step."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = AlertStore(state_dir / "alerting.sqlite3")
        self.counters: Counter[str] = Counter()
        self.router = Router(config.route)
        self.grouper = Grouper(self.router.plans)
        self.silences = SilenceSet()
        self.inhibitor = Inhibitor(config.inhibit_rules)
        self.maintenance = MaintenanceCalendar(config.maintenance)
        self.muter = Muter(self.silences, self.maintenance, self.inhibitor)
        self.roster = DutyRoster(config.people, config.rosters)
        self.policies: dict[str, EscalationPolicy] = {p.name: p for p in config.escalation_policies}
        self.receivers: dict[str, Receiver] = {r.name: r for r in config.receivers}
        self.templates = MessageTemplates(config.console_url, config.timezone, config.templates)
        self.evidence = EvidencePolicy(config.evidence)
        self.sender = AppriseSender(config.retry, config.sender_threads, transport,
                                    urls=[u for r in config.receivers for u in r.urls]
                                    + [u for p in config.people for u in p.channels], evidence=self.evidence)
        self.storm = StormControl(config.storm.max_per_minute, config.storm.digest_s)
        self.book = AlertBook(self.store, self.inhibitor)
        self.publisher = AlertPublisher(mqtt, self.counters)
        self.delivery = DeliveryWorkers(self.store, self.sender, self.counters, lambda r: self.recipient(r)[0],
                                        self.clock, config.queue_size, config.retry.timeout_s)
        self.dedup = st.DedupStage(self.counters)
        self.lifecycle = st.LifecycleStage(config, self.book, self.router, registry, self.clock_steps, self.counters)
        self.muting = st.MutingStage(self.muter, self.grouper, self.router, self.policies, self.book, self.counters)
        self.targets = st.TargetsStage(config, self.roster)
        self.pipeline = Pipeline([
            self.dedup, st.DecodeStage(mqtt, self.counters), self.lifecycle,
            st.GroupingStage(self.grouper, self.router, self.counters), self.muting, self.targets,
            st.RenderStage(self.templates, lambda r: self.targets.recipient(r)[1]),
            st.StormStage(self.storm, self.store, self.counters),
            st.OutboxStage(config, self.book, self.grouper, self.counters, self.delivery.stage)])
        self.timers = AlertTimers(self.book, self.policies, self.router, self.muting, self.targets, self.storm,
                                  self.silences, self.maintenance)
        self.book.on_open = self.timers.schedule
        self.book.on_saved = self.publisher.stage
        self.committer = CommitPoint(self.store, self.publisher, self.delivery, self.counters)
        self.committer.wake = self._wake_timer
        self._wake: asyncio.Event | None = None
        self.desk = AlertDesk(self)
        self.workorders: WorkOrderDesk | None = (WorkOrderDesk(self, config.workorders, state_dir)
                                                 if config.workorders.enabled else None)
        self.lifecycle.workorders = self.targets.workorders = self.publisher.workorders = self.workorders
        restore(config, self.book, self.grouper, self.silences, self.maintenance, self.roster, self.storm)

    # ------------------------------------------------------------------ state others read

    @property
    def open(self) -> dict[str, AlertRecord]:
        """Open alerts by id (firing or acknowledged), in memory."""
        return self.book.open

    @property
    def by_fingerprint(self) -> dict[str, str]:
        """Open alert id by fingerprint."""
        return self.book.by_fingerprint

    @property
    def handoffs(self) -> deque[dict[str, float]]:
        """The last 20,000 hand-offs to Apprise (latency tracing)."""
        return self.delivery.handoffs

    # ------------------------------------------------------------------ runtime interface

    def attach(self) -> None:
        """Subscribe to the rules engine's transitions (call before ``mqtt.start()``)."""
        self.mqtt.subscribe(TRANSITIONS_FILTER, self.on_transitions)

    async def run(self) -> None:
        """Send notifications and drive timers until cancelled; state is committed on exit."""
        await self.run_with()

    async def run_with(self, *jobs: Job) -> None:
        """``run``, with ``jobs`` as further tasks of the same group (the API server of ``AlertingService``)."""
        self._wake = asyncio.Event()
        self.delivery.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._timer_loop(), name="alerting-timer")
                tg.create_task(self.delivery.run(), name="alerting-sender")
                for name, job in jobs:
                    tg.create_task(job(), name=name)
        finally:
            self.store.commit()
            self.sender.close()

    def close(self) -> None:
        """Commit and close the database (after ``run`` has ended)."""
        self.store.close()

    def stats(self) -> dict[str, float]:
        """Counters, open alerts, queue depth, delivery outcomes and hand-off latency percentiles (ms)."""
        out: dict[str, float] = {k: float(v) for k, v in self.counters.items()}
        out["open_alerts"] = float(len(self.open))
        out["groups"] = float(len(self.grouper.groups))
        out["storm_held"] = float(self.storm.held())
        out["evidence_fetched"] = float(self.evidence.fetched)
        out.update(self.delivery.stats())
        if self.workorders is not None:
            out["workorders_open"] = float(len(self.workorders.open))
            out["grids"] = float(len(self.workorders.grids.grids))
            out["grids_reload_errors"] = float(self.workorders.grids.errors)
        for reason, n in self.evidence.refused.items():
            out[f"evidence_refused_{reason}"] = float(n)
        return out

    def watch(self, maxsize: int = 1000) -> AsyncIterator[Alert]:
        """Every alert state change as it happens (for the console's server push).

        A slow consumer loses the oldest changes (counted in ``watch_dropped``), never blocks alerting.
        """
        return self.publisher.watch(maxsize)

    # ------------------------------------------------------------------ transitions in, timers

    def on_transitions(self, batch: list[MqttMessage]) -> None:
        """MQTT handler: run the batch through the pipeline, commit, then publish and send."""
        self.pipeline.run(Batch(self.clock(), arrivals=[Arrival(m.payload, m.received_at, None, m) for m in batch]))
        self.committer.commit_or_hold()

    def on_local_transitions(self, items: list[tuple[Transition, bytes]]) -> None:
        """Transitions handed over directly by the rules stage of this process (no broker round trip).

        The dedup stage remembers each payload, so the copy arriving over MQTT is skipped. If the process
        stops before that copy arrives, the broker redelivers it after the restart and the lifecycle
        treats it as the duplicate it is (as for any QoS 1 redelivery).
        """
        now = self.clock()
        self.pipeline.run(Batch(now, arrivals=[Arrival(p, now, t) for t, p in items]))
        self.committer.commit_or_hold()

    def tick(self, now: float | None = None) -> None:
        """Run everything due at ``now``: group flushes, escalation rungs, deadlines, digests, silence expiry."""
        now = self.clock() if now is None else now
        self.flush_groups(now)
        if self.workorders is not None:
            self.workorders.tick(now)
        self.pipeline.run(self.timers.collect(now), start="targets")
        self.pipeline.run(self.timers.digests(now), start="targets")
        self.timers.expire(now)
        self._commit(wake=False)

    def flush_groups(self, now: float) -> None:
        """Send what the groups due at ``now`` have to say (grouping -> ... -> outbox)."""
        self.pipeline.run(Batch(now), start="grouping")

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        while True:
            due = [t for t in (self.grouper.next_due(), self.timers.next_due()) if t is not None]
            delay = max(0.0, min([self.clock() + self.config.tick_s, *due]) - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self.tick()
                if self.delivery.backlog:
                    self.delivery.requeue_pending()
            except Exception:
                self.counters["timer_errors"] += 1
                log.exception("alerting: timer tick failed")

    # ------------------------------------------------------------------ changes from people, commit

    def save(self, rec: AlertRecord, events: Sequence[AuditEvent] = ()) -> None:
        """Write an alert's new state and audit events (published at the next commit)."""
        self.book.save(rec, events)

    def record_action(self, before: AlertRecord, after: AlertRecord, events: Sequence[AuditEvent]) -> None:
        """A person's change to one alert (desk, work orders): save it with its audit events, regroup it when
        its status moved, send what became due, commit and publish."""
        now = self.clock()
        self.book.save(after, events)
        if after.status != before.status:
            self.pipeline.run(Batch(now, changes=[Change(after, "action", ())]), start="grouping")
        self._commit()

    def queue_notification(self, nid: int) -> None:
        """Send an outbox entry written outside the pipeline (work orders) after the next commit."""
        self.delivery.stage(nid)

    def commit(self) -> None:
        """Commit what was written to the store (a silence, a window, an override) and publish what it changed."""
        self._commit()

    def _commit(self, wake: bool = True) -> None:
        self.committer.commit(wake)

    # Older names the desks still call (kept until they move to the public ones above).
    _save = save
    _flush_groups = flush_groups

    @property
    def _to_send(self) -> list[int]:
        return self.delivery.staged

    # ------------------------------------------------------------------ addressing, delivery

    def resolve_targets(self, targets: list[str], unit: str, now: float, grid: str = "") -> list[str]:
        """Turn targets (``person:``, ``role:``, ``roster:``, ``receiver:``, ``grid:staff|duty`` or a receiver name)
        into recipients; ``grid:staff`` are the staff of the alert's grid (``alerting.grids``), ``grid:duty`` those
        of them on duty in the grid's roster (all of them without one)."""
        return self.targets.resolve(targets, unit, now, grid)

    def recipient(self, key: str) -> tuple[list[str], str]:
        """A recipient's Apprise URLs (in failover order) and locale."""
        return self.targets.recipient(key)

    async def deliver_pending(self) -> int:
        """Deliver every pending outbox entry now, one by one (tests, maintenance tools); returns the count."""
        self._commit(wake=False)
        return await self.delivery.deliver_pending()

    # ------------------------------------------------------------------ platform clock steps

    def _now(self) -> float:
        steps = self.clock_steps
        if steps is not None:
            delta = steps.check()
            if delta:
                self._shift_wall(delta)
        return self._wall()

    def _wake_timer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _shift_wall(self, delta: float) -> None:
        """The wall clock stepped ``delta`` s: move every anchor that measures an interval, so none runs out early
        (forward) or hangs for the length of the step (backward). Silences, maintenance windows and rosters are
        real-world instants and stay."""
        self.counters["clock_steps"] += 1
        self.timers.shift(delta, self.grouper)
        self.dedup.shift(delta)
        log.warning("alerting: platform clock stepped %+.0f s; shifted the deadlines and escalation of %d open "
                    "alerts, %d group timers and the storm windows by the step", delta, len(self.open),
                    len(self.grouper.groups))
        self._wake_timer()
