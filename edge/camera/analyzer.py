"""One camera's analytics pipeline: frame in, events out (pure: no I/O, time from the source)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.camera.analytics import (
    CrowdDetector,
    IntrusionDetector,
    LineCrossingDetector,
    LoiteringDetector,
    moving_pixels,
)
from edge.camera.config import CameraSettings, IntrusionSettings, ZoneConfig
from edge.camera.events import CameraEvent, EventSeries
from edge.camera.health import HealthMonitor, VideoLossDetector
from edge.camera.motion import Gray, MotionDetector, MotionResult
from edge.camera.people import PeopleCounter
from edge.camera.tracker import CentroidTracker
from edge.camera.zones import FrameScale, Schedule, Tripwire, Zone, analysis_mask
from edge.runtime.outbox import RESTART_REASON, OpenEvent

Frame = np.ndarray


def downscale_gray(frame: Frame, scale: FrameScale) -> Gray:
    """The analysis picture: grey, downscaled with area averaging (which also averages out noise)."""
    w, h = scale.analysis_size
    if frame.shape[0] > 4 * h:
        # Area averaging from 1080p is slow for non-integer ratios; sampling every few pixels down to
        # four times the target first keeps 16 samples per output pixel at a fraction of the cost.
        frame = cv2.resize(frame, (4 * w, 4 * h), interpolation=cv2.INTER_NEAREST)
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if gray.shape[1] == scale.analysis_size[0] and gray.shape[0] == scale.analysis_size[1]:
        return gray
    return cv2.resize(gray, scale.analysis_size, interpolation=cv2.INTER_AREA)


WHOLE_FRAME_ZONE = "frame"
"""Name of the zone a camera gets when it has neither zones nor lines configured."""


def _zones_or_whole_frame(settings: CameraSettings, source_size: tuple[int, int]) -> list[ZoneConfig]:
    """The configured zones; with none (and no tripwires), the whole frame is one around-the-clock intrusion zone.

    A camera started with nothing but ``--source`` then reports someone walking in, instead of
    only its health; the rules decide when such motion matters (after hours, restricted areas).
    """
    if settings.zones or settings.lines:
        return list(settings.zones)
    w, h = float(source_size[0]), float(source_size[1])
    return [ZoneConfig(name=WHOLE_FRAME_ZONE, polygon=[(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)],
                       intrusion=IntrusionSettings())]


class CameraAnalyzer:
    """Runs motion, tracking, zone analytics and health for one camera on analysed frames."""

    def __init__(self, camera_id: str, settings: CameraSettings, source_size: tuple[int, int]) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self.scale = FrameScale.for_height(source_size[0], source_size[1], settings.analysis_height)
        keep = analysis_mask(self.scale, settings.masks)
        self.zones = [Zone.build(z, self.scale, keep) for z in _zones_or_whole_frame(settings, source_size)]
        self.motion = MotionDetector(settings.motion, self.scale, keep, settings.analysis_fps)
        self.tracker = CentroidTracker(settings.tracker, source_size)
        self.health = HealthMonitor(camera_id, settings.health)
        self.video = VideoLossDetector(camera_id, settings.health.video_loss_after_s)
        self.intrusion = [IntrusionDetector(camera_id, z, z.config.intrusion,
                                            Schedule.build(z.config.intrusion.schedule, settings.timezone), self.scale)
                          for z in self.zones if z.config.intrusion is not None]
        rejoin = 0.1 * math.hypot(*source_size)
        self.loitering = [LoiteringDetector(camera_id, z, z.config.loitering, rejoin)
                          for z in self.zones if z.config.loitering is not None]
        self.crowd = [CrowdDetector(camera_id, z, z.config.crowd, self.scale)
                      for z in self.zones if z.config.crowd is not None]
        self.people = PeopleCounter.for_zones([c.zone for c in self.crowd], source_size, settings.people_interval_s)
        """HOG person counts for crowd zones; None when OpenCV lacks HOG or people are too small."""
        self.lines = [LineCrossingDetector(camera_id, Tripwire(line)) for line in settings.lines]
        self.last_motion: MotionResult | None = None
        self.last_gray: Gray | None = None

    def _zone_series(self) -> list[EventSeries]:
        return ([d.series for d in self.intrusion] + [d.series for d in self.loitering]
                + [d.series for d in self.crowd])

    def analyse(self, t: float, frame: Frame) -> list[CameraEvent]:
        """Analyse one frame taken at epoch time ``t`` (full resolution or already downscaled)."""
        gray = downscale_gray(frame, self.scale)
        self.last_gray = gray
        events: list[CameraEvent] = []
        restored = self.video.frame(t)
        if restored:
            events.append(restored)
        events += self.health.update(t, gray)
        if self.health.faulty:
            # A covered, blurred or turned camera says nothing reliable about its zones.
            events += self._stop_zones(t, "camera fault")
            self.motion.reset()
            self.tracker.clear()
            if self.people is not None:
                self.people.reset()
            self.last_motion = None
            return events
        motion = self.motion.update(gray)
        self.last_motion = motion
        if motion.scene_change:
            self.tracker.clear()
        live = self.tracker.update(t, motion.blobs)
        remembered = self.tracker.all()
        for intrusion in self.intrusion:
            ev = intrusion.update(t, motion)
            if ev:
                events.append(ev)
        for loiter in self.loitering:
            ev = loiter.update(t, remembered)
            if ev:
                events.append(ev)
        if self.people is not None:
            self.people.update(t, frame, {c.zone.name for c in self.crowd if moving_pixels(c.zone, motion)})
        for crowd in self.crowd:
            hog = self.people.count(crowd.zone.name, t) if self.people is not None else None
            ev = crowd.update(t, motion, live, None if hog is None else hog.people)
            if ev:
                events.append(ev)
        for line in self.lines:
            events += line.update(t, live)
        return events

    def tick(self, t: float, reason: str = "no frames") -> list[CameraEvent]:
        """Time passed at ``t`` without a frame; may start video loss (and then closes zone events)."""
        ev = self.video.tick(t, reason)
        if ev is None:
            return []
        self.motion.reset()
        self.tracker.clear()
        if self.people is not None:
            self.people.reset()
        return [ev, *self._stop_zones(t, "video loss")]

    def resume(self, recorded: list[OpenEvent], t: float) -> list[CameraEvent]:
        """Take over events a previous agent process left open; returns the end of each one no series
        here can take (its zone or check is no longer configured), at ``t``."""
        series = {(s.type, s.zone): s for s in (*self._zone_series(), self.health.covered, self.health.defocused,
                                                 self.health.moved, self.video.series)}
        ended = []
        for ev in recorded:
            target = series.get((ev.type, ev.zone))
            if target is not None and not target.active:
                target.resume(ev.event_id, ev.started_at)
            else:
                ended.append(CameraEvent(ev.type, "end", ev.event_id, t, t, ev.started_at, ev.zone,
                                         message=RESTART_REASON, data={"reason": RESTART_REASON}))
        return ended

    def close(self, t: float) -> list[CameraEvent]:
        """End every open event (the agent is stopping or the source ended)."""
        events = self._stop_zones(t, "analysis stopped")
        for series in (self.health.covered, self.health.defocused, self.health.moved, self.video.series):
            ev = series.stop(t, "analysis stopped")
            if ev:
                events.append(ev)
        return events

    def _stop_zones(self, t: float, why: str) -> list[CameraEvent]:
        return [ev for s in self._zone_series() if (ev := s.stop(t, f"ended: {why}")) is not None]
