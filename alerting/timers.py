"""Alert timers: escalation rungs, ack-by / resolve-by deadlines, storm digests, expiry of silences and windows.

One heap holds each open alert's next due time (the earliest of its next rung, ``ack_by`` and
``resolve_by``). ``collect`` turns what is due into notices that already name their recipients (a
rung's targets are resolved when it is due, an overdue notice goes to the route's receivers and the
assignee) and feeds them to the pipeline at its ``targets`` stage. Group flushes are the grouping
stage's own timers (``Grouper.next_due``).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable

import msgspec

from alerting import escalation as esc
from alerting.config import EscalationPolicy
from alerting.grouping import Grouper
from alerting.lifecycle import AlertBook, AlertRecord, AuditEvent, check_overdue
from alerting.muting import MaintenanceCalendar, SilenceSet
from alerting.pipeline import Batch, Notice
from alerting.router import Router
from alerting.stages import MutingStage, StormControl, TargetsStage
from alerting.store import AlertStore
from broker.contracts import AlertStatus

_GROUP_ENC = msgspec.json.Encoder()


class AlertTimers:
    """Per-alert deadlines and escalation ladders, digests, and the end of silences and maintenance windows."""

    def __init__(self, book: AlertBook[AlertStore], policies: dict[str, EscalationPolicy], router: Router, muting: MutingStage,
                 targets: TargetsStage, storm: StormControl, silences: SilenceSet,
                 maintenance: MaintenanceCalendar) -> None:
        self.book = book
        self.policies = policies
        self.router = router
        self.muting = muting
        self.targets = targets
        self.storm = storm
        self.silences = silences
        self.maintenance = maintenance
        self.store = book.store
        self.heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}

    def schedule(self, rec: AlertRecord) -> None:
        """Arm (or bring forward) an open alert's next due time."""
        at = self.next_alert_time(rec)
        if at is None:
            return
        cur = self._at.get(rec.id)
        if cur is not None and cur <= at:
            return  # an earlier entry re-evaluates the alert; updates never pile up duplicates
        self._at[rec.id] = at
        heapq.heappush(self.heap, (at, rec.id))

    def reset(self) -> None:
        """Forget every armed time and arm the open alerts again (after their anchors moved)."""
        self.heap.clear()
        self._at.clear()
        for rec in self.book.open.values():
            self.schedule(rec)

    def shift(self, delta: float, grouper: Grouper) -> None:
        """The wall clock stepped ``delta`` s: move each open alert's deadlines and ladder anchor, the group timers
        and the storm windows by it, so none runs out early or hangs (silences and rosters are real instants)."""
        for rec in list(self.book.open.values()):
            self.book.save(msgspec.structs.replace(
                rec, ack_by=None if rec.ack_by is None else rec.ack_by + delta,
                resolve_by=None if rec.resolve_by is None else rec.resolve_by + delta,
                esc_anchor=rec.esc_anchor + delta, wall_shift=rec.wall_shift + delta))
        self.reset()
        grouper.shift(delta)
        for g in grouper.groups.values():
            self.store.kv_put("group", g.key, _GROUP_ENC.encode(g).decode())
        for rcpt in self.storm.shift(delta):
            self.store.kv_put("storm", rcpt, json.dumps(self.storm.held_for(rcpt), ensure_ascii=False))

    def next_alert_time(self, rec: AlertRecord) -> float | None:
        """When an alert next needs attention: its next rung, ack-by or resolve-by."""
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

    def next_due(self) -> float | None:
        """The earliest armed alert time or digest."""
        times = [t for t in (self.storm.next_due(), self.heap[0][0] if self.heap else None) if t is not None]
        return min(times) if times else None

    def collect(self, now: float) -> Batch:
        """What is due at ``now``: rung and overdue notices, batched per recipient."""
        rungs: dict[tuple[str, int, int], list[AlertRecord]] = {}
        overdue: dict[str, list[AlertRecord]] = {}
        while self.heap and self.heap[0][0] <= now:
            popped, aid = heapq.heappop(self.heap)
            if self._at.get(aid) == popped:
                del self._at[aid]
            rec = self.book.open.get(aid)
            if rec is None:
                continue
            at = self.next_alert_time(rec)
            if at is None or at > now:
                self.schedule(rec)
                continue
            self._due(rec, now, rungs, overdue)
        batch = Batch(now)
        for (rcpt, step, rep), recs in rungs.items():
            batch.notices.append(Notice(
                kind="repeat" if rep else "escalation", firing=recs, resolved=[], step=step + 1, recipients=[rcpt],
                key=f"e:{step}:{rep}:{recs[0].id}:{len(recs)}:{now:.3f}"))
        for rcpt, recs in overdue.items():
            batch.notices.append(Notice(kind="overdue", firing=recs, resolved=[], recipients=[rcpt],
                                        key=f"o:{recs[0].id}:{len(recs)}:{now:.3f}"))
        return batch

    def digests(self, now: float) -> Batch:
        """Storm digests due at ``now`` (taken after the rungs' letters passed storm control, which may add lines)."""
        batch = Batch(now)
        for rcpt, lines in self.storm.due_digests(now):
            self.store.kv_delete("storm", rcpt)
            batch.notices.append(Notice(kind="digest", firing=[], resolved=[], recipients=[rcpt], lines=lines,
                                        key=f"d:{rcpt}:{now:.3f}"))
        return batch

    def _due(self, rec: AlertRecord, now: float, rungs: dict[tuple[str, int, int], list[AlertRecord]],
             overdue: dict[str, list[AlertRecord]]) -> None:
        rec, events = check_overdue(rec, now)
        pol = self.policies.get(rec.esc_policy or "")
        resolve: Callable[[list[str], AlertRecord], list[str]] = lambda targets, r: self.targets.resolve(  # noqa: E731
            targets, r.assigned_unit or r.unit, now, r.labels.get("grid", ""))
        if rec.status is AlertStatus.FIRING and pol is not None:
            start = max(rec.esc_next_step, esc.first_step(pol))
            due, nxt, reps = esc.due_steps(pol, rec.esc_anchor, start, rec.esc_repeats, now)
            if due:
                rec = msgspec.structs.replace(rec, esc_next_step=nxt, esc_repeats=reps, updated_at=now)
                muted = self.muting.muted(rec, now)
                for d in due:
                    events += (AuditEvent(alert_id=rec.id, ts=now, actor="system", action="escalated",
                                          detail={"step": str(d.step + 1), "repeat": str(d.repeat),
                                                  "muted": str(muted).lower()}),)
                    if muted:
                        continue
                    for rcpt in resolve(list(d.targets), rec):
                        rungs.setdefault((rcpt, d.step, d.repeat), []).append(rec)
        if not events:
            self.schedule(rec)
            return
        actions = {e.action for e in events}
        # Past resolve-by always tells the route's receivers (and the assignee); past ack-by only when no
        # escalation ladder is already chasing the alert.
        if ("resolve_overdue" in actions or ("ack_overdue" in actions and pol is None)) and not self.muting.muted(
                rec, now):
            plan = self.router.routes_for(rec.match_labels())[0]
            targets = list(plan.receivers) + ([f"person:{rec.assignee}"] if rec.assignee else [])
            for rcpt in resolve(targets, rec):
                overdue.setdefault(rcpt, []).append(rec)
        self.book.save(rec, events)

    def expire(self, now: float) -> None:
        """Drop silences and maintenance windows that have ended for good."""
        for sid in self.silences.expired(now):
            self.silences.remove(sid)
            self.store.kv_delete("silence", sid)
        for wid in self.maintenance.expired(now):
            self.maintenance.remove(wid)
            self.store.kv_delete("maintenance", wid)
