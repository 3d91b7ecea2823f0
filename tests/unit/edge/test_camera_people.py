"""Crowd person counts: the HOG people detector where OpenCV ships it and people are tall enough, else motion.

Tests marked ``needs_hog`` run the real OpenCV HOG detector; they need an OpenCV build with
``cv2.HOGDescriptor`` (4.x) and are skipped, not passed, on OpenCV 5. The others run everywhere.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge.camera.analyzer import CameraAnalyzer
from edge.camera.config import CameraSettings, CrowdSettings, ZoneConfig
from edge.camera.events import CameraEvent
from edge.camera.people import MIN_PERSON_PX, HogPeopleDetector, PeopleCounter, hog_available, person_height
from edge.camera.zones import FrameScale, Zone, analysis_mask

needs_hog = pytest.mark.skipif(not hog_available(), reason="this OpenCV build has no cv2.HOGDescriptor (OpenCV 5)")
Image = npt.NDArray[Any]
SIZE = (1280, 720)
ZONE = [(300.0, 300.0), (1000.0, 300.0), (1000.0, 650.0), (300.0, 650.0)]


def backdrop(size: tuple[int, int] = SIZE) -> Image:
    """A smooth, textured scene (soft shading of large patches): a camera sees more than a uniform grey."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(70, 190, (9, 16)).astype(np.float32)
    return cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)


BACKDROP = backdrop()


