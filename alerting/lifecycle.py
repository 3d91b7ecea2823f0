"""The alert lifecycle as a pure state machine (firing -> acknowledged -> resolved), and the book of open alerts.

Functions take the current record, an input (a rule's transition or a person's action) and
``now`` (epoch seconds) and return the new record with the audit events to record. They never
do I/O; the service stores and publishes what they return.

``AlertBook`` holds the open alerts in memory, indexed by fingerprint, and is the one way a change is
saved: ``AlertBook.save`` writes the record and its audit events into the store's open transaction, the
in-memory index and the inhibition index follow, and the listeners hear of it (the timers re-arm the
alert's deadlines and escalation, the publisher queues its new state).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Literal, Protocol, TypeVar

import msgspec

from alerting.config import Deadlines
from alerting.errors import AlertingError
from alerting.muting import Inhibitor
from broker.contracts import Alert, AlertStatus, Kind, MetricValue, Severity, Transition

SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.MAJOR: 2, Severity.CRITICAL: 3}
OPEN = (AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED)


class AlertRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Everything alerting keeps about one alert (times are epoch seconds)."""

    id: str
    fingerprint: str
    rule: str
    severity: Severity
    status: AlertStatus
    kind: Kind
    device_id: str
    site: str | None = None
    unit: str = ""
    industry: str = ""
    labels: dict[str, str] = {}
    summary: str = ""
    summary_en: str = ""
    description: str = ""
    values: dict[str, MetricValue] = {}
    starts_at: float
    updated_at: float
    ends_at: float | None = None
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    assignee: str | None = None
    assigned_unit: str | None = None
    resolved_by: str | None = None
    ack_by: float | None = None
    resolve_by: float | None = None
    ack_overdue: bool = False
    resolve_overdue: bool = False
    snapshot_url: str | None = None
    reason: str | None = None
    last_ts: float = 0.0
    """Rule-side timestamp of the last transition applied (older ones are stale)."""
    source_ts: float | None = None
    received_at: float | None = None
    reopen_count: int = 0
    esc_policy: str | None = None
    esc_anchor: float = 0.0
    esc_next_step: int = 0
    esc_repeats: int = 0
    wall_shift: float = 0.0
    """Seconds added to the device times behind the deadlines and escalation anchor: the platform clock's steps
    (``broker.clocksteps``), so a deadline recomputed later lands in the same wall-clock frame."""

    @property
    def is_open(self) -> bool:
        """Firing or acknowledged."""
        return self.status is not AlertStatus.RESOLVED

    def match_labels(self) -> dict[str, str]:
        """Labels used by routing, grouping and muting: the rule's labels plus the alert's identity."""
        out = dict(self.labels)
        out.update(rule=self.rule, severity=self.severity.value, kind=self.kind.value, device_id=self.device_id,
                   site=self.site or "", unit=self.assigned_unit or self.unit, industry=self.industry)
        return out


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded transition: who did what to which alert, when and why."""

    alert_id: str
    ts: float
    actor: str
    action: str
    detail: dict[str, str] = {}


Change = Literal["new", "reopened", "updated", "severity", "resolved", "stale", "ignored"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a transition did."""

    change: Change
    record: AlertRecord | None
    events: tuple[AuditEvent, ...] = ()

    @property
    def notify(self) -> bool:
        """Whether the change is worth a notification (new, reopened, raised severity, resolved)."""
        return self.change in ("new", "reopened", "severity", "resolved")


class LifecycleError(AlertingError):
    """An action that does not apply to the alert's state (``code`` like ``conflict``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_alert_id(now: float | None = None) -> str:
    """A short, time-ordered, unique alert id (hex milliseconds + random)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:011x}{os.urandom(4).hex()}"


def _deadlines(severity: Severity, starts: float, d: Deadlines,
               labels: Mapping[str, str] | None = None) -> tuple[float | None, float | None]:
    ack = d.ack_s.get(severity.value)
    res = d.resolve_s.get(severity.value)
    category = d.categories.get((labels or {}).get("category", "")) if d.categories else None
    if category is not None:  # e.g. the rescue clock of trapped-passenger alerts
        ack = category.ack_s if category.ack_s is not None else ack
        res = category.resolve_s if category.resolve_s is not None else res
    return (starts + ack if ack is not None else None, starts + res if res is not None else None)


def ts_of(dt: datetime | None) -> float | None:
    """Epoch seconds of an aware datetime (None stays None)."""
    return None if dt is None else dt.timestamp()


