"""Person counts for crowd zones with OpenCV's HOG people detector, where the build and resolution allow.

Why optional: OpenCV 5 no longer ships ``cv2.HOGDescriptor`` in its main modules, and the detector's
64x128 window holds a person about 96 px tall, so people smaller than that in the frame cannot be
found without inventing pixels. Where it cannot run, crowd counts come from motion regions
(``edge.camera.analytics.CrowdDetector``). HOG costs tens of milliseconds per region, so it runs at
most once per ``people_interval_s`` of source time per camera, only on the regions around crowd
zones that show motion, never on every analysed frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.camera.motion import Box
from edge.camera.zones import Zone

MIN_PERSON_PX = 96.0
"""Smallest person height (frame pixels) the 64x128 detection window finds without upscaling."""
_TARGET_PERSON_PX = 112.0
"""Regions are scaled down so that a typical person is about this tall: bigger costs time, not accuracy."""
_FOOT = 0.85
"""The feet of a detected person lie about this far down the detection window."""
_MIN_SCORE = 0.3
"""SVM margin below which a detection is ignored (keeps texture and noise from counting)."""
_HOLD_INTERVALS = 2.5
"""A count older than this many intervals is stale and the zone falls back to motion."""


def hog_available() -> bool:
    """Whether the installed OpenCV ships the HOG people detector (4.x does, 5.0 does not)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector")


def person_height(person_area: float, configured: float | None) -> float:
    """Typical person height in source pixels: configured, or estimated from the foreground area.

    A standing person's foreground region (with the motion stage's dilation) is about 0.4 times as
    wide as tall, so its area is about 0.4 h^2.
    """
    return configured if configured is not None else math.sqrt(person_area / 0.4)


class HogPeopleDetector:
    """OpenCV's default (Dalal-Triggs) people detector over one image region."""

    def __init__(self) -> None:
        hog: Any = cv2.HOGDescriptor()  # type: ignore[attr-defined,unused-ignore]
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined,unused-ignore]
        self._hog = hog

    def detect(self, gray: npt.NDArray[Any]) -> list[tuple[int, int, int, int]]:
        """Person windows ``(x, y, w, h)`` in ``gray``'s pixels; nothing if it is smaller than one window."""
        if gray.shape[0] < 128 or gray.shape[1] < 64:
            return []
        rects, weights = self._hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return [(int(x), int(y), int(w), int(h)) for (x, y, w, h), s in zip(rects, np.ravel(weights), strict=True)
                if float(s) >= _MIN_SCORE]


@dataclass(frozen=True, slots=True)
class ZoneCount:
    """People the detector found standing in one zone at ``t``."""

    t: float
    people: int
    boxes: tuple[Box, ...]


class PeopleCounter:
    """Rate-limited HOG counts for the crowd zones of one camera whose people are tall enough."""

    def __init__(self, zones: list[Zone], source_size: tuple[int, int], interval_s: float,
                 detector: HogPeopleDetector | None = None) -> None:
        self.source_size = source_size
        self.interval_s = interval_s
        self.zones = zones
        self._detector = detector
        self._last_run: float | None = None
        self._counts: dict[str, ZoneCount] = {}
        self.runs = 0

    @classmethod
    def for_zones(cls, zones: list[Zone], source_size: tuple[int, int], interval_s: float) -> PeopleCounter | None:
        """A counter for the zones where HOG applies at full resolution, or None (no HOG, or people too small)."""
        if not hog_available():
            return None
        eligible = [z for z in zones if z.config.crowd is not None and z.config.crowd.count_method == "auto"
                    and person_height(z.config.crowd.person_area, z.config.crowd.person_height) >= MIN_PERSON_PX]
        return cls(eligible, source_size, interval_s, HogPeopleDetector()) if eligible else None

    def reset(self) -> None:
        """Forget every count (camera fault or video loss: the picture said nothing for a while)."""
        self._counts.clear()

    def count(self, zone: str, t: float) -> ZoneCount | None:
        """The zone's latest HOG count if it is still fresh at ``t``, else None (count by motion)."""
        c = self._counts.get(zone)
        if c is None or t - c.t > _HOLD_INTERVALS * self.interval_s:
            return None
        return c

    def update(self, t: float, frame: npt.NDArray[Any], moving: set[str]) -> bool:
        """Run the detector on this frame if due, for the zones in ``moving``; returns whether it ran.

        ``frame`` is the analysed frame at any size (normally full resolution); a zone whose people
        are smaller than the detection window at that size is left to the motion count. A zone
        without motion has nobody to count: its HOG count is dropped.
        """
        for name in [n for n in self._counts if n not in moving]:
            del self._counts[name]
        if self._detector is None or not any(z.name in moving for z in self.zones):
            return False
        if self._last_run is not None and t - self._last_run < self.interval_s - 1e-6:
            return False
        self._last_run = t
        self.runs += 1
        f = frame.shape[1] / self.source_size[0]
        for zone in self.zones:
            if zone.name not in moving:
                continue
            crowd = zone.config.crowd
            assert crowd is not None
            height = person_height(crowd.person_area, crowd.person_height) * f
            if height < MIN_PERSON_PX:
                self._counts.pop(zone.name, None)
                continue
            self._counts[zone.name] = self._count_zone(t, frame, zone, f, height)
        return True

    def _count_zone(self, t: float, frame: npt.NDArray[Any], zone: Zone, f: float, height: float) -> ZoneCount:
        assert self._detector is not None
        xs = [p[0] * f for p in zone.config.polygon]
        ys = [p[1] * f for p in zone.config.polygon]
        fh, fw = frame.shape[:2]
        # Feet stand in the zone but heads rise above it: the region reaches a person's height higher.
        x0, x1 = max(0, int(min(xs) - height / 2)), min(fw, math.ceil(max(xs) + height / 2))
        y0, y1 = max(0, int(min(ys) - 1.1 * height)), min(fh, math.ceil(max(ys) + 0.25 * height))
        region = frame[y0:y1, x0:x1]
        gray = region if region.ndim == 2 else cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
        s = min(1.0, _TARGET_PERSON_PX / height)
        if s < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * s)), max(1, round(gray.shape[0] * s))),
                              interpolation=cv2.INTER_AREA)
        inv = 1.0 / (s * f)
        boxes = []
        for x, y, w, h in self._detector.detect(gray):
            foot = ((x + w / 2) / s + x0) / f, (y + _FOOT * h) / s / f + y0 / f
            if zone.contains(*foot):
                boxes.append(Box(round(x * inv + x0 / f), round(y * inv + y0 / f), round(w * inv), round(h * inv)))
        return ZoneCount(t, len(boxes), tuple(boxes))
