"""The alert lifecycle state machine, step by step on explicit times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerting import lifecycle as lc
from alerting.config import Deadlines
from broker.contracts import AlertStatus, Kind, Severity, Transition

T0 = 1_790_000_000.0
D = Deadlines()


def tr(status: str, at: float, severity: Severity = Severity.CRITICAL, fp: str = "fp1") -> Transition:
    return Transition(ts=datetime.fromtimestamp(at, UTC), fingerprint=fp, rule="trapped_passenger",
                      status=status, severity=severity, kind=Kind.ELEVATOR, device_id="elv-1",  # type: ignore[arg-type]
                      site="tower-a", summary="困人", source_ts=datetime.fromtimestamp(at - 0.2, UTC))


def fire(at: float = T0, severity: Severity = Severity.CRITICAL) -> lc.AlertRecord:
    out = lc.apply_transition(None, None, tr("firing", at, severity), at, new_id="a1", deadlines=D,
                              reopen_window_s=300, unit="u1", industry="elevator", policy="135")
    assert out.record is not None
    return out.record


def test_new_alert_has_deadlines_by_severity_and_audit() -> None:
    out = lc.apply_transition(None, None, tr("firing", T0), T0, new_id="a1", deadlines=D, reopen_window_s=300)
    assert out.change == "new" and out.notify
    rec = out.record
    assert rec is not None and rec.status is AlertStatus.FIRING
    assert rec.ack_by == T0 + 60 and rec.resolve_by == T0 + 1800
    assert rec.source_ts == pytest.approx(T0 - 0.2)
    assert [e.action for e in out.events] == ["created"]


@pytest.mark.parametrize(("severity", "ack", "res"), [
    (Severity.CRITICAL, 60, 1800), (Severity.MAJOR, 300, 4 * 3600), (Severity.WARNING, 1800, 86400),
    (Severity.INFO, 7200, 72 * 3600)])
def test_deadlines_table(severity: Severity, ack: float, res: float) -> None:
    rec = fire(severity=severity)
    assert (rec.ack_by, rec.resolve_by) == (T0 + ack, T0 + res)


def test_refire_while_open_is_deduplicated() -> None:
    rec = fire()
    out = lc.apply_transition(rec, None, tr("firing", T0 + 5), T0 + 5, new_id="zz", deadlines=D, reopen_window_s=300)
    assert out.change == "updated" and not out.notify and out.record is not None and out.record.id == "a1"


def test_raised_severity_notifies_lowered_does_not() -> None:
    rec = fire(severity=Severity.MAJOR)
    up = lc.apply_transition(rec, None, tr("firing", T0 + 1, Severity.CRITICAL), T0 + 1, new_id="x", deadlines=D,
                             reopen_window_s=300)
    assert up.change == "severity" and up.notify and up.record is not None and up.record.ack_by == T0 + 60
    down = lc.apply_transition(up.record, None, tr("firing", T0 + 2, Severity.WARNING), T0 + 2, new_id="x",
                               deadlines=D, reopen_window_s=300)
    assert down.change == "updated" and [e.action for e in down.events] == ["severity_changed"]


def test_stale_transition_is_ignored() -> None:
    rec = fire(at=T0 + 10)
    out = lc.apply_transition(rec, None, tr("resolved", T0), T0 + 11, new_id="x", deadlines=D, reopen_window_s=300)
    assert out.change == "stale" and out.record is rec


def test_resolve_then_reopen_within_window_keeps_id() -> None:
    rec = fire()
    res = lc.apply_transition(rec, None, tr("resolved", T0 + 30), T0 + 30, new_id="x", deadlines=D,
                              reopen_window_s=300)
    assert res.change == "resolved" and res.record is not None and res.record.ends_at == T0 + 30
    assert res.record.resolved_by == "rule"
    again = lc.apply_transition(None, res.record, tr("firing", T0 + 100), T0 + 100, new_id="new", deadlines=D,
                                reopen_window_s=300, policy="135")
    assert again.change == "reopened" and again.record is not None
    assert again.record.id == "a1" and again.record.reopen_count == 1 and again.record.ends_at is None
    assert again.record.esc_anchor == T0 + 100 and again.record.esc_next_step == 0
    late = lc.apply_transition(None, res.record, tr("firing", T0 + 400), T0 + 400, new_id="new", deadlines=D,
                               reopen_window_s=300)
    assert late.change == "new" and late.record is not None and late.record.id == "new"


def test_resolved_without_open_alert_is_ignored() -> None:
    out = lc.apply_transition(None, None, tr("resolved", T0), T0, new_id="x", deadlines=D, reopen_window_s=300)
    assert out.change == "ignored" and out.record is None


def test_person_actions_and_conflicts() -> None:
    rec = fire()
    acked, ev = lc.acknowledge(rec, "zhang", T0 + 20, "on my way")
    assert acked.status is AlertStatus.ACKNOWLEDGED and acked.acknowledged_by == "zhang" and ev.actor == "zhang"
    with pytest.raises(lc.LifecycleError) as exc:
        lc.acknowledge(acked, "li", T0 + 21)
    assert exc.value.code == "conflict"
    assigned, ev = lc.assign(acked, "lead", T0 + 30, "wang", "maintenance-co")
    assert assigned.assignee == "wang" and assigned.assigned_unit == "maintenance-co"
    assert assigned.match_labels()["unit"] == "maintenance-co"
    with pytest.raises(lc.LifecycleError):
        lc.assign(acked, "lead", T0, None, None)
    commented, ev = lc.comment(assigned, "wang", T0 + 40, "rescue team arrived")
    assert ev.detail["text"] == "rescue team arrived"
    with pytest.raises(lc.LifecycleError):
        lc.close(commented, "wang", T0 + 50, "  ")
    closed, ev = lc.close(commented, "wang", T0 + 50, "passengers released")
    assert closed.status is AlertStatus.RESOLVED and closed.resolved_by == "wang" and closed.ends_at == T0 + 50
    with pytest.raises(lc.LifecycleError):
        lc.acknowledge(closed, "x", T0)
    with pytest.raises(lc.LifecycleError):
        lc.close(closed, "x", T0, "r")
    with pytest.raises(lc.LifecycleError):
        lc.change_severity(closed, "x", T0, Severity.INFO, "", D)
    # comments stay possible after closing (a follow-up note)
    lc.comment(closed, "wang", T0 + 60, "report filed")


def test_manual_severity_change_moves_deadlines() -> None:
    rec = fire(severity=Severity.WARNING)
    new, ev = lc.change_severity(rec, "lead", T0 + 5, Severity.CRITICAL, "children inside", D)
    assert new.ack_by == T0 + 60 and ev.detail == {"from": "warning", "to": "critical", "reason": "children inside"}


def test_overdue_flags_once_each() -> None:
    rec = fire()
    same, evs = lc.check_overdue(rec, T0 + 59)
    assert evs == () and same is rec
    over, evs = lc.check_overdue(rec, T0 + 60)
    assert over.ack_overdue and [e.action for e in evs] == ["ack_overdue"]
    _again, evs = lc.check_overdue(over, T0 + 61)
    assert evs == ()
    acked, _ = lc.acknowledge(rec, "z", T0 + 10)
    late, evs = lc.check_overdue(acked, T0 + 1800)
    assert not late.ack_overdue and late.resolve_overdue and [e.action for e in evs] == ["resolve_overdue"]


def test_contract_conversion() -> None:
    alert = lc.to_contract(fire())
    assert alert.id == "a1" and alert.status == "firing" and alert.ack_by is not None
    assert alert.ack_by.timestamp() == T0 + 60


def test_alert_ids_are_unique_and_time_ordered() -> None:
    ids = [lc.new_alert_id(T0 + i) for i in range(100)]
    assert len(set(ids)) == 100 and ids == sorted(ids)


def test_rescue_category_runs_the_rescue_clock_whatever_the_severity() -> None:
    """Trapped passengers (rule label category=rescue): resolve-by is the 30-minute rescue clock, also for a
    major alarm-button alert whose severity alone would allow 4 hours; a city can set its own clock."""
    import msgspec

    from alerting.config import CategoryDeadline

    button = msgspec.structs.replace(tr("firing", T0, Severity.MAJOR), labels={"category": "rescue"})
    out = lc.apply_transition(None, None, button, T0, new_id="r1", deadlines=D, reopen_window_s=300)
    assert out.record is not None
    assert (out.record.ack_by, out.record.resolve_by) == (T0 + 300, T0 + 1800)
    strict = Deadlines(categories={"rescue": CategoryDeadline(ack_s=30.0, resolve_s=1200.0)})
    out = lc.apply_transition(None, None, button, T0, new_id="r2", deadlines=strict, reopen_window_s=300)
    assert out.record is not None and (out.record.ack_by, out.record.resolve_by) == (T0 + 30, T0 + 1200)
    # A severity change keeps the category's clock.
    changed, _ = lc.change_severity(out.record, "operator", T0 + 60, Severity.CRITICAL, "confirmed trapped", strict)
    assert changed.resolve_by == T0 + 1200
    # Other categories follow the severity table.
    other = msgspec.structs.replace(tr("firing", T0, Severity.MAJOR), labels={"category": "fault"})
    out = lc.apply_transition(None, None, other, T0, new_id="r3", deadlines=D, reopen_window_s=300)
    assert out.record is not None and out.record.resolve_by == T0 + 4 * 3600
