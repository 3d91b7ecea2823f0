"""group_wait 0 means at once: an alert that fired and cleared before the first flush is still told."""

from __future__ import annotations

from alerting.grouping import FIRING, RESOLVED, Grouper
from alerting.router import RoutePlan

EAGER = RoutePlan("r", ("room",), None, ("site",), group_wait_s=0, group_interval_s=0, repeat_interval_s=3600,
                  send_resolved=False)
L = {"site": "school-1"}


def test_fired_and_resolved_in_one_batch_is_flushed_as_resolved() -> None:
    g = Grouper({"r": EAGER})
    g.update(EAGER, L, "a", FIRING, 0)
    g.update(EAGER, L, "a", RESOLVED, 0)  # same handler batch: no flush in between
    flushes = g.due(0)
    assert [(f.firing, f.resolved) for f in flushes] == [([], ["a"])]
    assert g.due(100) == []  # told once


def test_a_notified_alert_is_not_told_twice_when_send_resolved_is_off() -> None:
    g = Grouper({"r": EAGER})
    g.update(EAGER, L, "a", FIRING, 0)
    assert [f.firing for f in g.due(0)] == [["a"]]
    g.update(EAGER, L, "a", RESOLVED, 1)
    assert all(f.resolved == [] for f in g.due(2))
