"""The alerting service: transitions in, alert states out on MQTT, notifications out through Apprise.

Pipeline per transition batch (all in the event loop thread, no blocking I/O but SQLite commits):
lifecycle -> route -> group -> (on flush) mute -> storm control -> outbox; then commit, publish the
changed alerts (retained while open), and hand outbox ids to the sender workers, which call Apprise
in a thread pool. A timer drives group_wait/group_interval/repeat, escalation rungs, deadlines and
digests. Everything that decides is a pure core (see the sibling modules); this module wires them.

MQTT retain semantics on ``vigil/v1/alerts/{kind}/{device_id}/{alert_id}``: an open alert's state is
retained (a new subscriber sees every open alert); on resolution the resolved state is published
(not retained) and then the retained message is cleared with an empty retained payload, so
consumers must skip empty payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from alerting import escalation as esc
from alerting.config import AlertingConfig, EscalationPolicy, Receiver
from alerting.desk import AlertDesk
from alerting.evidence import EvidencePolicy
from alerting.grouping import ACKED, FIRING, RESOLVED, Grouper, GroupFlush, GroupState
from alerting.lifecycle import AlertRecord, AuditEvent, apply_transition, check_overdue, new_alert_id, to_contract
from alerting.muting import Inhibitor, MaintenanceCalendar, MaintenanceEntry, Muter, SilenceEntry, SilenceSet
from alerting.roster import DutyRoster, OverrideEntry
from alerting.router import Router
from alerting.sender import AppriseSender, Attempt, Message, Transport
from alerting.store import AlertStore
from alerting.storm import StormControl
from alerting.templates import MessageTemplates
from alerting.workorders.desk import WorkOrderDesk
from broker.clocksteps import WallClockSteps
from broker.contracts import (
    TRANSITIONS_FILTER,
    Alert,
    AlertStatus,
    Rejected,
    Transition,
    alert_topic,
    dead_letter_topic,
    decode_transition,
    encode,
    make_dead_letter,
)
from broker.ingest import DeviceIngest
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient, NotDurable
from broker.registry import DeviceRegistry

log = logging.getLogger(__name__)
_GROUP_ENC = msgspec.json.Encoder()
_GROUP_DEC = msgspec.json.Decoder(GroupState)


_SEEN_WINDOW_S = 600.0
_SEEN_MAX = 100_000
"""Transitions remembered (as 16-byte digests) to recognise repeated deliveries."""


def _group_status(rec: AlertRecord) -> str:
    return {AlertStatus.FIRING: FIRING, AlertStatus.ACKNOWLEDGED: ACKED}.get(rec.status, RESOLVED)


class AlertingService:
    """Alert lifecycle, routing, grouping, muting, duty, escalation and notification for one process."""

    def __init__(self, config: AlertingConfig, *, mqtt: MqttClient, ingest: DeviceIngest | None = None,
                 registry: DeviceRegistry | None = None, state_dir: Path,
                 clock: Callable[[], float] = time.time, transport: Transport | None = None,
                 clock_steps: WallClockSteps | None = None) -> None:
        self.config = config
        self.mqtt = mqtt
        self.ingest = ingest
        self.registry = registry
        self._wall = clock
        # Steps of the real wall clock are watched by default; an injected clock brings its own detector
        # (or none: tests move their clocks on purpose).
        self.clock_steps = clock_steps if clock_steps is not None else (
            WallClockSteps() if clock is time.time else None)
        self.clock: Callable[[], float] = self._now
        """The wall clock every part of alerting reads (desk, API, work orders): shifts anchors after a step."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = AlertStore(state_dir / "alerting.sqlite3")
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
                                    + [u for p in config.people for u in p.channels],
                                    evidence=self.evidence)
        self.storm = StormControl(config.storm.max_per_minute, config.storm.digest_s)
        self.open: dict[str, AlertRecord] = {}
        self.by_fingerprint: dict[str, str] = {}
        self.counters: Counter[str] = Counter()
        self.handoffs: deque[dict[str, float]] = deque(maxlen=20000)
        self._queue: asyncio.Queue[int] | None = None
        self._backlog = False
        self._to_send: list[int] = []
        self._to_publish: dict[str, AlertRecord] = {}
        self._timers: list[tuple[float, str]] = []
        self._timer_at: dict[str, float] = {}
        self._watchers: set[asyncio.Queue[Alert]] = set()
        self._wake: asyncio.Event | None = None
        self._recv_at: dict[int, float] = {}
        self._recv_at_alert: dict[str, float] = {}
        self._seen: dict[bytes, float] = {}
        self._inflight: set[int] = set()
        self._queued: set[int] = set()
        self.api_port: int | None = None
        self._diverged: str | None = None
        """Set when SQLite rolled back a batch the lifecycle had applied in memory (see _commit_or_hold)."""
        self.desk = AlertDesk(self)
        self.workorders: WorkOrderDesk | None = (WorkOrderDesk(self, config.workorders, state_dir)
                                                 if config.workorders.enabled else None)
        self._load(self.clock())

    # ------------------------------------------------------------------ runtime interface

    def attach(self) -> None:
        """Subscribe to the rules engine's transitions (call before ``mqtt.start()``)."""
        self.mqtt.subscribe(TRANSITIONS_FILTER, self.on_transitions)

    async def run(self) -> None:
        """Send notifications, drive timers and serve the API until cancelled; state is committed on exit."""
        self._queue = asyncio.Queue(self.config.queue_size)
        self._wake = asyncio.Event()
        self._requeue_pending()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._timer_loop(), name="alerting-timer")
                tg.create_task(self._send_loop(), name="alerting-sender")
                if self.config.api.enabled:
                    tg.create_task(self._serve_api(), name="alerting-api")
        finally:
            self.store.commit()
            self.sender.close()

    def close(self) -> None:
        """Commit and close the database (after ``run`` has ended)."""
        self.store.close()

    def stats(self) -> dict[str, float]:
        """Counters, open alerts, queue depth and hand-off latency percentiles (ms)."""
        out: dict[str, float] = {k: float(v) for k, v in self.counters.items()}
        out["open_alerts"] = float(len(self.open))
        out["groups"] = float(len(self.grouper.groups))
        out["send_queue"] = float(self._queue.qsize()) if self._queue is not None else 0.0
        out["storm_held"] = float(self.storm.held())
        out["evidence_fetched"] = float(self.evidence.fetched)
        if self.workorders is not None:
            out["workorders_open"] = float(len(self.workorders.open))
            out["grids"] = float(len(self.workorders.grids.grids))
            out["grids_reload_errors"] = float(self.workorders.grids.errors)
        for reason, n in self.evidence.refused.items():
            out[f"evidence_refused_{reason}"] = float(n)
        for name, key in (("internal", "recv"), ("source", "source_ts")):
            lat = sorted((h["handed_at"] - h[key]) * 1000 for h in self.handoffs if h.get(key))
            if lat:
                out[f"handoff_{name}_ms_p50"] = lat[len(lat) // 2]
                out[f"handoff_{name}_ms_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return out

    async def watch(self, maxsize: int = 1000) -> AsyncIterator[Alert]:
        """Every alert state change as it happens (for the console's server push).

        A slow consumer loses the oldest changes (counted in ``watch_dropped``), never blocks alerting.
        """
        q: asyncio.Queue[Alert] = asyncio.Queue(maxsize)
        self._watchers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._watchers.discard(q)

    # ------------------------------------------------------------------ platform clock steps

    def _now(self) -> float:
        steps = self.clock_steps
        if steps is not None:
            delta = steps.check()
            if delta:
                self._shift_wall(delta)
        return self._wall()

    def _shift_wall(self, delta: float) -> None:
        """The wall clock stepped ``delta`` s: move every anchor that measures an interval, so none runs out early
        (forward) or hangs for the length of the step (backward). Silences, maintenance windows and rosters are
        real-world instants and stay."""
        self.counters["clock_steps"] += 1
        for rec in list(self.open.values()):
            self._save(msgspec.structs.replace(
                rec, ack_by=None if rec.ack_by is None else rec.ack_by + delta,
                resolve_by=None if rec.resolve_by is None else rec.resolve_by + delta,
                esc_anchor=rec.esc_anchor + delta, wall_shift=rec.wall_shift + delta), ())
        self._timers.clear()
        self._timer_at.clear()
        for rec in self.open.values():
            self._schedule(rec)
        self.grouper.shift(delta)
        for g in self.grouper.groups.values():
            self.store.kv_put("group", g.key, _GROUP_ENC.encode(g).decode())
        for rcpt in self.storm.shift(delta):
            self.store.kv_put("storm", rcpt, json.dumps(self.storm.held_for(rcpt), ensure_ascii=False))
        # Remembered deliveries keep their window, so a redelivery right after a forward step is still known.
        self._seen = {k: t + delta for k, t in self._seen.items()}
        log.warning("alerting: platform clock stepped %+.0f s; shifted the deadlines and escalation of %d open "
                    "alerts, %d group timers and the storm windows by the step", delta, len(self.open),
                    len(self.grouper.groups))
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ loading

    def _load(self, now: float) -> None:
        for rec in self.store.open_alerts():
            self._remember(rec)
        for key, data in self.store.kv_all("group").items():
            try:
                self.grouper.restore(_GROUP_DEC.decode(data))
            except msgspec.DecodeError:
                log.warning("alerting: dropping unreadable group state %r", key[:100])
        for s in self.config.silences:
            entry = SilenceEntry(id=f"config-{len(self.silences.entries)}", matchers=s.matchers,
                                 starts_at=_parse_time(s.starts_at), ends_at=_parse_time(s.ends_at),
                                 author=s.author, comment=s.comment)
            self.silences.put(entry)
        for data in self.store.kv_all("silence").values():
            self.silences.put(msgspec.json.decode(data, type=SilenceEntry))
        for key, data in self.store.kv_all("maintenance").items():
            try:  # written by AlertDesk.create_maintenance, checked then; a later zone database may lack its zone
                self.maintenance.put(msgspec.json.decode(data, type=MaintenanceEntry))
            except (msgspec.DecodeError, ValueError, KeyError) as exc:
                log.warning("alerting: ignoring unreadable maintenance window %r (left in the store): %s", key[:100], exc)
        for i, o in enumerate(self.config.overrides):
            self.roster.overrides[f"config-{i}"] = OverrideEntry(
                id=f"config-{i}", roster=o.roster, person=o.person, starts_at=_parse_time(o.starts_at),
                ends_at=_parse_time(o.ends_at), reason=o.reason)
        for rcpt, data in self.store.kv_all("storm").items():
            since, lines = json.loads(data)
            self.storm.restore(rcpt, float(since), [str(x) for x in lines])
        for data in self.store.kv_all("override").values():
            o2 = msgspec.json.decode(data, type=OverrideEntry)
            self.roster.overrides[o2.id] = o2

    def _remember(self, rec: AlertRecord) -> None:
        if rec.is_open:
            self.open[rec.id] = rec
            self.by_fingerprint[rec.fingerprint] = rec.id
            self._schedule(rec)
        else:
            self.open.pop(rec.id, None)
            if self.by_fingerprint.get(rec.fingerprint) == rec.id:
                del self.by_fingerprint[rec.fingerprint]
        self.inhibitor.update(rec.id, rec.match_labels(), rec.is_open)

    def _schedule(self, rec: AlertRecord) -> None:
        at = self._next_alert_time(rec)
        if at is None:
            return
        cur = self._timer_at.get(rec.id)
        if cur is not None and cur <= at:
            return  # an earlier entry re-evaluates the alert; updates never pile up duplicates
        self._timer_at[rec.id] = at
        heapq.heappush(self._timers, (at, rec.id))

    def _next_alert_time(self, rec: AlertRecord) -> float | None:
        times: list[float] = []
        if rec.status is AlertStatus.FIRING:
            pol = self.policies.get(rec.esc_policy or "")
            if pol is not None:
                t = esc.next_time(pol, rec.esc_anchor, max(rec.esc_next_step, esc.first_step(pol)), rec.esc_repeats)
                if t is not None:
                    times.append(t)
            if not rec.ack_overdue and rec.ack_by is not None:
                times.append(rec.ack_by)
        if rec.is_open and not rec.resolve_overdue and rec.resolve_by is not None:
            times.append(rec.resolve_by)
        return min(times) if times else None

    # ------------------------------------------------------------------ transitions in

    def on_transitions(self, batch: list[MqttMessage]) -> None:
        """MQTT handler: apply each transition, flush due groups, commit, then publish and send."""
        now = self.clock()
        for msg in batch:
            if not self._first_sight(msg.payload, now):
                self.counters["transitions_duplicate"] += 1
                continue
            try:
                t = decode_transition(msg.payload)
            except Rejected as exc:
                self.counters["rejected"] += 1
                letter = make_dead_letter("alerting", msg.topic, msg.payload, exc.reason, exc.detail)
                self.mqtt.publish_nowait(dead_letter_topic("alerting"), encode(letter))
                continue
            self.counters["transitions"] += 1
            try:
                self._apply(t, now, msg.received_at)
            except Exception:  # one bad transition must not stop the others
                self.counters["transition_errors"] += 1
                log.exception("alerting: transition %s for %s failed", t.rule, t.device_id)
        self._flush_groups(now)
        self._commit_or_hold()

    def _first_sight(self, payload: bytes, now: float) -> bool:
        """Whether this exact transition is new within the last ``_SEEN_WINDOW_S`` seconds.

        The same transition can arrive more than once: handed over in-process and then echoed by
        the broker, once more per overlapping subscription of this process (MQTT 5 brokers send a
        copy per matching subscription), and again as a QoS 1 redelivery. Only the first counts.
        """
        key = hashlib.blake2b(payload, digest_size=16).digest()
        seen = self._seen
        if key in seen:
            return False
        seen[key] = now
        while seen:  # insertion order is time order
            oldest_key, oldest = next(iter(seen.items()))
            if len(seen) <= _SEEN_MAX and now - oldest <= _SEEN_WINDOW_S:
                break
            del seen[oldest_key]
        return True

    def on_local_transitions(self, items: list[tuple[Transition, bytes]]) -> None:
        """Transitions handed over directly by the rules stage of this process (no broker round trip).

        Each payload is remembered so that the copy arriving over MQTT is skipped. If the process
        stops before that copy arrives, the broker redelivers it after the restart and the
        lifecycle treats it as the duplicate it is (as for any QoS 1 redelivery).
        """
        now = self.clock()
        for t, payload in items:
            if not self._first_sight(payload, now):
                self.counters["transitions_duplicate"] += 1
                continue
            self.counters["transitions"] += 1
            self.counters["transitions_local"] += 1
            try:
                self._apply(t, now, now)
            except Exception:
                self.counters["transition_errors"] += 1
                log.exception("alerting: transition %s for %s failed", t.rule, t.device_id)
        self._flush_groups(now)
        self._commit_or_hold()

    def _apply(self, t: Transition, now: float, received: float) -> None:
        current_id = self.by_fingerprint.get(t.fingerprint)
        current = self.open.get(current_id) if current_id else None
        recent = self.store.latest_resolved(t.fingerprint) if current is None and t.status == "firing" else None
        site = self.registry.site_of(t.device_id) if self.registry is not None else None
        unit, industry = (site.unit, site.industry) if site is not None else ("", "")
        if self.workorders is not None and current is None:
            t = self.workorders.place(t, site)  # the case's grid, from its site or its position
        labels = dict(t.labels)
        labels.update(rule=t.rule, severity=t.severity.value, kind=t.kind.value, device_id=t.device_id,
                      site=t.site or "", unit=labels.get("unit") or unit, industry=labels.get("industry") or industry)
        plans = self.router.routes_for(labels)
        shift = self.clock_steps.frame_shift(now - t.ts.timestamp()) if self.clock_steps is not None else 0.0
        out = apply_transition(current, recent, t, now, new_id=new_alert_id(now), deadlines=self.config.deadlines,
                               reopen_window_s=self.config.reopen_window_s, unit=labels["unit"],
                               industry=labels["industry"], policy=plans[0].escalation, frame_shift_s=shift)
        self.counters[f"transition_{out.change}"] += 1
        if out.record is None or out.change in ("stale", "ignored"):
            return
        rec = out.record
        self._save(rec, out.events)
        if self.workorders is not None:
            self.workorders.on_alert(rec, out.change, now)
        self._recv_at_alert[rec.id] = received
        if len(self._recv_at_alert) > 100000:
            self._recv_at_alert.clear()
        renotify = out.change in ("reopened", "severity")
        for plan in plans:
            self.grouper.update(plan, rec.match_labels(), rec.id, _group_status(rec), now, renotify=renotify)

    def _save(self, rec: AlertRecord, events: tuple[AuditEvent, ...] | list[AuditEvent]) -> None:
        self.store.put_alert(rec)
        if events:
            self.store.add_events(events)
        self._remember(rec)
        self._to_publish[rec.id] = rec

    # ------------------------------------------------------------------ notifications out

    def _flush_groups(self, now: float) -> None:
        for fl in self.grouper.due(now):
            self._notify_group(fl, now)
            g = self.grouper.groups.get(fl.key)
            if g is None:
                self.store.kv_delete("group", fl.key)
            else:
                self.store.kv_put("group", fl.key, _GROUP_ENC.encode(g).decode())

    def _notify_group(self, fl: GroupFlush, now: float) -> None:
        plan = self.router.plans[fl.route_id]
        firing = [r for a in fl.firing if (r := self.open.get(a)) is not None]
        resolved = [r for a in fl.resolved if (r := self.store.get_alert(a)) is not None]
        muted = [r.id for r in firing if self._muted(r, now)]
        if muted:
            self.grouper.held_back(fl.key, muted)
            firing = [r for r in firing if r.id not in muted]
        resolved = [r for r in resolved if not self._muted(r, now)]
        if not firing and not resolved:
            self.counters["flushes_muted"] += 1
            return
        kind = "repeat" if fl.repeat else ("firing" if firing else "resolved")
        targets = list(plan.receivers)
        pol = self.policies.get(plan.escalation or "")
        if pol is not None and firing and not fl.repeat:
            targets += esc.immediate_targets(pol)
        head = firing[0] if firing else resolved[0]
        recipients = self.resolve_targets(targets, head.assigned_unit or head.unit, now, head.labels.get("grid", ""))
        self._queue_for(recipients, kind, firing, resolved, now, f"g:{fl.key}:{fl.seq}", step=None)

    def _muted(self, rec: AlertRecord, now: float) -> bool:
        reason = self.muter.mute_reason(rec.id, rec.match_labels(), now)
        if reason is not None:
            self.counters[f"muted_{reason.kind}"] += 1
            return True
        return False

    def resolve_targets(self, targets: list[str], unit: str, now: float, grid: str = "") -> list[str]:
        """Turn targets (``person:``, ``role:``, ``roster:``, ``receiver:``, ``grid:staff|duty`` or a receiver name)
        into recipients; ``grid:staff`` are the staff of the alert's grid (``alerting.grids``), ``grid:duty`` those
        of them on duty in the grid's roster (all of them without one)."""
        out: list[str] = []
        for t in targets:
            kind, _, name = t.partition(":")
            if not name:
                kind, name = "receiver", kind
            found: list[str] = []
            if kind == "receiver":
                found = [f"receiver:{name}"]
            elif kind == "person":
                found = [f"person:{name}"]
            elif kind == "role":
                found = [f"person:{p}" for p in self.roster.people_for_role(name, unit, now)]
            elif kind == "roster":
                s = self.roster.shift(name, now)
                found = [f"person:{s.person}"] if s is not None else []
            elif kind == "grid" and name == "staff" and self.workorders is not None:
                found = [f"person:{p}" for p in self.workorders.staff_of(grid)]
            elif kind == "grid" and name == "duty" and self.workorders is not None:
                found = [f"person:{p}" for p in self.workorders.on_duty_in(grid, now)]
            for f in found:
                if f not in out:
                    out.append(f)
        return out

    def recipient(self, key: str) -> tuple[list[str], str]:
        """A recipient's Apprise URLs (in failover order) and locale."""
        kind, _, name = key.partition(":")
        if kind == "receiver" and (r := self.receivers.get(name)) is not None:
            return list(r.urls), r.locale or self.config.locale
        if kind == "person" and (p := self.roster.people.get(name)) is not None:
            return list(p.channels), p.locale or self.config.locale
        return [], self.config.locale

    def _queue_for(self, recipients: list[str], kind: str, firing: list[AlertRecord], resolved: list[AlertRecord],
                   now: float, key: str, step: int | None) -> None:
        trigger = max(firing or resolved, key=lambda r: r.updated_at)
        ids = [r.id for r in firing] + [r.id for r in resolved]
        for rcpt in recipients:
            _, locale = self.recipient(rcpt)
            msg = self.templates.render(kind, firing, resolved, locale, step)
            attach = msg.attach if self.config.attach_snapshots else None
            status = "pending"
            if not self.storm.admit(rcpt, now):
                self.storm.hold(rcpt, msg.title, now)
                self.store.kv_put("storm", rcpt, json.dumps(self.storm.held_for(rcpt), ensure_ascii=False))
                status = "digested"
                self.counters["notifications_digested"] += 1
            nid = self.store.add_notification(
                dedup_key=f"{key}:{rcpt}", kind=kind, recipient=rcpt, alert_ids=ids, title=msg.title, body=msg.body,
                attach=attach, created_at=now, source_ts=trigger.source_ts, received_at=trigger.received_at,
                status=status)
            if nid is None:
                self.counters["notifications_deduplicated"] += 1
            elif status == "pending":
                self.counters["notifications_queued"] += 1
                self._to_send.append(nid)
                recv = self._recv_at_alert.get(trigger.id)
                if recv is not None:
                    self._recv_at[nid] = recv

    # ------------------------------------------------------------------ timers

    def tick(self, now: float | None = None) -> None:
        """Run everything due at ``now``: group flushes, escalation rungs, deadlines, digests, silence expiry."""
        now = self.clock() if now is None else now
        self._flush_groups(now)
        if self.workorders is not None:
            self.workorders.tick(now)
        rungs: dict[tuple[str, int, int], list[AlertRecord]] = {}
        overdue: dict[str, list[AlertRecord]] = {}  # batched per recipient, like escalation rungs
        while self._timers and self._timers[0][0] <= now:
            popped, aid = heapq.heappop(self._timers)
            if self._timer_at.get(aid) == popped:
                del self._timer_at[aid]
            rec = self.open.get(aid)
            if rec is None:
                continue
            at = self._next_alert_time(rec)
            if at is None or at > now:
                self._schedule(rec)
                continue
            rec, events = check_overdue(rec, now)
            pol = self.policies.get(rec.esc_policy or "")
            if rec.status is AlertStatus.FIRING and pol is not None:
                start = max(rec.esc_next_step, esc.first_step(pol))
                due, nxt, reps = esc.due_steps(pol, rec.esc_anchor, start, rec.esc_repeats, now)
                if due:
                    rec = msgspec.structs.replace(rec, esc_next_step=nxt, esc_repeats=reps, updated_at=now)
                    muted = self._muted(rec, now)
                    for d in due:
                        events += (AuditEvent(alert_id=rec.id, ts=now, actor="system", action="escalated",
                                              detail={"step": str(d.step + 1), "repeat": str(d.repeat),
                                                      "muted": str(muted).lower()}),)
                        if muted:
                            continue
                        for rcpt in self.resolve_targets(list(d.targets), rec.assigned_unit or rec.unit, now,
                                                         rec.labels.get("grid", "")):
                            rungs.setdefault((rcpt, d.step, d.repeat), []).append(rec)
            if events:
                actions = {e.action for e in events}
                # Past resolve-by always tells the route's receivers (and the assignee); past ack-by only when
                # no escalation ladder is already chasing the alert.
                if ("resolve_overdue" in actions or ("ack_overdue" in actions and pol is None)) and not self._muted(
                        rec, now):
                    plan = self.router.routes_for(rec.match_labels())[0]
                    targets = list(plan.receivers) + ([f"person:{rec.assignee}"] if rec.assignee else [])
                    for rcpt in self.resolve_targets(targets, rec.assigned_unit or rec.unit, now,
                                                     rec.labels.get("grid", "")):
                        overdue.setdefault(rcpt, []).append(rec)
                self._save(rec, events)
            else:
                self._schedule(rec)
        for (rcpt, step, rep), recs in rungs.items():
            kind = "repeat" if rep else "escalation"
            key = f"e:{step}:{rep}:{recs[0].id}:{len(recs)}:{now:.3f}"
            self._queue_for([rcpt], kind, recs, [], now, key, step=step + 1)
        for rcpt, recs in overdue.items():
            self._queue_for([rcpt], "overdue", recs, [], now, f"o:{recs[0].id}:{len(recs)}:{now:.3f}", step=None)
        for rcpt, lines in self.storm.due_digests(now):
            self.store.kv_delete("storm", rcpt)
            _, locale = self.recipient(rcpt)
            title = "告警汇总" if locale == "zh" else "Digest"
            did = self.store.add_notification(
                dedup_key=f"d:{rcpt}:{now:.3f}", kind="digest", recipient=rcpt, alert_ids=[],
                title=f"{title} ({len(lines)})", body="\n".join(lines[:200]), attach=None, created_at=now,
                source_ts=None, received_at=None)
            if did is not None:
                self._to_send.append(did)
        for sid in self.silences.expired(now):
            self.silences.remove(sid)
            self.store.kv_delete("silence", sid)
        for wid in self.maintenance.expired(now):
            self.maintenance.remove(wid)
            self.store.kv_delete("maintenance", wid)
        self._commit(wake=False)

    def _next_wake(self) -> float:
        now = self.clock()
        times = [now + self.config.tick_s]
        for t in (self.grouper.next_due(), self.storm.next_due(), self._timers[0][0] if self._timers else None):
            if t is not None:
                times.append(t)
        return min(times)

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        while True:
            delay = max(0.0, self._next_wake() - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self.tick()
                if self._backlog:
                    self._requeue_pending()
            except Exception:
                self.counters["timer_errors"] += 1
                log.exception("alerting: timer tick failed")

    # ------------------------------------------------------------------ commit, publish, send

    def _commit_or_hold(self) -> None:
        """Commit a handled batch; if the disk refuses it, the batch must not be acknowledged.

        If SQLite kept the transaction open after the failed COMMIT, the MQTT client holds the batch
        and retries the commit (publishing and sending follow it). If SQLite rolled it back (what it
        does for a full disk in WAL mode), the alerts in memory are ahead of the database: nothing
        more is acknowledged until the node is restarted (it then reloads the database and the
        broker redelivers every unacknowledged transition); the health model reports the stall.
        """
        try:
            self._commit()
        except sqlite3.OperationalError as exc:
            self.counters["commit_errors"] += 1
            if self.store.db.in_transaction:
                raise NotDurable(f"alerting database: {exc}", self._commit) from None
            self._diverged = f"alerting database: {exc}; rolled back, restart the node once there is space"
            log.error("alerting: %s", self._diverged)
        if self._diverged is not None:
            raise NotDurable(self._diverged, self._refuse_until_restart)

    def _refuse_until_restart(self) -> None:
        assert self._diverged is not None
        raise NotDurable(self._diverged, self._refuse_until_restart)

    def _commit(self, wake: bool = True) -> None:
        self.store.commit()
        if self._to_publish:
            changed, self._to_publish = self._to_publish, {}
            for rec in changed.values():
                self._publish(rec)
        if self._to_send:
            ids, self._to_send = self._to_send, []
            for nid in ids:
                self._enqueue(nid)
        if wake and self._wake is not None:
            # New groups or timers may be due earlier than the timer's current sleep.
            self._wake.set()

    def _publish(self, rec: AlertRecord) -> None:
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
        for q in list(self._watchers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                self.counters["watch_dropped"] += 1
            q.put_nowait(alert)

    def _enqueue(self, nid: int) -> None:
        if self._queue is None or self._queue.full():
            self._backlog = True  # stays pending in the outbox; re-read when the queue drains
            return
        self._queue.put_nowait(nid)
        self._queued.add(nid)

    def _requeue_pending(self) -> None:
        assert self._queue is not None
        self._backlog = False
        for row in self.store.pending_notifications(self.config.queue_size):
            if row.id in self._queued or row.id in self._inflight:
                continue
            if self._queue.full():
                self._backlog = True
                break
            if row.status == "sending" and any(a["ok"] for a in self.store.attempts(row.id)):
                self.store.mark_notification(row.id, status="sent")
                continue
            self._queue.put_nowait(row.id)
            self._queued.add(row.id)
        self.store.commit()

    async def _send_loop(self) -> None:
        """Start every queued delivery as its own task: a delivery waiting on a hung channel holds no
        worker another channel's alert needs (the sender isolates channels; see alerting.sender)."""
        assert self._queue is not None
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                nid = await self._queue.get()
                self._queued.discard(nid)
                self._inflight.add(nid)
                task = asyncio.create_task(self._send_one(nid), name=f"alerting-send-{nid}")
                running.add(task)
                task.add_done_callback(running.discard)
        except asyncio.CancelledError:
            # Let deliveries in flight finish (bounded) so a shutdown does not leave them half-recorded.
            if running:
                await asyncio.wait(running, timeout=self.config.retry.timeout_s)
            for task in running:
                task.cancel()
            raise

    async def _send_one(self, nid: int) -> None:
        try:
            await self._send(nid)
        except Exception:
            self.counters["sender_errors"] += 1
            log.exception("alerting: delivery of notification %d failed", nid)
        finally:
            self._inflight.discard(nid)

    async def _send(self, nid: int) -> None:
        row = self.store.notification(nid)
        if row is None or row.status not in ("pending", "sending"):
            return
        channels, _ = self.recipient(row.recipient)
        self.store.mark_notification(nid, status="sending")
        count = 0

        def on_attempt(a: Attempt) -> None:
            nonlocal count
            count += 1
            self.store.add_attempt(nid, a.started_at, a.channel, a.attempt, a.ok, a.error, a.elapsed_ms)
            self.store.commit()

        msg = Message(row.title, row.body, row.attach, "success" if row.kind == "resolved" else "failure")
        result = await self.sender.deliver(channels, msg, on_attempt)
        done = self.clock()
        status = "sent" if result.ok else "dead"
        self.store.mark_notification(nid, status=status, handed_at=result.handed_at, done_at=done, attempts=count,
                                     channel=result.channel, error=None if result.ok else result.error)
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
        if not result.ok:
            log.warning("alerting: notification %d to %s dead-lettered after %d attempts: %s", nid,
                        row.recipient, count, result.error)

    async def deliver_pending(self) -> int:
        """Deliver every pending outbox entry now, one by one (tests, maintenance tools); returns the count."""
        self._commit(wake=False)
        rows = self.store.pending_notifications()
        for row in rows:
            await self._send(row.id)
        return len(rows)

    # ------------------------------------------------------------------ API server

    async def _serve_api(self) -> None:
        from aiohttp import web

        from alerting.api import build_app

        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.api.host, self.config.api.port)
        await site.start()
        addrs = runner.addresses
        self.api_port = int(addrs[0][1]) if addrs else self.config.api.port
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

