"""Zone analytics on synthetic motion: intrusion by schedule, loitering, crowd, tripwires; the tracker."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from edge.camera.analytics import CrowdDetector, IntrusionDetector, LineCrossingDetector, LoiteringDetector
from edge.camera.config import (
    CrowdSettings,
    IntrusionSettings,
    LineConfig,
    LoiteringSettings,
    TimeWindow,
    TrackerSettings,
    ZoneConfig,
)
from edge.camera.motion import Blob, Box, MotionResult
from edge.camera.tracker import CentroidTracker, Track
from edge.camera.zones import FrameScale, Schedule, Tripwire, Zone, analysis_mask

SCALE = FrameScale.for_height(320, 240, 120)
KEEP = analysis_mask(SCALE, [])
YARD = ZoneConfig(name="yard", polygon=[(160.0, 40.0), (320.0, 40.0), (320.0, 200.0), (160.0, 200.0)])


def person(x: float, y: float) -> Blob:
    """A 12x32 figure standing at (x, y)."""
    return Blob(Box(round(x - 6), round(y - 32), 12, 32), 384.0)


def motion(*blobs: Blob) -> MotionResult:
    fg = np.zeros((120, 160), np.uint8)
    for b in blobs:
        f = SCALE.factor
        fg[round(b.box.y * f):round((b.box.y + b.box.h) * f), round(b.box.x * f):round((b.box.x + b.box.w) * f)] = 255
    return MotionResult(fg, tuple(blobs), 0.01, False, 0.0)


def shanghai(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def test_tracker_keeps_identity_and_forgets_after_grace() -> None:
    tr = CentroidTracker(TrackerSettings(max_missed_s=1.0), (320, 240))
    ids = [tr.update(t / 5, (person(50 + 4 * t, 100),))[0].id for t in range(10)]
    assert len(set(ids)) == 1
    assert tr.update(2.2, ()) == [] and len(tr.all()) == 1
    tr.update(3.0, ())
    assert tr.all() == []


def test_tracker_separates_two_people() -> None:
    tr = CentroidTracker(TrackerSettings(), (320, 240))
    for t in range(10):
        live = tr.update(t / 5, (person(40 + 5 * t, 100), person(280 - 5 * t, 200)))
    assert len({x.id for x in live}) == 2
    assert live[0].previous_foot is not None


def test_intrusion_only_while_armed() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    sched = Schedule.build([TimeWindow(start="22:00", end="06:00")], "Asia/Shanghai")
    det = IntrusionDetector("c", zone, IntrusionSettings(on_after_s=0.4, off_after_s=1.0), sched, SCALE)
    t0 = shanghai("2026-11-26T21:59:50")
    events = []
    for i in range(100):  # 20 s at 5 fps; someone in the yard the whole time
        ev = det.update(t0 + i / 5, motion(person(240, 120)))
        if ev:
            events.append(ev)
    assert [(e.state, e.ts - t0) for e in events] == [("start", 10.0)]
    assert events[0].zone == "yard" and events[0].boxes and events[0].measure and events[0].measure > 150


def test_intrusion_ignores_motion_outside_zone_and_small_motion() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    det = IntrusionDetector("c", zone, IntrusionSettings(on_after_s=0.0, min_area=150), Schedule.build([TimeWindow()],
                            "UTC"), SCALE)
    assert det.update(0.0, motion(person(80, 120))) is None
    tiny = Blob(Box(240, 100, 4, 4), 16.0)
    assert det.update(0.2, motion(tiny)) is None


def run_tracks(det: LoiteringDetector, path: list[tuple[float, float | None]], tracker: CentroidTracker,
               t0: float = 0.0) -> list[tuple[str, float]]:
    out = []
    for i, x in enumerate(path):
        t = t0 + i / 5
        tracker.update(t, (person(x[0], x[1]),) if x[0] is not None else ())  # type: ignore[arg-type]
        ev = det.update(t, tracker.all())
        if ev:
            out.append((ev.state, round(ev.ts, 1)))
    return out


def test_loitering_after_dwell_and_not_for_passers_by() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    det = LoiteringDetector("c", zone, LoiteringSettings(after_s=10.0, off_after_s=1.0), 40.0)
    tracker = CentroidTracker(TrackerSettings(), (320, 240))
    passer = [(100 + 10 * i, 150) for i in range(25)]  # crosses the yard in 3 s
    lingerer = [(200 + 40 * np.sin(i / 10), 120.0) for i in range(75)] + [(None, None)] * 15  # 15 s then gone
    events = run_tracks(det, passer + [(None, None)] * 10 + lingerer, tracker)  # type: ignore[arg-type]
    assert events == [("start", 17.0), ("end", 22.0)]


def test_loitering_survives_a_lost_track() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    det = LoiteringDetector("c", zone, LoiteringSettings(after_s=10.0), 40.0)
    tracker = CentroidTracker(TrackerSettings(max_missed_s=0.5), (320, 240))
    # Visible 6 s, invisible 2 s (track forgotten), visible again nearby: the dwell counts from the first entry.
    path = [(220.0, 120.0)] * 30 + [(None, None)] * 10 + [(225.0, 125.0)] * 40
    events = run_tracks(det, path, tracker)  # type: ignore[arg-type]
    assert events == [("start", 10.0)]


def test_crowd_needs_level_for_duration() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    det = CrowdDetector("c", zone, CrowdSettings(min_people=4, person_area=384, on_after_s=2.0, off_after_s=1.0),
                        SCALE)
    group = tuple(person(180 + 30 * k, 100 + 20 * k) for k in range(5))
    few = group[:2]
    events = []
    for i in range(60):
        blobs = group if 10 <= i < 40 else few
        ev = det.update(i / 5, motion(*blobs), [])
        if ev:
            events.append((ev.state, round(ev.ts, 1), ev.measure, ev.data.get("count_method")))
    assert [e[:3] for e in events] == [("start", 2.0, 5.0), ("end", 8.0, 5.0)]
    assert events[0][3] == "motion"


def test_crowd_by_occupancy() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    det = CrowdDetector("c", zone, CrowdSettings(min_people=None, min_occupancy=0.2, on_after_s=0.0), SCALE)
    big = Blob(Box(160, 40, 160, 60), 9600.0)
    ev = det.update(0.0, motion(big), [])
    assert ev is not None and ev.state == "start" and ev.measure is not None and ev.measure >= 0.2


def track(tid: int, prev: tuple[float, float], now: tuple[float, float], t: float) -> Track:
    tr = Track(tid, person(*now).box, 0.0, t)
    tr.previous_foot = prev
    return tr


def test_line_crossing_direction_filter_and_cooldown() -> None:
    gate = LineCrossingDetector("c", Tripwire(LineConfig(name="gate", points=[(160.0, 0.0), (160.0, 240.0)])))
    exit_ = LineCrossingDetector("c", Tripwire(LineConfig(name="exit", points=[(160.0, 0.0), (160.0, 240.0)],
                                                          direction="forward")))
    east = [track(1, (150.0, 100.0), (170.0, 100.0), 1.0)]
    west = [track(2, (170.0, 150.0), (150.0, 150.0), 1.0)]
    got = gate.update(1.0, east + west)
    assert sorted(e.data["direction"] for e in got) == ["backward", "forward"]
    assert [e.data["direction"] for e in exit_.update(1.0, east + west)] == ["forward"]
    # The same track wobbling back over the line within the cooldown is not a new crossing.
    assert gate.update(1.4, [track(1, (170.0, 100.0), (155.0, 100.0), 1.4)]) == []
    assert all(e.state == "instant" and e.zone == "gate" and e.boxes for e in got)


def test_crowd_takes_a_detector_count_with_the_tracks_as_floor() -> None:
    zone = Zone.build(YARD, SCALE, KEEP)
    settings = CrowdSettings(min_people=3, person_area=384, on_after_s=0.0)
    two = (person(200, 100), person(260, 150))
    tracks = [Track(k + 1, b.box, 0.0, 0.0) for k, b in enumerate(two)]
    by_motion = CrowdDetector("c", zone, settings, SCALE)
    assert by_motion.update(0.0, motion(*two), tracks) is None  # two people by motion: below the level
    ev = CrowdDetector("c", zone, settings, SCALE).update(0.0, motion(*two), tracks, detected=4)
    assert ev is not None and ev.data["count_method"] == "hog" and ev.data["people"] == 4
    # The detector missed people the tracker follows separately: the tracks are a floor.
    low = CrowdDetector("c", zone, CrowdSettings(min_people=2, person_area=384, on_after_s=0.0), SCALE)
    ev = low.update(0.0, motion(*two), tracks, detected=1)
    assert ev is not None and ev.data["people"] == 2 and ev.data["count_method"] == "hog"
