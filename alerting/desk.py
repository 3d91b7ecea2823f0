"""What people do with alerts: acknowledge, assign, comment, close, change severity, silence, cover shifts.

Every action is checked against the acting user's role, recorded in the audit trail, committed,
and published on MQTT like any other state change. The HTTP API and the in-process console call
them through ``alerting.surface.AlertingSurface``; they run in the event loop thread and reach the
service only through its public ``record_action`` and ``commit``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from alerting import lifecycle
from alerting.config import UserRole
from alerting.errors import AlertingError
from alerting.figures import handling_figures
from alerting.lifecycle import AlertRecord, AuditEvent, LifecycleError
from alerting.muting import MaintenanceEntry, SilenceEntry, until_ts
from alerting.ports import DeskHost
from alerting.roster import OverrideEntry
from alerting.router import MatcherError, parse_matchers
from broker.contracts import Severity

log = logging.getLogger(__name__)

_HHMM = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]{0,30}(?:/[A-Za-z0-9_+\-]{1,30}){0,2}")
ROLE_RANK: dict[str, int] = {"grid_staff": -1, "operator": 0, "supervisor": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a user name, a role, and for operators the unit they work for."""

    name: str
    role: UserRole
    unit: str = ""

    def at_least(self, role: str) -> bool:
        """Whether this actor's role is ``role`` or higher."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True, slots=True)
class MaintenanceWindowView:
    """A recurring maintenance window as people see it: from the config file (``id`` None) or created at run time."""

    id: str | None
    name: str
    matchers: tuple[str, ...]
    start: str
    duration_min: float
    weekdays: tuple[int, ...]
    timezone: str
    until: str | None
    author: str
    comment: str
    source: Literal["config", "runtime"]
    open: bool
    """Whether an occurrence is open now."""


def make_actor(name: str, role: str, unit: str = "") -> Actor:
    """An actor from a user's name, role and unit as stored elsewhere (sessions, tokens). Raises ``Forbidden``
    for a role alerting does not know."""
    if role not in ROLE_RANK:
        raise Forbidden(f"unknown role {role[:40]!r}")
    return Actor(name, cast(UserRole, role), unit)


class DeskError(AlertingError):
    """A query or action refused: ``status`` is the HTTP status to answer with, ``code`` a short machine word."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class NotFound(DeskError):
    """No such alert, silence, window, override or work order (404)."""

    def __init__(self, message: str) -> None:
        super().__init__(404, "not_found", message)


class Invalid(DeskError):
    """A malformed or impossible request (400); the message names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid", message)


class Forbidden(DeskError):
    """The actor's role, unit or ownership does not allow it (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