def apply_transition(current: AlertRecord | None, recent: AlertRecord | None, t: Transition, now: float, *,
                     new_id: str, deadlines: Deadlines, reopen_window_s: float, unit: str = "",
                     industry: str = "", policy: str | None = None, frame_shift_s: float = 0.0) -> Outcome:
    """Apply a rule's transition.

    Args:
        current: the open alert with the transition's fingerprint, if any.
        recent: the latest resolved alert with that fingerprint, if any (for reopening).
        t: the transition.
        now: the current time.
        new_id: the id to use if a new alert is created.
        deadlines: handling time limits.
        reopen_window_s: a firing within this time after ``recent`` ended reopens it.
        unit, industry: the responsible department and industry (from the registry).
        policy: the escalation policy chosen by routing (kept on the record).
        frame_shift_s: added to the transition's device times where they anchor wall-clock intervals
            (deadlines, escalation) after the platform's clock stepped (``WallClockSteps.frame_shift``).

    Returns:
        The outcome: the new record (or None when ignored) and the audit events.
    """
    tts = t.ts.timestamp()
    if current is not None and tts < current.last_ts:
        return Outcome("stale", current)
    if t.status == "resolved":
        if current is None:
            return Outcome("ignored", None)
        rec = msgspec.structs.replace(
            current, status=AlertStatus.RESOLVED, ends_at=tts, updated_at=now, resolved_by="rule",
            reason="rule cleared", last_ts=tts, values=t.values or current.values,
            source_ts=ts_of(t.source_ts), received_at=t.received_at)
        return Outcome("resolved", rec, (AuditEvent(alert_id=rec.id, ts=now, actor="rule", action="resolved",
                                                    detail={"reason": "rule cleared"}),))
    if current is not None:
        raised = SEVERITY_RANK[t.severity] > SEVERITY_RANK[current.severity]
        changed_sev = t.severity != current.severity
        ack_by, resolve_by = (_deadlines(t.severity, current.starts_at + current.wall_shift, deadlines, t.labels)
                              if changed_sev
                              else (current.ack_by, current.resolve_by))
        rec = msgspec.structs.replace(
            current, severity=t.severity, values=t.values, updated_at=now, last_ts=tts,
            summary=t.summary or current.summary, summary_en=t.summary_en or current.summary_en,
            snapshot_url=t.snapshot_url or current.snapshot_url, ack_by=ack_by, resolve_by=resolve_by,
            source_ts=ts_of(t.source_ts), received_at=t.received_at)
        if changed_sev:
            ev = AuditEvent(alert_id=rec.id, ts=now, actor="rule", action="severity_changed",
                            detail={"from": current.severity.value, "to": t.severity.value})
            return Outcome("severity" if raised else "updated", rec, (ev,))
        return Outcome("updated", rec)
    starts = ts_of(t.started_at) or tts
    # A negative gap is not a re-fire: the alert ended "later" than this firing only because a clock stepped
    # back (the platform's, for an alert a person closed, or the device's), so it is a new occurrence.
    if recent is not None and recent.ends_at is not None and 0.0 <= tts - recent.ends_at <= reopen_window_s:
        ack_by, resolve_by = _deadlines(t.severity, tts + frame_shift_s, deadlines, t.labels)
        rec = msgspec.structs.replace(
            recent, status=AlertStatus.FIRING, severity=t.severity, ends_at=None, updated_at=now, last_ts=tts,
            values=t.values, acknowledged_by=None, acknowledged_at=None, resolved_by=None, reason="re-fired",
            ack_by=ack_by, resolve_by=resolve_by, ack_overdue=False, resolve_overdue=False,
            reopen_count=recent.reopen_count + 1, source_ts=ts_of(t.source_ts), received_at=t.received_at,
            snapshot_url=t.snapshot_url or recent.snapshot_url, esc_policy=policy, esc_anchor=tts + frame_shift_s,
            esc_next_step=0, esc_repeats=0, wall_shift=frame_shift_s)
        return Outcome("reopened", rec, (AuditEvent(alert_id=rec.id, ts=now, actor="rule", action="reopened",
                                                    detail={"after_s": f"{tts - recent.ends_at:.0f}"}),))
    ack_by, resolve_by = _deadlines(t.severity, starts + frame_shift_s, deadlines, t.labels)
    rec = AlertRecord(
        id=new_id, fingerprint=t.fingerprint, rule=t.rule, severity=t.severity, status=AlertStatus.FIRING,
        kind=t.kind, device_id=t.device_id, site=t.site, unit=unit, industry=industry, labels=dict(t.labels),
        summary=t.summary, summary_en=t.summary_en, description=t.description, values=dict(t.values),
        starts_at=starts, updated_at=now, ack_by=ack_by, resolve_by=resolve_by, snapshot_url=t.snapshot_url,
        last_ts=tts, source_ts=ts_of(t.source_ts), received_at=t.received_at, esc_policy=policy,
        esc_anchor=starts + frame_shift_s, wall_shift=frame_shift_s,
    )
    return Outcome("new", rec, (AuditEvent(alert_id=new_id, ts=now, actor="rule", action="created",
                                           detail={"severity": t.severity.value}),))


