"""Duty rosters (who is on duty at t) and the escalation scheduler."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from alerting.config import EscalationPolicy, EscalationStep, Person, Roster
from alerting.escalation import due_steps, first_step, immediate_targets, next_time
from alerting.roster import DutyRoster, OverrideEntry

SH = ZoneInfo("Asia/Shanghai")


def at(d: int, h: int, mi: int = 0) -> float:
    return datetime(2026, 11, d, h, mi, tzinfo=SH).timestamp()


PEOPLE = [Person(id=p, roles=["operator"]) for p in ("a", "b", "c")] + [
    Person(id="lead", roles=["shift_lead"], unit="u1"), Person(id="lead2", roles=["shift_lead"])]


@pytest.mark.parametrize(("when", "who"), [
    (at(23, 8, 0), "a"), (at(23, 19, 59), "a"), (at(23, 20, 0), "b"), (at(24, 7, 59), "b"), (at(24, 8, 0), "c"),
    (at(24, 20, 0), "a"), (at(23, 7, 0), "c"),
])
def test_shift_rotation_with_two_handovers(when: float, who: str) -> None:
    # anchor Monday 2026-11-23: a takes the 08:00 shift, b the 20:00 one, then c, a, ...
    r = DutyRoster(PEOPLE, [Roster(name="ops", role="operator", members=["a", "b", "c"], rotation="shift",
                                   handovers=["08:00", "20:00"], anchor="2026-11-23")])
    s = r.shift("ops", when)
    assert s is not None and s.person == who


def test_daily_and_weekly_rotation() -> None:
    r = DutyRoster(PEOPLE, [
        Roster(name="d", role="operator", members=["a", "b"], rotation="daily", handovers=["09:00"],
               anchor="2026-11-23"),
        Roster(name="w", role="operator", members=["a", "b"], rotation="weekly", handovers=["09:00"],
               anchor="2026-11-23")])
    def who(name: str, t: float) -> str | None:
        s = r.shift(name, t)
        return s.person if s else None

    assert [who("d", at(d, 10)) for d in (23, 24, 25)] == ["a", "b", "a"]
    assert who("d", at(24, 8)) == "a"  # before the handover
    assert [who("w", at(d, 10)) for d in (23, 29, 30)] == ["a", "a", "b"]


def test_override_wins_latest_created_first() -> None:
    r = DutyRoster(PEOPLE, [Roster(name="d", role="operator", members=["a", "b"], anchor="2026-11-23")],
                   [OverrideEntry(id="o1", roster="d", person="c", starts_at=at(23, 12), ends_at=at(23, 14),
                                  reason="sick", created_at=1),
                    OverrideEntry(id="o2", roster="d", person="b", starts_at=at(23, 13), ends_at=at(23, 14),
                                  created_at=2)])
    shifts = [r.shift("d", at(23, h)) for h in (11, 12, 13, 14)]
    assert [s.person if s else None for s in shifts] == ["a", "c", "b", "a"]
    s = r.shift("d", at(23, 12))
    assert s is not None and s.override == "o1"


def test_on_duty_for_unit_prefers_own_roster() -> None:
    r = DutyRoster(PEOPLE, [
        Roster(name="city", role="operator", members=["a"], anchor="2026-11-23"),
        Roster(name="u1ops", role="operator", unit="u1", members=["b"], anchor="2026-11-23"),
        Roster(name="u2ops", role="operator", unit="u2", members=["c"], anchor="2026-11-23")])
    assert [s.person for s in r.on_duty(at(23, 10), unit="u1", role="operator")] == ["b"]
    assert [s.person for s in r.on_duty(at(23, 10), unit="u9", role="operator")] == ["a"]
    assert r.people_for_role("operator", "u2", at(23, 10)) == ["c"]
    # no roster for the role: people holding it, same unit first
    assert r.people_for_role("shift_lead", "u1", at(23, 10)) == ["lead"]
    assert r.people_for_role("shift_lead", "u7", at(23, 10)) == ["lead2"]


P135 = EscalationPolicy(name="135", steps=[
    EscalationStep(delay_s=0, targets=["role:operator"]), EscalationStep(delay_s=60, targets=["role:shift_lead"]),
    EscalationStep(delay_s=180, targets=["role:duty_chief"]), EscalationStep(delay_s=300, targets=["role:unit_head"]),
], repeat_s=60)


def test_135_ladder_step_by_step() -> None:
    assert first_step(P135) == 1 and immediate_targets(P135) == ["role:operator"]
    step, reps, fired = 1, 0, []
    for t in range(0, 481, 1):
        due, step, reps = due_steps(P135, 1000.0, step, reps, 1000.0 + t)
        fired += [(t, d.step, d.repeat) for d in due]
    assert fired == [(60, 1, 0), (180, 2, 0), (300, 3, 0), (360, 3, 1), (420, 3, 2), (480, 3, 3)]
    assert next_time(P135, 1000.0, step, reps) == 1000.0 + 300 + 60 * 4


def test_downtime_collapses_missed_rungs_and_repeats() -> None:
    due, step, reps = due_steps(P135, 0.0, 1, 0, 3600.0)
    assert [d.step for d in due] == [1, 2, 3] and step == 4 and reps == 55
    due, step, reps = due_steps(P135, 0.0, step, reps, 3601.0)
    assert due == []


def test_policy_without_repeat_finishes() -> None:
    p = EscalationPolicy(name="s", steps=[EscalationStep(delay_s=10, targets=["person:a"])])
    due, step, reps = due_steps(p, 0, 0, 0, 10)
    assert len(due) == 1 and next_time(p, 0, step, reps) is None
    assert due_steps(p, 0, step, reps, 1e9)[0] == []
