"""Grouping: group_wait, group_interval, repeat_interval and deduplication on an explicit clock."""

from __future__ import annotations

from alerting.grouping import ACKED, FIRING, RESOLVED, Grouper, group_key
from alerting.router import RoutePlan

PLAN = RoutePlan("r", ("room",), None, ("site",), group_wait_s=10, group_interval_s=60, repeat_interval_s=3600,
                 send_resolved=True)
L = {"site": "school-1", "rule": "video_loss"}


def grouper(plan: RoutePlan = PLAN) -> Grouper:
    return Grouper({plan.id: plan})


def test_forty_cameras_one_notification() -> None:
    g = grouper()
    for i in range(40):
        g.update(PLAN, L, f"cam{i}", FIRING, 100 + i * 0.1)
    assert g.due(109.9) == []
    flushes = g.due(110)
    assert len(flushes) == 1 and len(flushes[0].firing) == 40 and not flushes[0].repeat
    assert g.due(150) == []


def test_group_interval_then_repeat_then_resolved() -> None:
    g = grouper()
    g.update(PLAN, L, "a", FIRING, 0)
    assert len(g.due(10)) == 1
    g.update(PLAN, L, "b", FIRING, 20)
    assert g.due(69) == []
    fl = g.due(70)
    assert fl[0].firing == ["a", "b"] and fl[0].seq == 2
    # nothing new: the next one is the repeat, after repeat_interval
    assert g.due(3669) == []
    rep = g.due(3670)
    assert rep[0].repeat and rep[0].firing == ["a", "b"]
    g.update(PLAN, L, "a", RESOLVED, 3700)
    g.update(PLAN, L, "b", RESOLVED, 3700)
    res = g.due(3730)
    assert res[0].resolved == ["a", "b"] and res[0].firing == []
    assert g.groups == {}
    assert g.due(10_000) == []


def test_acknowledged_alerts_do_not_repeat() -> None:
    g = grouper()
    g.update(PLAN, L, "a", FIRING, 0)
    g.due(10)
    g.update(PLAN, L, "a", ACKED, 20)
    assert g.due(100_000) == []


def test_renotify_makes_alert_new() -> None:
    g = grouper()
    g.update(PLAN, L, "a", FIRING, 0)
    g.due(10)
    g.update(PLAN, L, "a", FIRING, 20, renotify=True)
    assert len(g.due(70)) == 1


def test_resolved_before_first_flush_says_nothing() -> None:
    g = grouper()
    g.update(PLAN, L, "a", FIRING, 0)
    g.update(PLAN, L, "a", RESOLVED, 5)
    assert g.due(100) == []


def test_zero_wait_is_due_at_once_and_groups_split_by_labels() -> None:
    plan = RoutePlan("z", (), None, ("site",), 0, 30, 0, False)
    g = grouper(plan)
    g.update(plan, {"site": "a"}, "x", FIRING, 5)
    g.update(plan, {"site": "b"}, "y", FIRING, 5)
    assert sorted(f.labels["site"] for f in g.due(5)) == ["a", "b"]
    g.update(plan, {"site": "a"}, "x", RESOLVED, 6)
    assert g.due(100) == []  # send_resolved off, repeat off


def test_group_by_everything() -> None:
    plan = RoutePlan("e", (), None, ("...",), 0, 30, 0, True)
    k1, _ = group_key(plan, {"site": "a"}, "x")
    k2, _ = group_key(plan, {"site": "a"}, "y")
    assert k1 != k2


def test_updates_do_not_pile_up_timer_entries() -> None:
    g = grouper()
    g.update(PLAN, L, "a", FIRING, 0)
    g.due(10)
    for t in range(10_000):
        g.update(PLAN, L, "a", FIRING, 11 + t * 0.01)  # the rule keeps re-sending the same firing
    assert len(g._heap) <= 2
    assert len(g.due(3610)) == 1  # the repeat still comes, once
