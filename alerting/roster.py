"""Duty rosters: who is on duty at a time, for a unit and a role, with overrides.

Pure: every query takes the time (epoch seconds). Rotations count handovers since the roster's
anchor in the roster's local time zone (Asia/Shanghai by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from alerting.config import Person, Roster


class OverrideEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Someone covers a roster from ``starts_at`` to ``ends_at`` (epoch seconds)."""

    id: str
    roster: str
    person: str
    starts_at: float
    ends_at: float
    reason: str = ""
    author: str = "config"
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Shift:
    """Who is on duty in one roster, and since / until when."""

    roster: str
    role: str
    unit: str
    person: str
    starts_at: float
    ends_at: float
    override: str | None = None


def _hm(text: str) -> tuple[int, int]:
    h, _, m = text.partition(":")
    return int(h), int(m or 0)


def rotation_slot(r: Roster, now: float) -> tuple[int, float, float]:
    """(slot index since the anchor, slot start, slot end) for a roster at ``now``."""
    tz = ZoneInfo(r.timezone)
    anchor = date.fromisoformat(r.anchor)
    times = sorted(_hm(h) for h in r.handovers) or [(8, 0)]
    if r.rotation != "shift":
        times = times[:1]
    local = datetime.fromtimestamp(now, tz)
    # Slot boundaries: each handover time on each day (shift), the first one per day (daily) or per week (weekly).
    period_days = 7 if r.rotation == "weekly" else 1

    def boundary(day_index: int, k: int) -> datetime:
        d = anchor + timedelta(days=day_index * period_days)
        return datetime(d.year, d.month, d.day, times[k][0], times[k][1], tzinfo=tz)

    per = len(times)
    days = (local.date() - anchor).days // period_days + 1
    # Walk back from a boundary after now to the last one at or before it.
    idx = days * per + per - 1
    while idx > -10 * per:
        start = boundary(idx // per, idx % per)
        if start <= local:
            nxt = idx + 1
            end = boundary(nxt // per, nxt % per)
            return idx, start.timestamp(), end.timestamp()
        idx -= 1
    return 0, now, now


class DutyRoster:
    """All rosters, people and overrides; answers "who is on duty now for this unit"."""

    def __init__(self, people: list[Person], rosters: list[Roster], overrides: list[OverrideEntry] | None = None):
        self.people = {p.id: p for p in people}
        self.rosters = {r.name: r for r in rosters}
        self.overrides: dict[str, OverrideEntry] = {o.id: o for o in overrides or []}

    def shift(self, roster: str, now: float) -> Shift | None:
        """The shift of one roster at ``now`` (overrides win; the latest created wins among them)."""
        r = self.rosters.get(roster)
        if r is None or not r.members:
            return None
        slot, start, end = rotation_slot(r, now)
        person = r.members[slot % len(r.members)]
        best: OverrideEntry | None = None
        for o in self.overrides.values():
            if o.roster != roster or not o.starts_at <= now < o.ends_at:
                continue
            if best is None or o.created_at >= best.created_at:
                best = o
        if best is not None:
            return Shift(r.name, r.role, r.unit, best.person, best.starts_at, best.ends_at, best.id)
        return Shift(r.name, r.role, r.unit, person, start, end)

    def on_duty(self, now: float, *, unit: str | None = None, role: str | None = None) -> list[Shift]:
        """Shifts in force at ``now`` for a unit (rosters of that unit, else unit-less ones) and a role."""
        out: list[Shift] = []
        for name, r in self.rosters.items():
            if role is not None and r.role != role:
                continue
            if unit is not None and r.unit not in ("", unit):
                continue
            s = self.shift(name, now)
            if s is not None:
                out.append(s)
        if unit:
            # A unit's own roster takes precedence over the city-wide one for the same role.
            own = {s.role for s in out if s.unit == unit}
            out = [s for s in out if s.unit == unit or s.role not in own]
        return out

    def people_for_role(self, role: str, unit: str, now: float) -> list[str]:
        """Who fills a role now: on-duty roster members, else people holding the role (unit first)."""
        ids = [s.person for s in self.on_duty(now, unit=unit, role=role)]
        if ids:
            return ids
        holders = [p for p in self.people.values() if role in p.roles]
        same = [p.id for p in holders if p.unit == unit and unit]
        return same or [p.id for p in holders if not p.unit] or [p.id for p in holders]
