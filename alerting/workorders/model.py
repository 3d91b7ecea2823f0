"""The work order of a case as a pure state machine: dispatched -> accepted -> en route -> on site -> handled
-> verified -> closed, with returns (退单) and reassignments (改派), milestone deadlines and overdue flags.

Functions take the order, the acting person and ``now`` and return the new order and the audit action;
they never do I/O. Illegal transitions raise ``OrderError`` with ``code="conflict"`` (HTTP 409).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from alerting.errors import AlertingError
from alerting.grids import distance_m

Stage = Literal["new", "dispatched", "accepted", "en_route", "on_site", "handled", "verified", "closed", "returned"]
MILESTONES: tuple[str, ...] = ("accepted", "en_route", "on_site", "handled", "verified", "closed")
"""Milestones with deadlines, in order; each is measured from the (latest) dispatch."""
FIELD_STAGES: tuple[str, ...] = ("dispatched", "accepted", "en_route", "on_site")
OPEN_STAGES: tuple[str, ...] = ("new", "dispatched", "accepted", "en_route", "on_site", "handled", "verified",
                                "returned")
SATISFACTION = ("satisfied", "basically_satisfied", "unsatisfied", "unreachable")


class OrderError(AlertingError):
    """A refused work-order action: ``code`` is ``conflict`` (409), ``invalid`` (400) or ``forbidden`` (403)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OrderPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Milestone time limits for cases of some categories and severities (empty lists match any).

    ``limits_s`` are seconds after dispatch; ``limits_working_days`` count working days on the holiday
    calendar (12345-style "3 working days", same local time of day) and win over seconds for a milestone.
    ``escalate`` are the targets told when a milestone goes overdue (``grid:staff``, ``role:``, ``person:``...).
    """

    name: str
    categories: list[str] = []
    severities: list[str] = []
    limits_s: dict[str, float] = {}
    limits_working_days: dict[str, int] = {}
    escalate: list[str] = msgspec.field(default_factory=lambda: ["grid:staff", "role:shift_lead"])

    def matches(self, category: str, severity: str) -> bool:
        """Whether this policy applies to a case."""
        return (not self.categories or category in self.categories) and (
            not self.severities or severity in self.severities)


def default_policies() -> list[OrderPolicy]:
    """"135" for critical cases (accept 1 min, on the way 3, on site 5), then a standard and a 12345 policy."""
    return [
        OrderPolicy(name="135", severities=["critical"],
                    limits_s={"accepted": 60.0, "en_route": 180.0, "on_site": 300.0, "handled": 1800.0,
                              "verified": 7200.0, "closed": 86400.0},
                    escalate=["grid:staff", "role:shift_lead", "role:duty_chief"]),
        OrderPolicy(name="hotline-12345", categories=["hotline", "complaint"],
                    limits_s={"accepted": 3600.0}, limits_working_days={"handled": 3, "closed": 5}),
        OrderPolicy(name="standard",
                    limits_s={"accepted": 600.0, "en_route": 1800.0, "on_site": 3600.0, "handled": 4 * 3600.0},
                    limits_working_days={"verified": 1, "closed": 3}),
    ]


def choose_policy(policies: list[OrderPolicy], category: str, severity: str) -> OrderPolicy | None:
    """The first policy matching the case."""
    return next((p for p in policies if p.matches(category, severity)), None)


class WorkOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A case's work order (times epoch seconds); ``id`` is the alert's id."""

    id: str
    grid: str = ""
    unit: str = ""
    category: str = ""
    severity: str = "warning"
    summary: str = ""
    source: Literal["device", "grid_staff"] = "device"
    reporter: str = ""
    lat: float | None = None
    lon: float | None = None
    place: str = ""
    stage: Stage = "new"
    policy: str = ""
    created_at: float
    updated_at: float
    dispatched_at: float | None = None
    assignee: str | None = None
    times: dict[str, float] = {}
    """When each milestone was reached (since the latest dispatch)."""
    first_times: dict[str, float] = {}
    """When each milestone was first reached (kept across returns; response figures use these)."""
    actors: dict[str, str] = {}
    due: dict[str, float] = {}
    overdue: list[str] = []
    """Milestones whose deadline passed before they were reached (once each, since the latest dispatch)."""
    late: list[str] = []
    """Every milestone ever missed (kept across dispatches, for the on-time rates)."""
    arrive_distance_m: float | None = None
    arrive_flagged: bool = False
    notes: str = ""
    photos: list[str] = []
    returns: int = 0
    reassigns: int = 0
    reopens: int = 0
    last_reason: str = ""
    satisfaction: str | None = None
    satisfaction_note: str = ""

    @property
    def is_open(self) -> bool:
        """Not closed."""
        return self.stage != "closed"