def _require_open(rec: AlertRecord, action: str) -> None:
    if not rec.is_open:
        raise LifecycleError("conflict", f"cannot {action}: alert {rec.id} is resolved")


def acknowledge(rec: AlertRecord, actor: str, now: float, note: str = "") -> tuple[AlertRecord, AuditEvent]:
    """A person takes the alert; escalation stops. Raises ``LifecycleError`` if resolved or already acked."""
    _require_open(rec, "acknowledge")
    if rec.status is AlertStatus.ACKNOWLEDGED:
        raise LifecycleError("conflict", f"alert {rec.id} is already acknowledged by {rec.acknowledged_by}")
    new = msgspec.structs.replace(rec, status=AlertStatus.ACKNOWLEDGED, acknowledged_by=actor, acknowledged_at=now,
                                  updated_at=now, reason=note or "acknowledged")
    return new, AuditEvent(alert_id=rec.id, ts=now, actor=actor, action="acknowledged", detail={"note": note})


def assign(rec: AlertRecord, actor: str, now: float, assignee: str | None, unit: str | None,
           note: str = "") -> tuple[AlertRecord, AuditEvent]:
    """Assign to a person and/or a unit (department). Raises ``LifecycleError`` if resolved."""
    _require_open(rec, "assign")
    if not assignee and not unit:
        raise LifecycleError("invalid", "give an assignee or a unit")
    new = msgspec.structs.replace(rec, assignee=assignee or rec.assignee, assigned_unit=unit or rec.assigned_unit,
                                  updated_at=now, reason=note or "assigned")
    detail = {"assignee": assignee or "", "unit": unit or "", "note": note}
    return new, AuditEvent(alert_id=rec.id, ts=now, actor=actor, action="assigned", detail=detail)


def comment(rec: AlertRecord, actor: str, now: float, text: str) -> tuple[AlertRecord, AuditEvent]:
    """Add a comment (allowed in any state)."""
    if not text.strip():
        raise LifecycleError("invalid", "empty comment")
    new = msgspec.structs.replace(rec, updated_at=now)
    return new, AuditEvent(alert_id=rec.id, ts=now, actor=actor, action="commented", detail={"text": text[:4000]})


def close(rec: AlertRecord, actor: str, now: float, reason: str) -> tuple[AlertRecord, AuditEvent]:
    """A person closes the alert with a reason. Raises ``LifecycleError`` if resolved or no reason."""
    _require_open(rec, "close")
    if not reason.strip():
        raise LifecycleError("invalid", "closing an alert needs a reason")
    new = msgspec.structs.replace(rec, status=AlertStatus.RESOLVED, ends_at=now, updated_at=now, resolved_by=actor,
                                  reason=reason[:1000])
    return new, AuditEvent(alert_id=rec.id, ts=now, actor=actor, action="closed", detail={"reason": reason[:1000]})


def change_severity(rec: AlertRecord, actor: str, now: float, severity: Severity, reason: str,
                    deadlines: Deadlines) -> tuple[AlertRecord, AuditEvent]:
    """A person changes the severity; deadlines follow. Raises ``LifecycleError`` if resolved."""
    _require_open(rec, "change severity")
    ack_by, resolve_by = _deadlines(severity, rec.starts_at + rec.wall_shift, deadlines, rec.labels)
    new = msgspec.structs.replace(rec, severity=severity, ack_by=ack_by, resolve_by=resolve_by, updated_at=now,
                                  reason=reason or "severity changed")
    return new, AuditEvent(alert_id=rec.id, ts=now, actor=actor, action="severity_changed",
                           detail={"from": rec.severity.value, "to": severity.value, "reason": reason})


