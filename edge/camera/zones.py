"""Geometry of a camera view: frame scaling, zone and mask rasters, tripwires and schedules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import numpy.typing as npt

from edge.camera.config import LineConfig, Point, TimeWindow, ZoneConfig

Mask = npt.NDArray[Any]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class FrameScale:
    """Maps source-frame pixels to the downscaled analysis frame."""

    source_size: tuple[int, int]
    analysis_size: tuple[int, int]

    @classmethod
    def for_height(cls, source_w: int, source_h: int, analysis_height: int) -> FrameScale:
        """Keep the aspect ratio; never upscale."""
        h = min(analysis_height, source_h)
        w = max(1, round(source_w * h / source_h))
        return cls((source_w, source_h), (w, h))

    @property
    def factor(self) -> float:
        """Analysis pixels per source pixel."""
        return self.analysis_size[1] / self.source_size[1]

    def to_analysis(self, points: list[Point]) -> npt.NDArray[np.int32]:
        """Polygon in analysis pixels, as OpenCV wants it."""
        f = self.factor
        return np.array([[round(x * f), round(y * f)] for x, y in points], dtype=np.int32)

    def area_to_analysis(self, source_area: float) -> float:
        """An area in source pixels expressed in analysis pixels."""
        return source_area * self.factor * self.factor


def polygon_mask(scale: FrameScale, polygon: list[Point]) -> Mask:
    """255 inside the polygon, 0 outside, at analysis size."""
    w, h = scale.analysis_size
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [scale.to_analysis(polygon)], 255)
    return mask


def analysis_mask(scale: FrameScale, masks: list[list[Point]]) -> Mask:
    """255 where motion is analysed; the configured mask polygons are 0 (trees, clocks, roads)."""
    w, h = scale.analysis_size
    keep = np.full((h, w), 255, dtype=np.uint8)
    for polygon in masks:
        cv2.fillPoly(keep, [scale.to_analysis(polygon)], 0)
    return keep


def point_in_polygon(polygon: list[Point], x: float, y: float) -> bool:
    """Inside or on the edge of a polygon in source pixels (even-odd rule)."""
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross_x:
                inside = not inside
            elif x == cross_x:
                return True
    return inside


@dataclass(frozen=True, slots=True)
class Zone:
    """A zone rasterised for analysis."""

    config: ZoneConfig
    mask: Mask
    area: int
    """Pixels of the zone at analysis size."""

    @classmethod
    def build(cls, config: ZoneConfig, scale: FrameScale, keep: Mask) -> Zone:
        """Rasterise a zone; masked-out pixels are not part of it."""
        mask = cv2.bitwise_and(polygon_mask(scale, config.polygon), keep)
        return cls(config, mask, max(1, int(cv2.countNonZero(mask))))

    @property
    def name(self) -> str:
        """The zone's configured name."""
        return self.config.name

    def contains(self, x: float, y: float) -> bool:
        """Whether a source-frame point lies in the zone."""
        return point_in_polygon(self.config.polygon, x, y)


def _side(ax: float, ay: float, bx: float, by: float, px: float, py: float) -> float:
    """Positive when p is on the right-hand side of a->b in image coordinates (y down)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@dataclass(frozen=True, slots=True)
class Tripwire:
    """A directed line segment; reports which way a movement crossed it."""

    config: LineConfig

    def crossing(self, before: Point, after: Point) -> str | None:
        """``forward``/``backward`` if the step before->after crosses the segment, else None."""
        (ax, ay), (bx, by) = self.config.points
        # A point exactly on the line counts as its left side, so touching it is not crossing twice.
        s0 = _side(ax, ay, bx, by, *before) > 0
        s1 = _side(ax, ay, bx, by, *after) > 0
        if s0 == s1:
            return None
        # The movement must also straddle the line's own extent, not just its extension.
        t0 = _side(*before, *after, ax, ay)
        t1 = _side(*before, *after, bx, by)
        if (t0 > 0) == (t1 > 0) and t0 != 0 and t1 != 0:
            return None
        return "forward" if s1 else "backward"

    def reports(self, direction: str) -> bool:
        """Whether this line is configured to report crossings in ``direction``."""
        return self.config.direction in ("both", direction)


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Local-time windows in which an analytic is armed."""

    windows: tuple[tuple[int, int, frozenset[int]], ...]
    tz: ZoneInfo

    @classmethod
    def build(cls, windows: list[TimeWindow], timezone: str) -> Schedule:
        """Compile windows once; days become weekday numbers (Monday 0)."""
        compiled = tuple(
            (_minutes(w.start), _minutes(w.end), frozenset(_DAYS.index(d) for d in w.days)) for w in windows
        )
        return cls(compiled, ZoneInfo(timezone))

    def active(self, t: float) -> bool:
        """Whether epoch time ``t`` falls inside any window (a 22:00-06:00 window belongs to its start day)."""
        local = datetime.fromtimestamp(t, UTC).astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        yesterday = (local - timedelta(days=1)).weekday()
        for start, end, days in self.windows:
            if start < end:
                if day in days and start <= minute < end:
                    return True
            elif (day in days and minute >= start) or (yesterday in days and minute < end):
                return True
        return False