def deadlines(policy: OrderPolicy | None, start: float, working_day_add: Callable[[datetime, int], datetime],
              tz: ZoneInfo) -> dict[str, float]:
    """Milestone deadlines of a policy for a case dispatched at ``start``."""
    if policy is None:
        return {}
    out = {m: start + s for m, s in policy.limits_s.items() if m in MILESTONES}
    local = datetime.fromtimestamp(start, tz)
    for m, n in policy.limits_working_days.items():
        if m in MILESTONES:
            out[m] = working_day_add(local, n).timestamp()
    return out


def _need(order: WorkOrder, action: str, *stages: str) -> None:
    if order.stage not in stages:
        raise OrderError("conflict", f"cannot {action}: work order {order.id} is {order.stage}")


def _reach(order: WorkOrder, milestone: str, stage: Stage, actor: str, now: float, **kw: object) -> WorkOrder:
    times = {**order.times, milestone: now}
    first = {milestone: now, **order.first_times}
    late = list(order.late)
    due = order.due.get(milestone)
    if due is not None and now > due and milestone not in late:
        late.append(milestone)
    return msgspec.structs.replace(order, stage=stage, times=times, first_times=first,
                                   actors={**order.actors, milestone: actor}, late=late, updated_at=now,
                                   **kw)


def dispatch(order: WorkOrder, actor: str, now: float, grid: str, due: dict[str, float], unit: str = "",
             reason: str = "") -> WorkOrder:
    """Send the case to a grid (派单). From new or returned; any open field stage is a reassignment (改派)."""
    if not grid:
        raise OrderError("invalid", "dispatch needs a grid")
    if order.stage in ("new", "returned"):
        reassign = 0
    elif order.stage in FIELD_STAGES:
        if not reason.strip():
            raise OrderError("invalid", "reassigning (改派) needs a reason")
        reassign = 1
    else:
        raise OrderError("conflict", f"cannot dispatch: work order {order.id} is {order.stage}")
    return msgspec.structs.replace(
        order, stage="dispatched", grid=grid, unit=unit or order.unit, dispatched_at=now, assignee=None, times={},
        due=due, overdue=[], arrive_distance_m=None, arrive_flagged=False, updated_at=now,
        reassigns=order.reassigns + reassign, last_reason=reason[:1000] or order.last_reason,
        actors={"dispatched": actor}, first_times={"dispatched": now, **order.first_times})


def accept(order: WorkOrder, actor: str, now: float) -> WorkOrder:
    """Grid staff take the case (接单)."""
    _need(order, "accept", "dispatched")
    return _reach(order, "accepted", "accepted", actor, now, assignee=actor)


def depart(order: WorkOrder, actor: str, now: float) -> WorkOrder:
    """On the way (出发)."""
    _need(order, "set off", "accepted")
    return _reach(order, "en_route", "en_route", actor, now)