def check_overdue(rec: AlertRecord, now: float) -> tuple[AlertRecord, tuple[AuditEvent, ...]]:
    """Flag an alert whose acknowledge-by or resolve-by time has passed (once each)."""
    if not rec.is_open:
        return rec, ()
    events: list[AuditEvent] = []
    ack_over = rec.ack_overdue
    res_over = rec.resolve_overdue
    if not ack_over and rec.status is AlertStatus.FIRING and rec.ack_by is not None and now >= rec.ack_by:
        ack_over = True
        events.append(AuditEvent(alert_id=rec.id, ts=now, actor="system", action="ack_overdue"))
    if not res_over and rec.resolve_by is not None and now >= rec.resolve_by:
        res_over = True
        events.append(AuditEvent(alert_id=rec.id, ts=now, actor="system", action="resolve_overdue"))
    if not events:
        return rec, ()
    return msgspec.structs.replace(rec, ack_overdue=ack_over, resolve_overdue=res_over, updated_at=now), tuple(events)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def to_contract(rec: AlertRecord) -> Alert:
    """The record as the public ``Alert`` message."""
    return Alert(
        id=rec.id, fingerprint=rec.fingerprint, rule=rec.rule, severity=rec.severity, status=rec.status,
        kind=rec.kind, device_id=rec.device_id, site=rec.site, labels=rec.labels, summary=rec.summary,
        summary_en=rec.summary_en, description=rec.description, values=rec.values, starts_at=_dt(rec.starts_at),
        updated_at=_dt(rec.updated_at), ends_at=_dt(rec.ends_at) if rec.ends_at is not None else None,
        acknowledged_by=rec.acknowledged_by, assignee=rec.assignee,
        ack_by=_dt(rec.ack_by) if rec.ack_by is not None else None,
        resolve_by=_dt(rec.resolve_by) if rec.resolve_by is not None else None,
        snapshot_url=rec.snapshot_url, reason=rec.reason,
    )


_RECV_MAX = 100_000


def _nothing(rec: AlertRecord) -> None:
    return None


class AlertWrites(Protocol):
    """What the book writes to (``alerting.store.AlertStore``, which imports this module)."""

    def put_alert(self, rec: AlertRecord) -> None:
        """Insert or replace an alert."""
        ...

    def add_events(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events."""
        ...


S = TypeVar("S", bound=AlertWrites)


class AlertBook(Generic[S]):
    """Open alerts and their write-through to the store."""

    def __init__(self, store: S, inhibitor: Inhibitor) -> None:
        self.store = store
        self.inhibitor = inhibitor
        self.open: dict[str, AlertRecord] = {}
        self.by_fingerprint: dict[str, str] = {}
        self.received_at: dict[str, float] = {}
        """When the transition that last changed an alert was received (latency tracing)."""
        self.on_open: Callable[[AlertRecord], None] = _nothing
        """Called for every open alert remembered (the timers schedule it)."""
        self.on_saved: Callable[[AlertRecord], None] = _nothing
        """Called for every saved change (the publisher queues it)."""

    def remember(self, rec: AlertRecord) -> None:
        """Index a record in memory (no store write): open ones are kept, closed ones forgotten."""
        if rec.is_open:
            self.open[rec.id] = rec
            self.by_fingerprint[rec.fingerprint] = rec.id
            self.on_open(rec)
        else:
            self.open.pop(rec.id, None)
            if self.by_fingerprint.get(rec.fingerprint) == rec.id:
                del self.by_fingerprint[rec.fingerprint]
        self.inhibitor.update(rec.id, rec.match_labels(), rec.is_open)

    def save(self, rec: AlertRecord, events: Sequence[AuditEvent] = ()) -> None:
        """Write an alert's new state and its audit events, index it and tell the listeners."""
        self.store.put_alert(rec)
        if events:
            self.store.add_events(events)
        self.remember(rec)
        self.on_saved(rec)

    def current(self, fingerprint: str) -> AlertRecord | None:
        """The open alert with this fingerprint."""
        aid = self.by_fingerprint.get(fingerprint)
        return self.open.get(aid) if aid else None

    def received(self, alert_id: str, at: float) -> None:
        """Remember when the transition that changed ``alert_id`` was received."""
        self.received_at[alert_id] = at
        if len(self.received_at) > _RECV_MAX:
            self.received_at.clear()
