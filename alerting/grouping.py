"""Grouping of alerts into notifications (group_by, group_wait, group_interval, repeat_interval).

Pure: ``update`` records an alert's state in its group, ``due`` returns the groups whose next
notification is due at ``now``. A group flushes first ``group_wait`` after it was created, then
at most every ``group_interval`` when something changed (a new alert, one resolved), and every
``repeat_interval`` while unacknowledged alerts still fire. A flush that would say nothing new
is not due (deduplication).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import msgspec

from alerting.router import RoutePlan

FIRING, ACKED, RESOLVED = "firing", "acknowledged", "resolved"


class GroupState(msgspec.Struct, kw_only=True):
    """One group's members and what was last notified about them."""

    key: str
    route_id: str
    labels: dict[str, str]
    created_at: float
    last_flush_at: float | None = None
    flushes: int = 0
    members: dict[str, str] = {}
    """alert id -> firing / acknowledged / resolved"""
    notified: dict[str, str] = {}

    def changed(self, send_resolved: bool, eager: bool = False) -> bool:
        """Whether a notification would say something new (``eager``: group_wait 0, see ``Grouper.next_at``)."""
        for aid, st in self.members.items():
            before = self.notified.get(aid)
            if st == FIRING and before != FIRING and before != ACKED:
                return True
            if st == RESOLVED and send_resolved and before in (FIRING, ACKED):
                return True
            if eager and st == RESOLVED and aid not in self.notified:
                return True  # fired and resolved before any notification (one batch after an outage)
        return False

    def firing(self) -> list[str]:
        """Unacknowledged firing members."""
        return [a for a, s in self.members.items() if s == FIRING]


@dataclass(frozen=True, slots=True)
class GroupFlush:
    """A notification that is due: which alerts fire and which resolved since the last one."""

    key: str
    route_id: str
    labels: dict[str, str]
    seq: int
    firing: list[str]
    resolved: list[str]
    repeat: bool


def group_key(plan: RoutePlan, labels: dict[str, str], alert_id: str) -> tuple[str, dict[str, str]]:
    """The group an alert belongs to on a route; ``group_by: ['...']`` gives every alert its own group."""
    if plan.group_by == ("...",):
        return f"{plan.id}|#{alert_id}", {"alert_id": alert_id}
    glabels = {k: labels.get(k, "") for k in plan.group_by}
    return plan.id + "|" + ",".join(f"{k}={v}" for k, v in glabels.items()), glabels


@dataclass
class Grouper:
    """All groups and a timer heap of when each is next due."""

    plans: dict[str, RoutePlan]
    groups: dict[str, GroupState] = field(default_factory=dict)
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _scheduled: dict[str, float] = field(default_factory=dict)
    """Earliest heap entry per group: an update never pushes a later duplicate (bounded heap)."""

    def update(self, plan: RoutePlan, labels: dict[str, str], alert_id: str, status: str, now: float,
               renotify: bool = False) -> GroupState:
        """Record an alert's state in its group on this route; ``renotify`` makes it count as new again."""
        key, glabels = group_key(plan, labels, alert_id)
        g = self.groups.get(key)
        if g is None:
            if status == RESOLVED:
                # Nothing to tell about an alert that resolved in a group we no longer track.
                return GroupState(key=key, route_id=plan.id, labels=glabels, created_at=now)
            g = GroupState(key=key, route_id=plan.id, labels=glabels, created_at=now)
            self.groups[key] = g
        g.members[alert_id] = status
        if renotify:
            g.notified.pop(alert_id, None)
        self._schedule(g)
        return g

    def restore(self, g: GroupState) -> None:
        """Put back a group loaded from the store."""
        self.groups[g.key] = g
        self._schedule(g)

    def next_at(self, g: GroupState) -> float | None:
        """When this group is next due, or None."""
        plan = self.plans.get(g.route_id)
        if plan is None:
            return None
        if g.last_flush_at is None:
            # group_wait 0 means "at once": an alert that fired and cleared inside one batch (a backlog
            # replayed after an outage) must still reach a human, as a resolved notice. A positive
            # group_wait deliberately swallows blips shorter than itself.
            eager = plan.group_wait_s <= 0
            return g.created_at + plan.group_wait_s if g.firing() or (eager and g.members) else None
        times: list[float] = []
        if g.changed(plan.send_resolved, plan.group_wait_s <= 0):
            times.append(g.last_flush_at + plan.group_interval_s)
        if g.firing() and plan.repeat_interval_s > 0:
            times.append(g.last_flush_at + plan.repeat_interval_s)
        return min(times) if times else None

    def _schedule(self, g: GroupState) -> None:
        at = self.next_at(g)
        if at is None:
            return
        cur = self._scheduled.get(g.key)
        if cur is not None and cur <= at:
            return  # the earlier entry re-evaluates the group when it comes up
        self._scheduled[g.key] = at
        heapq.heappush(self._heap, (at, g.key))

    def next_due(self) -> float | None:
        """The earliest time anything may be due (for the service's timer)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[GroupFlush]:
        """Flush every group due at ``now``; the caller notifies and persists the returned groups."""
        out: list[GroupFlush] = []
        seen: set[str] = set()
        while self._heap and self._heap[0][0] <= now:
            popped, key = heapq.heappop(self._heap)
            if self._scheduled.get(key) == popped:
                del self._scheduled[key]
            if key in seen:
                continue
            g = self.groups.get(key)
            if g is None:
                continue
            at = self.next_at(g)
            if at is None:
                self._forget_if_done(g)
                continue
            if at > now:
                self._schedule(g)
                continue
            seen.add(key)
            out.append(self._flush(g, now))
        return out

    def _flush(self, g: GroupState, now: float) -> GroupFlush:
        plan = self.plans[g.route_id]
        eager = plan.group_wait_s <= 0
        changed = g.last_flush_at is None or g.changed(plan.send_resolved, eager)
        firing = g.firing()
        resolved = [a for a, s in g.members.items() if s == RESOLVED and (
            (eager and a not in g.notified) or (plan.send_resolved and g.notified.get(a) in (FIRING, ACKED)))]
        g.flushes += 1
        g.last_flush_at = now
        g.notified = dict(g.members)
        for a in [a for a, s in g.members.items() if s == RESOLVED]:
            del g.members[a]
            g.notified.pop(a, None)
        self._schedule(g)
        self._forget_if_done(g)
        return GroupFlush(g.key, g.route_id, dict(g.labels), g.flushes, firing, resolved, repeat=not changed)

    def shift(self, delta: float) -> None:
        """Move every group's timers by a step of the wall clock (``delta`` s): each wait keeps its length."""
        for g in self.groups.values():
            g.created_at += delta
            if g.last_flush_at is not None:
                g.last_flush_at += delta
        self._heap.clear()
        self._scheduled.clear()
        for g in self.groups.values():
            self._schedule(g)

    def held_back(self, key: str, alert_ids: list[str]) -> None:
        """Alerts muted at a flush count as not yet notified, so they go out once the muting ends."""
        g = self.groups.get(key)
        if g is None or not alert_ids:
            return
        for aid in alert_ids:
            g.notified.pop(aid, None)
        self._schedule(g)

    def _forget_if_done(self, g: GroupState) -> None:
        if not g.members:
            self.groups.pop(g.key, None)