def arrive(order: WorkOrder, actor: str, now: float, lat: float, lon: float, max_m: float,
           mode: Literal["refuse", "flag"]) -> WorkOrder:
    """On site (到场): the reporter's position is checked against the case's location.

    Farther than ``max_m``: refused (``mode="refuse"``, 400 ``too_far``) or accepted and flagged.
    A case without a location accepts any position.
    """
    _need(order, "arrive", "en_route")
    dist = distance_m(order.lat, order.lon, lat, lon) if order.lat is not None and order.lon is not None else None
    flagged = dist is not None and dist > max_m
    if flagged and mode == "refuse":
        raise OrderError("too_far", f"{dist:.0f} m from the case's location (at most {max_m:.0f} m)")
    return _reach(order, "on_site", "on_site", actor, now, arrive_distance_m=dist, arrive_flagged=flagged)


def handle(order: WorkOrder, actor: str, now: float, notes: str, photos: list[str]) -> WorkOrder:
    """Handled on site (处置) with notes and photos."""
    _need(order, "report handling", "on_site")
    if not notes.strip():
        raise OrderError("invalid", "handling needs notes")
    return _reach(order, "handled", "handled", actor, now, notes=notes[:4000], photos=[*order.photos, *photos])


def verify(order: WorkOrder, actor: str, now: float, passed: bool, note: str = "") -> WorkOrder:
    """The centre checks the handling (核查): passed -> verified; failed -> back on site for rework."""
    _need(order, "verify", "handled")
    if passed:
        return _reach(order, "verified", "verified", actor, now)
    if not note.strip():
        raise OrderError("invalid", "a failed check needs a note saying what is missing")
    times = {k: v for k, v in order.times.items() if k != "handled"}
    return msgspec.structs.replace(order, stage="on_site", times=times, last_reason=note[:1000], updated_at=now)


def close(order: WorkOrder, actor: str, now: float) -> WorkOrder:
    """Close the case (办结) after verification."""
    _need(order, "close", "verified")
    return _reach(order, "closed", "closed", actor, now)


def give_back(order: WorkOrder, actor: str, now: float, reason: str) -> WorkOrder:
    """Grid staff return the case (退单: not their grid, not their job) with a reason; the centre re-dispatches."""
    _need(order, "return", "dispatched", "accepted")
    if not reason.strip():
        raise OrderError("invalid", "returning a case needs a reason")
    return msgspec.structs.replace(order, stage="returned", returns=order.returns + 1, last_reason=reason[:1000],
                                   assignee=None, updated_at=now)


def reopen(order: WorkOrder, now: float) -> WorkOrder:
    """The rule fired again shortly after the case was closed: the same order starts over (stage ``new``)."""
    _need(order, "reopen", "closed")
    return msgspec.structs.replace(order, stage="new", times={}, due={}, overdue=[], assignee=None,
                                   reopens=order.reopens + 1, updated_at=now, satisfaction=None)


def record_satisfaction(order: WorkOrder, actor: str, now: float, result: str, note: str = "") -> WorkOrder:
    """The follow-up (回访) result of a closed case."""
    _need(order, "record satisfaction", "closed")
    if result not in SATISFACTION:
        raise OrderError("invalid", f"result is one of {', '.join(SATISFACTION)}")
    return msgspec.structs.replace(order, satisfaction=result, satisfaction_note=note[:1000], updated_at=now)


def check_overdue(order: WorkOrder, now: float) -> tuple[WorkOrder, list[str]]:
    """Milestones that went overdue at ``now`` (each once per dispatch) and the flagged order."""
    if not order.is_open or order.stage in ("new", "returned"):
        return order, []
    newly = [m for m in MILESTONES if m in order.due and m not in order.times and m not in order.overdue
             and now >= order.due[m]]
    if not newly:
        return order, []
    late = list(order.late) + [m for m in newly if m not in order.late]
    return msgspec.structs.replace(order, overdue=[*order.overdue, *newly], late=late, updated_at=now), newly


def next_due(order: WorkOrder) -> float | None:
    """The earliest deadline still ahead of an open order (for the timer)."""
    if not order.is_open or order.stage in ("new", "returned"):
        return None
    times = [d for m, d in order.due.items() if m not in order.times and m not in order.overdue]
    return min(times) if times else None