class Conflict(DeskError):
    """The state does not allow it (409), e.g. a name in use or an alert already resolved."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "conflict", message)


class AlertDesk:
    """The alert desk of one alerting service."""

    def __init__(self, service: DeskHost) -> None:
        self.svc = service

    # ------------------------------------------------------------------ reading

    def get(self, alert_id: str) -> AlertRecord:
        """One alert (open ones from memory). Raises ``DeskError`` 404."""
        rec = self.svc.open.get(alert_id) or self.svc.store.get_alert(alert_id)
        if rec is None:
            raise NotFound(f"no alert {alert_id!r}")
        return rec

    def timeline(self, alert_id: str) -> list[AuditEvent]:
        """An alert's audit trail, oldest first."""
        self.get(alert_id)
        return self.svc.store.events(alert_id)

    def alerts(self, *, status: list[str] | None = None, since: float | None = None, until: float | None = None,
             filters: dict[str, str] | None = None, limit: int = 200, offset: int = 0) -> list[AlertRecord]:
        """Alerts filtered by status, start time and columns (kind, site, unit, industry, severity, device_id)."""
        if status and all(s in ("firing", "acknowledged") for s in status) and since is None and until is None:
            recs = [r for r in self.svc.open.values() if r.status.value in status]
            for col, val in (filters or {}).items():
                recs = [r for r in recs if _column(r, col) == val]
            recs.sort(key=lambda r: r.starts_at, reverse=True)
            return recs[offset:offset + limit]
        return self.svc.store.query_alerts(status=status, since=since, until=until, filters=filters, limit=limit,
                                           offset=offset)

    def figures(self, since: float | None, until: float | None, filters: dict[str, str] | None = None,
                ) -> dict[str, Any]:
        """Handling figures for alerts that started in [since, until)."""
        recs = self.svc.store.iter_alerts(since, until)
        if filters:
            recs = [r for r in recs if all(_column(r, c) == v for c, v in filters.items())]
        out = handling_figures(recs, self.svc.clock())
        out.update(since=since, until=until)
        return out

    # ------------------------------------------------------------------ alert actions

    def _may_handle(self, actor: Actor, rec: AlertRecord) -> None:
        if actor.at_least("supervisor") or not actor.unit:
            return
        if (rec.assigned_unit or rec.unit) not in ("", actor.unit):
            raise Forbidden(f"alert {rec.id} belongs to unit {rec.assigned_unit or rec.unit!r}")

    def _apply(self, rec: AlertRecord, new: AlertRecord, event: AuditEvent) -> AlertRecord:
        self.svc.record_action(rec, new, [event])
        return new

    def _do(self, alert_id: str, actor: Actor, fn: Any, *args: Any) -> AlertRecord:
        rec = self.get(alert_id)
        self._may_handle(actor, rec)
        try:
            new, event = fn(rec, actor.name, self.svc.clock(), *args)
        except LifecycleError as exc:
            raise DeskError(409 if exc.code == "conflict" else 400, exc.code, str(exc)) from None
        return self._apply(rec, new, event)

    def acknowledge(self, alert_id: str, actor: Actor, note: str = "") -> AlertRecord:
        """Acknowledge: the actor takes the alert and escalation stops."""
        return self._confirm_vehicle_alarm(self._do(alert_id, actor, lifecycle.acknowledge, note), actor)

    def assign(self, alert_id: str, actor: Actor, assignee: str | None, unit: str | None,
               note: str = "") -> AlertRecord:
        """Assign to a person and/or a unit."""
        if assignee and assignee not in self.svc.roster.people and assignee != actor.name:
            known_users = {u.name for u in self.svc.config.users}
            if assignee not in known_users:
                raise Invalid(f"unknown person {assignee!r}")
        return self._do(alert_id, actor, lifecycle.assign, assignee, unit, note)

    def comment(self, alert_id: str, actor: Actor, text: str) -> AlertRecord:
        """Add a comment."""
        return self._do(alert_id, actor, lifecycle.comment, text)

    def close(self, alert_id: str, actor: Actor, reason: str) -> AlertRecord:
        """Close (resolve) with a reason."""
        return self._confirm_vehicle_alarm(self._do(alert_id, actor, lifecycle.close, reason), actor)

    def _confirm_vehicle_alarm(self, rec: AlertRecord, actor: Actor) -> AlertRecord:
        """A vehicle alarm bit the terminal clears only on confirmation: send it 0x8203 (docs/vehicles.md)."""
        from alerting.vehicle_commands import alarm_confirmation

        cmd = alarm_confirmation(rec, actor.name)
        if cmd is not None:
            topic, payload, cid = cmd
            self.svc.mqtt.publish_nowait(topic, payload, qos=1)
            log.info("alerting: alarm confirmation %s sent to %s for alert %s (%s)", cid, rec.device_id, rec.id,
                     rec.rule)
        return rec

    def text_driver(self, alert_id: str, actor: Actor, text: str, emergency: bool = False) -> tuple[AlertRecord, str]:
        """Send a text to the driver of the alert's vehicle (JT/T 808 0x8300), recorded in the timeline first.

        Returns the alert and the command id. Raises ``Invalid`` for a non-vehicle alert or a bad text.
        """
        from alerting.vehicle_commands import driver_text

        try:
            topic, payload, cid = driver_text(self.get(alert_id), actor.name, text, emergency=emergency)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        # Recorded first: the comment checks the actor may handle this alert, and nothing is sent if not.
        rec = self.comment(alert_id, actor, f"[发送驾驶员短信 0x8300 / text to driver, command {cid}] {text.strip()}")
        self.svc.mqtt.publish_nowait(topic, payload, qos=1)
        return rec, cid

    def silence_alert(self, alert_id: str, actor: Actor, scope: str, minutes: float, comment: str = "",
                      ) -> SilenceEntry:
        """Silence what an alert is about for ``minutes``: ``scope`` device, rule or rule_device (operators: their
        unit only); the silence is noted in the alert's timeline."""
        rec = self.get(alert_id)
        matchers = {"device": [f"device_id={rec.device_id}"], "rule": [f"rule={rec.rule}"],
                    "rule_device": [f"rule={rec.rule}", f"device_id={rec.device_id}"]}.get(scope)
        if matchers is None:
            raise Invalid("scope is device, rule or rule_device")
        if not actor.at_least("supervisor") and actor.unit:
            matchers.append(f"unit={actor.unit}")
        now = self.svc.clock()
        s = self.create_silence(actor, matchers, now + minutes * 60, now, comment or f"silenced from alert {alert_id}")
        self.comment(alert_id, actor, f"静默 {minutes:.0f} 分钟 / silenced for {minutes:.0f} min ({', '.join(s.matchers)})")
        return s

    def set_severity(self, alert_id: str, actor: Actor, severity: str, reason: str = "") -> AlertRecord:
        """Change the severity (deadlines follow)."""
        try:
            sev = Severity(severity)
        except ValueError:
            raise Invalid(f"unknown severity {severity!r}") from None
        return self._do(alert_id, actor, lifecycle.change_severity, sev, reason, self.svc.config.deadlines)

    # ------------------------------------------------------------------ silences

    def silences(self) -> list[SilenceEntry]:
        """Every silence in force or scheduled."""
        return sorted(self.svc.silences.entries.values(), key=lambda s: s.starts_at)

    def create_silence(self, actor: Actor, matchers: list[str], ends_at: float, starts_at: float | None = None,
                       comment: str = "", silence_id: str | None = None) -> SilenceEntry:
        """Create (or, with ``silence_id``, replace) a silence.

        Operators may only silence alerts of their own unit (a ``unit=<their unit>`` matcher is required)
        and only change their own silences.
        """
        now = self.svc.clock()
        try:
            parsed = parse_matchers(matchers)
        except MatcherError as exc:
            raise Invalid(str(exc)) from None
        if not parsed:
            raise Invalid("a silence needs at least one matcher")
        start = now if starts_at is None else starts_at
        if ends_at <= start:
            raise Invalid("ends_at must be after starts_at")
        own_unit = any(m.name == "unit" and m.op == "=" and m.value == actor.unit and actor.unit for m in parsed)
        if not actor.at_least("supervisor") and not own_unit:
            raise Forbidden("operators may only silence their own unit (add unit=<unit>)")
        if silence_id is not None:
            old = self.svc.silences.entries.get(silence_id)
            if old is None:
                raise NotFound(f"no silence {silence_id!r}")
            if not actor.at_least("supervisor") and old.author != actor.name:
                raise Forbidden("operators may only change their own silences")
        entry = SilenceEntry(id=silence_id or f"s{os.urandom(6).hex()}", matchers=[str(m) for m in parsed],
                             starts_at=start, ends_at=ends_at, author=actor.name, comment=comment[:1000],
                             created_at=now)
        self.svc.silences.put(entry)
        self.svc.store.kv_put("silence", entry.id, msgspec.json.encode(entry).decode())
        self.svc.commit()
        return entry

    def delete_silence(self, actor: Actor, silence_id: str) -> None:
        """Expire a silence now."""
        old = self.svc.silences.entries.get(silence_id)
        if old is None:
            raise NotFound(f"no silence {silence_id!r}")
        if not actor.at_least("supervisor") and old.author != actor.name:
            raise Forbidden("operators may only delete their own silences")
        self.svc.silences.remove(silence_id)
        self.svc.store.kv_delete("silence", silence_id)
        self.svc.commit()

    # ------------------------------------------------------------------ recurring maintenance windows

    def maintenance_windows(self) -> list[MaintenanceWindowView]:
        """The config file's windows (``id`` None, not deletable) and the run-time ones, with ``open`` now."""
        cal, now = self.svc.maintenance, self.svc.clock()
        out = []
        for w, _m, tz, hm, until in cal.windows:
            is_open = cal.in_window(w, tz, hm, now, until)
            if isinstance(w, MaintenanceEntry):
                out.append(MaintenanceWindowView(
                    id=w.id, name=w.name, matchers=tuple(w.matchers), start=w.start, duration_min=w.duration_min,
                    weekdays=tuple(w.weekdays), timezone=w.timezone, until=w.until, author=w.author,
                    comment=w.comment, source="runtime", open=is_open))
            else:
                out.append(MaintenanceWindowView(
                    id=None, name=w.name, matchers=tuple(w.matchers), start=w.start, duration_min=w.duration_min,
                    weekdays=tuple(w.weekdays), timezone=w.timezone, until=None, author="config", comment="",
                    source="config", open=is_open))
        return out

    def create_maintenance(self, actor: Actor, name: str, matchers: list[str], weekdays: list[int], start: str,
                           duration_min: float, timezone: str = "Asia/Shanghai", until: str | None = None,
                           comment: str = "") -> MaintenanceEntry:
        """Create a recurring maintenance window (supervisors and admins): matching alerts are not notified
        while an occurrence is open; they stay on the board, marked muted."""
        if not actor.at_least("supervisor"):
            raise Forbidden("only supervisors create maintenance windows")
        now = self.svc.clock()
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise Invalid("name must be 1 .. 100 characters")
        if any(r[0].name == name for r in self.svc.maintenance.windows):
            raise Conflict(f"a maintenance window named {name!r} exists")
        try:
            parsed = parse_matchers(matchers)
        except MatcherError as exc:
            raise Invalid(str(exc)) from None
        if not parsed:
            raise Invalid("a maintenance window needs at least one matcher (e.g. site=...)")
        if not weekdays or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in weekdays):
            raise Invalid("weekdays must be a non-empty list of 0 (Monday) .. 6 (Sunday)")
        if not _HHMM.fullmatch(start):
            raise Invalid("start must be HH:MM (00:00 .. 23:59)")
        days = sorted(set(weekdays))
        if not math.isfinite(duration_min) or not 1 <= duration_min <= 1440:
            raise Invalid("duration_min must be 1 .. 1440")
        try:
            tz = ZoneInfo(timezone) if _ZONE.fullmatch(timezone) else None
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
        if tz is None:
            raise Invalid(f"unknown time zone {timezone[:64]!r}")
        if until:
            try:
                if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", until):
                    raise ValueError(until)
                end = until_ts(until, tz)
            except ValueError:
                raise Invalid("until must be a date YYYY-MM-DD") from None
            if end is not None and end <= now:
                raise Invalid("until is in the past")
        entry = MaintenanceEntry(id=f"m{os.urandom(6).hex()}", name=name, matchers=[str(m) for m in parsed],
                                 start=start, duration_min=float(duration_min), weekdays=days, timezone=timezone,
                                 until=until or None, author=actor.name, comment=comment[:1000], created_at=now)
        self.svc.maintenance.put(entry)
        self.svc.store.kv_put("maintenance", entry.id, msgspec.json.encode(entry).decode())
        self.svc.commit()
        log.info("alerting: %s created maintenance window %s %r (%s, %s for %g min on %s)", actor.name, entry.id,
                 name, ", ".join(entry.matchers), start, duration_min, days)
        return entry

    def delete_maintenance(self, actor: Actor, window_id: str) -> MaintenanceEntry:
        """Delete a run-time maintenance window (supervisors and admins; config windows are not deletable)."""
        if not actor.at_least("supervisor"):
            raise Forbidden("only supervisors delete maintenance windows")
        old = self.svc.maintenance.remove(window_id)
        if old is None:
            raise NotFound(f"no maintenance window {window_id!r}")
        self.svc.store.kv_delete("maintenance", window_id)
        self.svc.commit()
        log.info("alerting: %s deleted maintenance window %s %r", actor.name, window_id, old.name)
        return old

    # ------------------------------------------------------------------ duty

    def on_duty(self, at: float | None = None, unit: str | None = None, role: str | None = None,
                ) -> list[dict[str, Any]]:
        """Who is on duty at a time (now by default) for a unit and role."""
        when = self.svc.clock() if at is None else at
        out = []
        for s in self.svc.roster.on_duty(when, unit=unit, role=role):
            p = self.svc.roster.people.get(s.person)
            out.append({"roster": s.roster, "role": s.role, "unit": s.unit, "person": s.person,
                        "name": p.name if p else s.person, "starts_at": s.starts_at, "ends_at": s.ends_at,
                        "override": s.override})
        return out

    def add_override(self, actor: Actor, roster: str, person: str, starts_at: float, ends_at: float,
                     reason: str = "") -> OverrideEntry:
        """Someone covers a roster for a period (supervisors and admins only)."""
        if not actor.at_least("supervisor"):
            raise Forbidden("operators cannot change rosters")
        if roster not in self.svc.roster.rosters:
            raise Invalid(f"unknown roster {roster!r}")
        if person not in self.svc.roster.people:
            raise Invalid(f"unknown person {person!r}")
        if ends_at <= starts_at:
            raise Invalid("ends_at must be after starts_at")
        o = OverrideEntry(id=f"o{os.urandom(6).hex()}", roster=roster, person=person, starts_at=starts_at,
                          ends_at=ends_at, reason=reason[:500], author=actor.name, created_at=self.svc.clock())
        self.svc.roster.overrides[o.id] = o
        self.svc.store.kv_put("override", o.id, msgspec.json.encode(o).decode())
        self.svc.commit()
        return o

    def delete_override(self, actor: Actor, override_id: str) -> None:
        """Remove an override (supervisors and admins only)."""
        if not actor.at_least("supervisor"):
            raise Forbidden("operators cannot change rosters")
        if self.svc.roster.overrides.pop(override_id, None) is None:
            raise NotFound(f"no override {override_id!r}")
        self.svc.store.kv_delete("override", override_id)
        self.svc.commit()


def _column(rec: AlertRecord, col: str) -> str:
    if col == "unit":
        return rec.assigned_unit or rec.unit
    if col in ("severity", "status", "kind"):
        return str(getattr(rec, col).value)
    return str(getattr(rec, col, "") or "")
