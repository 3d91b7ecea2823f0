"""Motion detection on the downscaled frame: selective running-average background.

Why this design: frame differencing against a background that learns only where nothing
moves keeps a person who stops still visible (loitering, crowds), while a per-frame global
offset absorbs slow light drift and the blur + threshold + opening absorb sensor noise.
A change covering most of the frame at once (lights switched, lens covered) is a scene
change, not motion: it is reported as such and the background is relearnt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.camera.config import MotionSettings
from edge.camera.zones import FrameScale, Mask

Gray = npt.NDArray[Any]
_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_SATURATED = np.float32(250.0)
_STILL_LEVEL = 0.3
"""Grey levels a region may change on average beyond the noise and still count as unchanged."""


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned rectangle in source-frame pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def foot(self) -> tuple[float, float]:
        """Bottom-centre: where a person stands, used for zones and tripwires."""
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the box."""
        return (self.x + self.w / 2, self.y + self.h / 2)


@dataclass(frozen=True, slots=True)
class Blob:
    """A connected moving region."""

    box: Box
    area: float
    """Moving pixels in source-frame pixels."""


@dataclass(frozen=True, slots=True)
class MotionResult:
    """What one analysed frame showed."""

    foreground: Mask
    """255 where something moves, at analysis size (masked regions are 0)."""
    blobs: tuple[Blob, ...]
    changed: float
    """Share of the analysed area that differs from the background."""
    scene_change: bool
    """Most of the frame changed at once; blobs are empty and the background was relearnt."""
    light_offset: float
    """Mean grey-level difference from the background removed as light drift."""


class MotionDetector:
    """Background-difference motion detector for one camera."""

    def __init__(self, settings: MotionSettings, scale: FrameScale, keep: Mask, fps: float = 5.0) -> None:
        self.settings = settings
        self._absorb_after = max(1, round(settings.static_absorb_s * fps))
        self._static: list[tuple[tuple[int, int, int, int], int]] = []
        self._previous: npt.NDArray[np.float32] | None = None
        self.scale = scale
        self.keep = keep
        self._keep_px = max(1, int(cv2.countNonZero(keep)))
        self._not_keep = cv2.bitwise_not(keep)
        self._min_area = max(1.0, scale.area_to_analysis(settings.min_blob_area))
        self._background: npt.NDArray[np.float32] | None = None
        w, h = scale.analysis_size
        self._empty: Mask = np.zeros((h, w), dtype=np.uint8)

    def reset(self) -> None:
        """Forget the background (after a camera fault); the next frame becomes the background."""
        self._background = None
        self._previous = None
        self._static = []

    def update(self, gray: Gray) -> MotionResult:
        """Compare one analysis-size grey frame with the background and learn from it."""
        frame = cv2.GaussianBlur(gray, (5, 5), 0).astype(np.float32)
        previous, self._previous = self._previous, frame
        if self._background is None or previous is None:
            self._background = frame
            return MotionResult(self._empty, (), 0.0, False, 0.0)
        # Light drift is mostly a gain (exposure, dusk): scale the background to the frame's level,
        # then remove what remains as an offset.
        gain = (cv2.mean(frame, mask=self.keep)[0] + 1.0) / (cv2.mean(self._background, mask=self.keep)[0] + 1.0)
        # The whole background follows the light, also under people who stand still: otherwise the
        # spot they leave no longer matches and stays "moving" (a ghost).
        self._background *= np.float32(gain)
        # A saturated pixel hides its true level, so no gain model fits it: such pixels simply take
        # the frame's value (nothing can be learnt about motion in a blown-out sky or lamp).
        np.copyto(self._background, frame, where=self._background >= _SATURATED)
        diff = cv2.subtract(frame, self._background)
        offset = float(cv2.mean(diff, mask=self.keep)[0])
        diff = np.abs(diff - np.float32(offset))
        fg = cv2.threshold(diff, self.settings.threshold, 255, cv2.THRESH_BINARY)[1].astype(np.uint8)
        fg[self._not_keep > 0] = 0
        changed = cv2.countNonZero(fg) / self._keep_px
        if changed >= self.settings.global_change:
            self._background = frame
            return MotionResult(self._empty, (), changed, True, offset)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _KERNEL)
        fg = cv2.dilate(fg, _KERNEL, iterations=2)
        # Learn fast where nothing moves, slowly under moving regions; the offset is learnt too.
        cv2.accumulateWeighted(frame, self._background, self.settings.background_alpha, mask=cv2.bitwise_not(fg))
        if self.settings.foreground_alpha > 0:
            cv2.accumulateWeighted(frame, self._background, self.settings.foreground_alpha, mask=fg)
        return MotionResult(fg, self._blobs(fg, frame, previous), changed, False, offset)

    def _blobs(self, fg: Mask, frame: npt.NDArray[np.float32], previous: npt.NDArray[np.float32]) -> tuple[Blob, ...]:
        count, labels, stats, _centroids = cv2.connectedComponentsWithStats(fg, connectivity=8)
        step = cv2.absdiff(frame, previous)
        # How much a pixel changes between frames from noise alone, measured where nothing moves.
        noise_step = cv2.mean(step, mask=cv2.bitwise_and(cv2.bitwise_not(fg), self.keep))[0] if count > 1 else 0.0
        inv = 1.0 / self.scale.factor
        blobs = []
        static: list[tuple[tuple[int, int, int, int], int]] = []
        for i in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < self._min_area:
                continue
            if self._is_static(i, (x, y, w, h), labels, frame, step, noise_step, static):
                continue
            box = Box(round(x * inv), round(y * inv), round(w * inv), round(h * inv))
            blobs.append(Blob(box, area * inv * inv))
        self._static = static
        return tuple(blobs)

    def _is_static(self, label: int, rect: tuple[int, int, int, int], labels: npt.NDArray[Any],
                   frame: npt.NDArray[np.float32], step: npt.NDArray[Any], noise_step: float,
                   static: list[tuple[tuple[int, int, int, int], int]]) -> bool:
        """Absorb a region that has not changed at all for a while: part of the scene, not something moving.

        A parked car, a moved bin or a stale block of a video codec stay exactly the same frame
        after frame; a person, even one standing, keeps shifting, so their region never qualifies.
        """
        x, y, w, h = rect
        inside = labels[y:y + h, x:x + w] == label
        if float(np.mean(step[y:y + h, x:x + w][inside])) > 1.25 * noise_step + _STILL_LEVEL:
            return False
        seen = next((n for r, n in self._static if all(abs(a - b) <= 1 for a, b in zip(r, rect, strict=True))), 0)
        if seen + 1 < self._absorb_after:
            static.append((rect, seen + 1))
            return False
        assert self._background is not None
        region = self._background[y:y + h, x:x + w]
        region[inside] = frame[y:y + h, x:x + w][inside]
        return True
