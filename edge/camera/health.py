"""Camera health: covered or blinded, out of focus, moved or turned away, and video loss.

Every measure is normalised so that slow light changes do not look like faults: sharpness is
Laplacian energy relative to the picture's own contrast, and the scene check is a normalised
correlation with a reference picture of the camera's own view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.camera.config import HealthSettings
from edge.camera.events import (
    CAMERA_COVERED,
    CAMERA_DEFOCUSED,
    CAMERA_MOVED,
    VIDEO_LOSS,
    CameraEvent,
    EventSeries,
)
from edge.camera.motion import Gray

_SIGNATURE_SIZE = (40, 30)
Signature = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class FrameHealth:
    """Measures of one analysed frame."""

    brightness: float
    contrast: float
    sharpness: float
    """Laplacian variance over grey variance: falls when the picture blurs, whatever the light."""
    similarity: float | None
    """Correlation with the reference view (1 same scene, about 0 another scene); None before warm-up."""


def scene_signature(gray: Gray) -> Signature | None:
    """A tiny, blurred, zero-mean unit-variance picture of the view; None for a uniform picture."""
    tiny = cv2.resize(gray, _SIGNATURE_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(tiny, (5, 5), 1.5)
    std = float(small.std())
    if std < 1e-3:
        return None
    return ((small - float(small.mean())) / std).astype(np.float32)


def similarity(a: Signature | None, b: Signature | None) -> float:
    """Normalised cross-correlation of two signatures (0 when either is uniform)."""
    if a is None or b is None:
        return 0.0
    return float(np.mean(a * b))


def measure_frame(gray: Gray) -> tuple[float, float, float]:
    """Brightness, contrast and normalised sharpness of an analysis-size grey frame."""
    mean, std = cv2.meanStdDev(gray)
    contrast = float(std[0][0])
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    _m, lap_std = cv2.meanStdDev(lap)
    sharpness = float(lap_std[0][0]) ** 2 / max(contrast * contrast, 1.0)
    return float(mean[0][0]), contrast, sharpness


class HealthMonitor:
    """Covered / defocused / moved detectors over analysed frames, against the camera's own baseline."""

    def __init__(self, camera_id: str, settings: HealthSettings) -> None:
        self.settings = settings
        on, off = settings.on_after_s, settings.off_after_s
        self.covered = EventSeries(camera_id, CAMERA_COVERED, None, on, off)
        self.defocused = EventSeries(camera_id, CAMERA_DEFOCUSED, None, on, off)
        self.moved = EventSeries(camera_id, CAMERA_MOVED, None, on, off)
        self._first: float | None = None
        self._baseline_sharpness: float | None = None
        self._reference: Signature | None = None
        self.last: FrameHealth | None = None

    @property
    def faulty(self) -> bool:
        """A picture fault is open or pending: zone analytics should not trust the picture."""
        return any(s.active or s.condition._pending_since is not None
                   for s in (self.covered, self.defocused, self.moved))

    @property
    def warm(self) -> bool:
        """Whether the baselines are learnt."""
        return self._reference is not None and self._baseline_sharpness is not None

    def update(self, t: float, gray: Gray) -> list[CameraEvent]:
        """Measure one analysed frame and advance the detectors."""
        s = self.settings
        brightness, contrast, sharpness = measure_frame(gray)
        blank = brightness <= s.dark_level or brightness >= s.bright_level or contrast <= s.uniform_contrast
        signature = None if blank else scene_signature(gray)
        if self._first is None:
            self._first = t
        events: list[CameraEvent] = []
        ev = self.covered.update(t, blank, round(contrast, 2), message="picture dark, blinded or uniform",
                                 data={"brightness": round(brightness, 1), "contrast": round(contrast, 2)})
        if ev:
            events.append(ev)
        sim: float | None = None
        if not blank and not self.covered.active:
            if not self.warm:
                self._learn(t, signature, sharpness)
            else:
                sim = similarity(signature, self._reference)
                events += self._judge(t, sim, sharpness, signature)
        self.last = FrameHealth(brightness, contrast, sharpness, sim)
        return events

    def _learn(self, t: float, signature: Signature | None, sharpness: float) -> None:
        b = self._baseline_sharpness
        self._baseline_sharpness = sharpness if b is None else 0.8 * b + 0.2 * sharpness
        if self._first is not None and t - self._first >= self.settings.warmup_s and signature is not None:
            self._reference = signature

    def _judge(self, t: float, sim: float, sharpness: float, signature: Signature | None) -> list[CameraEvent]:
        s = self.settings
        assert self._baseline_sharpness is not None and self._reference is not None
        events = []
        moved = sim < s.moved_similarity
        ev = self.moved.update(t, moved, round(sim, 3), message="view no longer matches the reference")
        if ev:
            events.append(ev)
        ratio = sharpness / max(self._baseline_sharpness, 1e-6)
        # A moved camera sees another scene with another sharpness: judge focus only on the known view.
        defocused = ratio < s.defocus_ratio and not moved
        ev = self.defocused.update(t, defocused, round(ratio, 3), message="sharpness far below baseline",
                                   data={"baseline": round(self._baseline_sharpness, 4)})
        if ev:
            events.append(ev)
        if not moved and not defocused and not self.moved.active and not self.defocused.active:
            # Follow slow changes of the healthy view (seasons, lighting) so they never become faults.
            self._baseline_sharpness = 0.98 * self._baseline_sharpness + 0.02 * sharpness
            if sim > 0.8 and signature is not None:
                blend = 0.95 * self._reference + 0.05 * signature
                self._reference = ((blend - blend.mean()) / max(float(blend.std()), 1e-6)).astype(np.float32)
        return events


class VideoLossDetector:
    """No frame for ``after_s`` seconds is video loss; the next frame ends it."""

    def __init__(self, camera_id: str, after_s: float) -> None:
        self.after_s = after_s
        self.series = EventSeries(camera_id, VIDEO_LOSS, None, 0.0, 0.0)
        self._last_frame: float | None = None
        self._since: float | None = None

    @property
    def active(self) -> bool:
        """Whether video is lost now."""
        return self.series.active

    def frame(self, t: float) -> CameraEvent | None:
        """A frame arrived at ``t``."""
        self._last_frame = t
        if self.series.active:
            return self.series.update(t, False, message="video restored")
        return None

    def tick(self, t: float, reason: str = "no frames") -> CameraEvent | None:
        """Time passed without frames (call it regularly from the clock of the source)."""
        if self._since is None:
            self._since = t
        last = self._last_frame if self._last_frame is not None else self._since
        if self.series.active or t - last < self.after_s:
            return None
        event = self.series.update(last, True, round(t - last, 1), message=f"video loss: {reason}",
                                   data={"reason": reason})
        return None if event is None else replace(event, detected_at=t)
