"""``AlertingSurface``: the one way into a running alerting stage for its HTTP API and the console.

Reads answer with typed results (``AlertRecord``, ``AuditEvent``, the dataclasses of
``alerting.surface.views``), commands go through the alert desk (role, unit and ownership checks,
audit trail, one commit, publication on MQTT), and every refusal is a ``DeskError`` (an
``AlertingError``) carrying the HTTP status to answer with. The console runs in the same process
as alerting (docs/architecture.md, "In-process hand-offs") and calls these methods directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from alerting.config import AlertingConfig, EscalationPolicy, Person, Roster, User
from alerting.desk import Actor, AlertDesk, MaintenanceWindowView, NotFound
from alerting.engine import AlertingEngine
from alerting.errors import AlertingError
from alerting.evidence import EvidenceConfig
from alerting.figures import handling_figures
from alerting.lifecycle import AlertRecord, AuditEvent, to_contract
from alerting.muting import MaintenanceEntry, MuteReason, SilenceEntry
from alerting.roster import OverrideEntry, rotation_slot
from alerting.store import NotificationRow
from alerting.surface.views import (
    AlertQuery,
    DeliveryAttempt,
    DutyShift,
    EscalationStepView,
    EscalationView,
    NotificationQuery,
    UpcomingShift,
)
from alerting.workorders.desk import WorkOrderDesk
from broker.contracts import Alert, AlertStatus

_ENC = msgspec.json.Encoder()
_PLAIN = msgspec.json.Decoder(dict[str, Any])


class AlertingUnavailable(AlertingError):
    """What was handed over as the alerting stage is not one (a process without alerting)."""


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds (the API's form of alert times), None for None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class AlertingSurface:
    """Typed queries and commands over one alerting service."""

    def __init__(self, service: AlertingEngine) -> None:
        self._svc = service
        self._desk: AlertDesk = service.desk

    @classmethod
    def of(cls, peer: object) -> AlertingSurface:
        """The surface of an alerting stage handed over by the runtime. Raises ``AlertingUnavailable``."""
        if isinstance(peer, AlertingSurface):
            return peer
        if not isinstance(peer, AlertingEngine):
            raise AlertingUnavailable(f"not an alerting stage: {type(peer).__name__}")
        return cls(peer)

    # ------------------------------------------------------------------ configuration and health

    @property
    def clock(self) -> Callable[[], float]:
        """Alerting's wall clock (follows platform clock steps)."""
        return self._svc.clock

    @property
    def config(self) -> AlertingConfig:
        """The validated ``alerting:`` configuration (read-only)."""
        return self._svc.config

    def users(self) -> list[User]:
        """The API users (names, roles, units, tokens or token variables)."""
        return list(self._svc.config.users)

    def evidence_config(self) -> EvidenceConfig:
        """Where snapshots may come from (the evidence store and allowed camera-agent hosts)."""
        return self._svc.config.evidence

    @property
    def workorders(self) -> WorkOrderDesk | None:
        """The work-order desk, None unless ``alerting.workorders.enabled``."""
        return self._svc.workorders

    def count(self, counter: str, n: int = 1) -> None:
        """Add to one of alerting's counters (``stats()``)."""
        self._svc.counters[counter] += n

    def stats(self) -> dict[str, float]:
        """Alerting's counters and latency percentiles."""
        return self._svc.stats()

    # ------------------------------------------------------------------ alerts

    def alert(self, alert_id: str) -> AlertRecord:
        """One alert (open ones from memory). Raises ``NotFound``."""
        return self._desk.get(alert_id)

    def find_alert(self, alert_id: str) -> AlertRecord | None:
        """One alert, or None."""
        return self._svc.open.get(alert_id) or self._svc.store.get_alert(alert_id)

    def open_alerts(self) -> list[AlertRecord]:
        """Every firing or acknowledged alert (from memory)."""
        return list(self._svc.open.values())

    def open_ids(self) -> set[str]:
        """The ids of the open alerts."""
        return set(self._svc.open)

    def alerts(self, q: AlertQuery) -> list[AlertRecord]:
        """A page of alerts, newest first (open-only queries from memory, the rest from the store)."""
        return self._desk.alerts(status=list(q.status) or None, since=q.since, until=q.until,
                                 filters=dict(q.filters), limit=q.limit, offset=q.offset)

    def count_alerts(self, q: AlertQuery) -> int:
        """How many alerts match ``q`` (ignoring its page)."""
        return self._svc.store.count_alerts(status=q.status or None, since=q.since, until=q.until,
                                            filters=dict(q.filters))

    def alerts_started(self, since: float | None, until: float | None = None) -> list[AlertRecord]:
        """Every alert that started in [since, until) (figures)."""
        return list(self._svc.store.iter_alerts(since, until))

    def timeline(self, alert_id: str) -> list[AuditEvent]:
        """An alert's audit trail, oldest first. Raises ``NotFound``."""
        return self._desk.timeline(alert_id)

    def mute_reason(self, rec: AlertRecord, now: float | None = None) -> MuteReason | None:
        """Why an open alert is muted now (silence, maintenance window, inhibition), None when it is not."""
        if not rec.is_open:
            return None
        return self._svc.muter.mute_reason(rec.id, rec.match_labels(), self._svc.clock() if now is None else now)

    def alert_json(self, rec: AlertRecord) -> dict[str, Any]:
        """An alert for API responses: the public ``Alert`` plus handling fields (mute, work order)."""
        out: dict[str, Any] = msgspec.to_builtins(to_contract(rec))
        muted = self.mute_reason(rec)
        out.update(unit=rec.assigned_unit or rec.unit, industry=rec.industry, assigned_unit=rec.assigned_unit,
                   acknowledged_at=iso(rec.acknowledged_at), resolved_by=rec.resolved_by,
                   ack_overdue=rec.ack_overdue, resolve_overdue=rec.resolve_overdue, reopen_count=rec.reopen_count,
                   escalation={"policy": rec.esc_policy, "next_step": rec.esc_next_step, "repeats": rec.esc_repeats},
                   muted={"kind": muted.kind, "id": muted.id} if muted else None)
        wo = self._svc.workorders
        if wo is not None:  # the case's work order, when it is still open
            order = wo.open.get(rec.id)
            out["work_order"] = None if order is None else {
                "stage": order.stage, "grid": order.grid, "assignee": order.assignee, "overdue": order.overdue,
                "link": wo.link(rec.id)}
        return out

    def watch(self, maxsize: int = 1000) -> AsyncIterator[Alert]:
        """Every alert state change as it happens; a slow consumer loses the oldest ones."""
        return self._svc.watch(maxsize=maxsize)

    # ------------------------------------------------------------------ notifications

    def notifications(self, q: NotificationQuery) -> list[NotificationRow]:
        """The notification log, newest first."""
        return self._svc.store.notifications(status=q.status, alert_id=q.alert_id, limit=q.limit)

    def notification(self, notification_id: int) -> NotificationRow:
        """One notification. Raises ``NotFound``."""
        row = self._svc.store.notification(notification_id)
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        return row

    def attempts(self, notification_id: int) -> list[DeliveryAttempt]:
        """Every delivery attempt of one notification, oldest first."""
        return [DeliveryAttempt(ts=a["ts"], channel=a["channel"], attempt=a["attempt"], ok=a["ok"], error=a["error"],
                                elapsed_ms=a["elapsed_ms"]) for a in self._svc.store.attempts(notification_id)]

    # ------------------------------------------------------------------ figures

    def figures(self, since: float | None, until: float | None,
                filters: dict[str, str] | None = None) -> dict[str, Any]:
        """Handling figures for alerts that started in [since, until), optionally filtered by column."""
        return self._desk.figures(since, until, filters)

    def handling_figures(self, recs: Iterable[AlertRecord], now: float | None = None) -> dict[str, Any]:
        """Handling figures (counts, MTTA, MTTR, closure and on-time rates) of the given alerts at ``now``."""
        return handling_figures(recs, self._svc.clock() if now is None else now)

    # ------------------------------------------------------------------ duty

    def people(self) -> list[Person]:
        """Everyone notifications may reach."""
        return list(self._svc.roster.people.values())

    def person(self, person_id: str) -> Person | None:
        """One person by id."""
        return self._svc.roster.people.get(person_id)

    def rosters(self) -> list[Roster]:
        """The duty rosters."""
        return list(self._svc.roster.rosters.values())

    def overrides(self, active_at: float | None = None) -> list[OverrideEntry]:
        """Roster overrides (only those not ended at ``active_at`` when given)."""
        return [o for o in self._svc.roster.overrides.values() if active_at is None or o.ends_at > active_at]

    def policy(self, name: str) -> EscalationPolicy | None:
        """An escalation policy by name."""
        return self._svc.policies.get(name)

    def on_duty(self, at: float | None = None, unit: str | None = None, role: str | None = None) -> list[DutyShift]:
        """Who is on duty at a time (now by default), for a unit and a role."""
        when = self._svc.clock() if at is None else at
        out = []
        for s in self._svc.roster.on_duty(when, unit=unit, role=role):
            p = self._svc.roster.people.get(s.person)
            out.append(DutyShift(roster=s.roster, role=s.role, unit=s.unit, person=s.person,
                                 name=p.name if p else s.person, starts_at=s.starts_at, ends_at=s.ends_at,
                                 override=s.override))
        return out

    def upcoming_shifts(self, roster: str, now: float | None = None, count: int = 6) -> list[UpcomingShift]:
        """A roster's next ``count`` shifts from ``now`` (overrides included)."""
        book = self._svc.roster
        r = book.rosters.get(roster)
        if r is None:
            raise NotFound(f"no roster {roster!r}")
        t = self._svc.clock() if now is None else now
        out: list[UpcomingShift] = []
        for _ in range(count):
            s = book.shift(r.name, t)
            if s is None:
                break
            p = book.people.get(s.person)
            out.append(UpcomingShift(person=s.person, name=p.name if p else s.person, starts_at=s.starts_at,
                                     ends_at=s.ends_at, override=s.override))
            _, _, end = rotation_slot(r, t)
            t = max(end, s.ends_at) + 1.0
        return out

    def escalations(self, now: float | None = None, limit: int = 100) -> list[EscalationView]:
        """Firing alerts on an escalation policy, newest first, with each rung's time and whether it is done."""
        t = self._svc.clock() if now is None else now
        out: list[EscalationView] = []
        for rec in sorted(self._svc.open.values(), key=lambda x: x.starts_at, reverse=True):
            pol = self._svc.policies.get(rec.esc_policy or "")
            if rec.status is not AlertStatus.FIRING or pol is None:
                continue
            steps = tuple(EscalationStepView(delay_s=s.delay_s, targets=tuple(s.targets), at=rec.esc_anchor + s.delay_s,
                                             done=i < rec.esc_next_step or rec.esc_anchor + s.delay_s <= t)
                          for i, s in enumerate(pol.steps))
            out.append(EscalationView(alert=rec, policy=pol.name, steps=steps, repeats=rec.esc_repeats))
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ silences and maintenance windows

    def silences(self) -> list[SilenceEntry]:
        """Every silence in force or scheduled."""
        return self._desk.silences()

    def maintenance_windows(self) -> list[MaintenanceWindowView]:
        """The config file's windows (``id`` None) and the run-time ones, with whether each is ``open`` now."""
        return self._desk.maintenance_windows()

    # ------------------------------------------------------------------ commands (the desk checks who may)

    def acknowledge(self, alert_id: str, actor: Actor, note: str = "") -> AlertRecord:
        """Acknowledge: the actor takes the alert and escalation stops."""
        return self._desk.acknowledge(alert_id, actor, note)

    def assign(self, alert_id: str, actor: Actor, assignee: str | None, unit: str | None,
               note: str = "") -> AlertRecord:
        """Assign to a person and/or a unit."""
        return self._desk.assign(alert_id, actor, assignee, unit, note)

    def comment(self, alert_id: str, actor: Actor, text: str) -> AlertRecord:
        """Add a comment to the alert's timeline."""
        return self._desk.comment(alert_id, actor, text)

    def close(self, alert_id: str, actor: Actor, reason: str) -> AlertRecord:
        """Close (resolve) with a reason."""
        return self._desk.close(alert_id, actor, reason)

    def set_severity(self, alert_id: str, actor: Actor, severity: str, reason: str = "") -> AlertRecord:
        """Change the severity (deadlines follow)."""
        return self._desk.set_severity(alert_id, actor, severity, reason)

    def text_driver(self, alert_id: str, actor: Actor, text: str, emergency: bool = False) -> tuple[AlertRecord, str]:
        """Text the driver of a vehicle alert (JT/T 808 0x8300); returns the alert and the command id."""
        return self._desk.text_driver(alert_id, actor, text, emergency)

    def silence_alert(self, alert_id: str, actor: Actor, scope: str, minutes: float, comment: str = "",
                      ) -> SilenceEntry:
        """Silence an alert's device, rule or both for ``minutes`` (noted in its timeline)."""
        return self._desk.silence_alert(alert_id, actor, scope, minutes, comment)

    def create_silence(self, actor: Actor, matchers: list[str], ends_at: float, starts_at: float | None = None,
                       comment: str = "", silence_id: str | None = None) -> SilenceEntry:
        """Create (or, with ``silence_id``, replace) a silence."""
        return self._desk.create_silence(actor, matchers, ends_at, starts_at, comment, silence_id)

    def delete_silence(self, actor: Actor, silence_id: str) -> None:
        """Expire a silence now."""
        self._desk.delete_silence(actor, silence_id)

    def create_maintenance(self, actor: Actor, name: str, matchers: list[str], weekdays: list[int], start: str,
                           duration_min: float, timezone: str = "Asia/Shanghai", until: str | None = None,
                           comment: str = "") -> MaintenanceEntry:
        """Create a recurring maintenance window (supervisors and admins)."""
        return self._desk.create_maintenance(actor, name, matchers, weekdays, start, duration_min, timezone, until,
                                             comment)

    def delete_maintenance(self, actor: Actor, window_id: str) -> MaintenanceEntry:
        """Delete a run-time maintenance window (supervisors and admins)."""
        return self._desk.delete_maintenance(actor, window_id)

    def add_override(self, actor: Actor, roster: str, person: str, starts_at: float, ends_at: float,
                     reason: str = "") -> OverrideEntry:
        """Someone covers a roster for a period (supervisors and admins)."""
        return self._desk.add_override(actor, roster, person, starts_at, ends_at, reason)

    def delete_override(self, actor: Actor, override_id: str) -> None:
        """Remove a roster override (supervisors and admins)."""
        self._desk.delete_override(actor, override_id)


def as_json(view: Any) -> dict[str, Any]:
    """A view dataclass as a JSON-ready dict (tuples become lists)."""
    out: dict[str, Any] = _PLAIN.decode(_ENC.encode(view))
    return out
