"""Debounce of camera conditions: clear starts and ends, onset and clearance times."""

from __future__ import annotations

from edge.camera.events import EventSeries, SustainedCondition


def feed(cond: SustainedCondition, samples: list[tuple[float, bool]]) -> list[tuple[str, float, float]]:
    out = []
    for t, on in samples:
        tr = cond.update(t, on, 1.0)
        if tr:
            out.append((tr.state, tr.ts, tr.decided_at))
    return out


def test_needs_on_after_to_start_and_reports_onset() -> None:
    cond = SustainedCondition(on_after_s=1.0, off_after_s=2.0)
    got = feed(cond, [(0.0, False), (0.2, True), (0.6, True), (1.0, True), (1.2, True)])
    assert got == [("start", 0.2, 1.2)]


def test_short_blips_never_start() -> None:
    cond = SustainedCondition(1.0, 1.0)
    assert feed(cond, [(t / 5, (t % 4) < 2) for t in range(50)]) == []


def test_end_reports_clearance_time_after_hold() -> None:
    cond = SustainedCondition(0.0, 2.0)
    got = feed(cond, [(0.0, True), (1.0, True), (1.5, False), (2.5, True), (3.0, False), (4.0, False), (5.0, False)])
    assert got == [("start", 0.0, 0.0), ("end", 3.0, 5.0)]


def test_stop_ends_active_condition_once() -> None:
    cond = SustainedCondition(0.0, 5.0)
    cond.update(0.0, True)
    tr = cond.stop(1.0)
    assert tr is not None and tr.state == "end" and tr.ts == 1.0
    assert cond.stop(2.0) is None


def test_series_start_and_end_share_id_and_carry_peak() -> None:
    series = EventSeries("cam1", "crowd", "gate", 0.0, 0.0)
    start = series.update(10.0, True, 3.0)
    series.update(11.0, True, 7.0)
    end = series.update(12.0, False, 0.0)
    assert start is not None and end is not None
    assert start.state == "start" and end.state == "end"
    assert start.event_id == end.event_id == "cam1.crowd.gate.10000"
    assert end.measure == 7.0 and end.started_at == 10.0