def noise(seed: int, size: tuple[int, int] = SIZE) -> Image:
    """The backdrop with sensor noise, as a BGR frame."""
    rng = np.random.default_rng(seed)
    base = BACKDROP if size == SIZE else cv2.resize(BACKDROP, size)
    grey = np.clip(base + rng.normal(0, 4, (size[1], size[0])), 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def draw_person(img: Image, cx: float, foot: float, height: float, shade: int = 40) -> None:
    """A dark standing figure: head, torso, arms and legs, ``height`` pixels tall."""
    u = height / 8
    c = (shade, shade, shade)

    def p(x: float, y: float) -> tuple[int, int]:
        return round(cx + x * u), round(foot - y * u)

    cv2.ellipse(img, p(0, 7.3), (round(0.45 * u), round(0.6 * u)), 0, 0, 360, c, -1)
    cv2.line(img, p(0, 6.6), p(0, 6.4), c, max(1, round(0.35 * u)))
    torso = np.array([p(-1.0, 6.4), p(1.0, 6.4), p(0.8, 3.8), p(-0.8, 3.8)], np.int32)
    cv2.fillPoly(img, [torso], c)
    arm, leg = max(1, round(0.35 * u)), max(1, round(0.45 * u))
    cv2.line(img, p(-1.0, 6.2), p(-1.2, 3.6), c, arm)
    cv2.line(img, p(1.0, 6.2), p(1.2, 3.6), c, arm)
    cv2.line(img, p(-0.4, 3.9), p(-0.6, 0), c, leg)
    cv2.line(img, p(0.4, 3.9), p(0.6, 0), c, leg)


def crowd_zone(person_area: float = 40000.0, height: float | None = 110.0, method: str = "auto") -> ZoneConfig:
    return ZoneConfig(name="gate", polygon=ZONE, crowd=CrowdSettings(
        min_people=3, person_area=person_area, person_height=height, count_method=method,  # type: ignore[arg-type]
        on_after_s=1.0, off_after_s=1.0))


def build_zone(cfg: ZoneConfig, size: tuple[int, int] = SIZE) -> Zone:
    scale = FrameScale.for_height(size[0], size[1], 120)
    return Zone.build(cfg, scale, analysis_mask(scale, []))


class CountingDetector(HogPeopleDetector):
    """Stands in for HOG where only the scheduling is under test: reports one window per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def detect(self, gray: Image) -> list[tuple[int, int, int, int]]:
        self.calls.append(gray.shape[:2])
        return [(0, 0, 64, 128)]


def test_person_height_is_configured_or_estimated_from_area() -> None:
    assert person_height(650.0, 120.0) == 120.0
    assert person_height(4000.0, None) == pytest.approx(100.0)
    assert person_height(650.0, None) < MIN_PERSON_PX  # the shipped 320x240 scenes: too small for HOG


def test_no_hog_counter_without_hog_or_with_small_people(monkeypatch: pytest.MonkeyPatch) -> None:
    zone = build_zone(crowd_zone())
    small = build_zone(crowd_zone(person_area=650.0, height=None))
    off = build_zone(crowd_zone(method="motion"))
    if hog_available():
        counter = PeopleCounter.for_zones([zone, small, off], SIZE, 1.0)
        assert counter is not None and [z.name for z in counter.zones] == ["gate"]
    assert PeopleCounter.for_zones([small, off], SIZE, 1.0) is None
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    assert not hog_available()
    assert PeopleCounter.for_zones([zone], SIZE, 1.0) is None


def test_detector_runs_at_most_once_per_interval_and_only_with_motion() -> None:
    det = CountingDetector()
    counter = PeopleCounter([build_zone(crowd_zone())], SIZE, 1.0, det)
    frame = noise(1)
    ran = [counter.update(i / 5, frame, {"gate"} if i < 20 else set()) for i in range(30)]
    assert [i for i, r in enumerate(ran) if r] == [0, 5, 10, 15]  # 5 fps analysis, 1 s interval
    # The region is scaled so that a 110 px person is about 112 px: full size, heads above the zone included.
    assert det.calls[0] == (650 + 28 - (300 - 121), 1000 + 55 - (300 - 55))
    assert counter.count("gate", 3.0) is None  # no motion since 4 s: nobody to count
    counter.update(10.0, frame, {"gate"})
    assert counter.count("gate", 10.0) is not None and counter.count("gate", 13.0) is None  # stale after 2.5 s


def test_detector_skips_a_zone_whose_people_are_too_small_in_the_given_frame() -> None:
    counter = PeopleCounter([build_zone(crowd_zone())], SIZE, 1.0, CountingDetector())
    half = cv2.resize(noise(2), (640, 360))  # 110 px people are 55 px here
    assert counter.update(0.0, half, {"gate"}) is True
    assert counter.count("gate", 0.0) is None


@needs_hog
def test_hog_finds_nothing_in_noise() -> None:
    assert HogPeopleDetector().detect(cv2.cvtColor(noise(3), cv2.COLOR_BGR2GRAY)) == []


@needs_hog
def test_hog_counts_people_whose_feet_are_in_the_zone() -> None:
    frame = noise(4)
    for cx in (450, 650, 850):
        draw_person(frame, cx, 560, 110)
    draw_person(frame, 1150, 560, 110)  # outside the zone
    counter = PeopleCounter.for_zones([build_zone(crowd_zone())], SIZE, 1.0)
    assert counter is not None and counter.update(0.0, frame, {"gate"})
    got = counter.count("gate", 0.0)
    assert got is not None and got.people == 3
    assert sorted(round(b.x + b.w / 2, -1) for b in got.boxes) == pytest.approx([450, 650, 850], abs=20)


@needs_hog
def test_hog_misses_people_below_its_window() -> None:
    frame = noise(5)
    for cx in (450, 650, 850):
        draw_person(frame, cx, 560, 60)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert HogPeopleDetector().detect(gray) == []


def group_scene(analyzer: CameraAnalyzer, seconds: float = 8.0) -> list[CameraEvent]:
    """Three people standing shoulder to shoulder (one merged motion region) from 1 s, swaying a little."""
    events: list[CameraEvent] = []
    for i in range(round(seconds * 5)):
        t = 1000.0 + i / 5
        frame = noise(100 + i)
        if i >= 5:
            for k in range(3):
                draw_person(frame, 560 + 48 * k + 2 * (i % 2), 560, 110)
        events += analyzer.analyse(t, frame)
    return events


def analyzer_for(zone: ZoneConfig) -> CameraAnalyzer:
    return CameraAnalyzer("cam", CameraSettings(zones=[zone]), SIZE)


@needs_hog
def test_crowd_counted_by_hog_where_motion_sees_one_region() -> None:
    analyzer = analyzer_for(crowd_zone())
    assert analyzer.people is not None
    starts = [e for e in group_scene(analyzer) if e.type == "crowd" and e.state == "start"]
    assert len(starts) == 1
    assert starts[0].data["count_method"] == "hog" and starts[0].data["people"] == 3
    assert analyzer.people.runs <= 8  # once per second of source time at most


def test_crowd_falls_back_to_motion_without_hog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    # The same group, with person_area calibrated so that motion regions can count it.
    analyzer = analyzer_for(crowd_zone(person_area=6500.0))
    assert analyzer.people is None
    events = [e for e in group_scene(analyzer) if e.type == "crowd"]
    assert events and events[0].state == "start" and events[0].data["count_method"] == "motion"


def test_crowd_uses_motion_when_people_are_too_small_for_hog() -> None:
    analyzer = analyzer_for(crowd_zone(person_area=6500.0, height=60.0))
    assert analyzer.people is None
    events = [e for e in group_scene(analyzer) if e.type == "crowd"]
    assert events and events[0].data["count_method"] == "motion"


def test_crowd_with_motion_calibration_too_coarse_stays_silent_without_hog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    analyzer = analyzer_for(crowd_zone())  # person_area far too big: the merged group counts as one
    assert [e for e in group_scene(analyzer) if e.type == "crowd"] == []
