"""Camera geometry: frame scaling, zone rasters, tripwire directions and armed schedules."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.camera.config import LineConfig, TimeWindow, ZoneConfig
from edge.camera.zones import FrameScale, Schedule, Tripwire, Zone, analysis_mask, point_in_polygon

SQUARE = [(10.0, 10.0), (110.0, 10.0), (110.0, 110.0), (10.0, 110.0)]


def test_scale_keeps_aspect_and_never_upscales() -> None:
    assert FrameScale.for_height(1920, 1080, 120).analysis_size == (213, 120)
    assert FrameScale.for_height(320, 240, 480).analysis_size == (320, 240)
    assert FrameScale.for_height(640, 480, 120).factor == pytest.approx(0.25)


@pytest.mark.parametrize(("x", "y", "inside"), [
    (50, 50, True), (5, 50, False), (109, 109, True), (111, 50, False), (50, 200, False)])
def test_point_in_polygon(x: float, y: float, inside: bool) -> None:
    assert point_in_polygon(SQUARE, x, y) is inside


def test_zone_raster_excludes_masked_pixels() -> None:
    scale = FrameScale.for_height(200, 200, 100)
    keep = analysis_mask(scale, [[(10.0, 10.0), (60.0, 10.0), (60.0, 110.0), (10.0, 110.0)]])
    zone = Zone.build(ZoneConfig(name="z", polygon=SQUARE), scale, keep)
    full = Zone.build(ZoneConfig(name="z", polygon=SQUARE), scale, analysis_mask(scale, []))
    assert full.area == pytest.approx(51 * 51, rel=0.05)
    assert zone.area == pytest.approx(full.area / 2, rel=0.1)


@pytest.mark.parametrize(("before", "after", "expected"), [
    ((40.0, 50.0), (60.0, 50.0), "backward"),   # line points down: moving east is to its left
    ((60.0, 50.0), (40.0, 50.0), "forward"),
    ((40.0, 50.0), (45.0, 50.0), None),          # does not reach the line
    ((40.0, 150.0), (60.0, 150.0), None),        # crosses the extension, not the segment
    ((40.0, 50.0), (50.0, 50.0), "backward"),    # onto the line counts as reaching its left side
    ((50.0, 50.0), (60.0, 50.0), None),          # ... so leaving it leftwards is no second crossing
])
def test_tripwire_crossing_direction(before: tuple[float, float], after: tuple[float, float],
                                     expected: str | None) -> None:
    wire = Tripwire(LineConfig(name="gate", points=[(50.0, 0.0), (50.0, 100.0)]))
    assert wire.crossing(before, after) == expected


def test_tripwire_touch_then_leave_is_one_crossing() -> None:
    wire = Tripwire(LineConfig(name="gate", points=[(50.0, 0.0), (50.0, 100.0)]))
    steps = [(40.0, 50.0), (50.0, 50.0), (60.0, 50.0)]
    found = [wire.crossing(a, b) for a, b in itertools.pairwise(steps)]
    assert [f for f in found if f] == ["backward"]


def test_tripwire_reports_only_configured_direction() -> None:
    wire = Tripwire(LineConfig(name="exit", points=[(0.0, 0.0), (0.0, 1.0)], direction="forward"))
    assert wire.reports("forward") and not wire.reports("backward")


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@pytest.mark.parametrize(("when", "armed"), [
    ("2026-11-23T21:59:59", False),   # Monday evening before the window
    ("2026-11-23T22:00:00", True),
    ("2026-11-24T05:59:00", True),    # Tuesday morning belongs to Monday's window
    ("2026-11-24T06:00:00", False),
    ("2026-11-28T23:00:00", False),   # Saturday is not armed
    ("2026-11-29T03:00:00", False),   # Sunday morning: Saturday's window, not armed
    ("2026-11-28T03:00:00", True),    # Saturday morning: Friday's window
])
def test_schedule_wraps_midnight_and_honours_days(when: str, armed: bool) -> None:
    schedule = Schedule.build([TimeWindow(start="22:00", end="06:00", days=["mon", "tue", "wed", "thu", "fri"])],
                              "Asia/Shanghai")
    assert schedule.active(_at(when)) is armed


def test_default_window_is_always() -> None:
    schedule = Schedule.build([TimeWindow()], "UTC")
    assert all(schedule.active(_at(f"2026-11-2{d}T{h:02d}:30:00")) for d in range(3, 10) for h in range(24))
