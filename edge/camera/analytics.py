"""Zone analytics: intrusion, loitering, crowd gathering and line crossing."""

from __future__ import annotations

from dataclasses import replace

import cv2

from edge.camera.config import CrowdSettings, IntrusionSettings, LoiteringSettings
from edge.camera.events import CROWD, INTRUSION, LINE_CROSSING, LOITERING, CameraEvent, EventSeries, event_id_for
from edge.camera.motion import Box, MotionResult
from edge.camera.tracker import Track
from edge.camera.zones import FrameScale, Schedule, Tripwire, Zone


def moving_pixels(zone: Zone, motion: MotionResult) -> int:
    """Moving pixels inside a zone, at analysis size."""
    return int(cv2.countNonZero(cv2.bitwise_and(motion.foreground, zone.mask)))


def boxes_in_zone(zone: Zone, motion: MotionResult, factor: float) -> tuple[Box, ...]:
    """Moving regions that overlap a zone (for the snapshot); ``factor`` maps source to analysis pixels."""
    out = []
    for blob in motion.blobs:
        b = blob.box
        x0, y0 = int(b.x * factor), int(b.y * factor)
        x1, y1 = max(x0 + 1, round((b.x + b.w) * factor)), max(y0 + 1, round((b.y + b.h) * factor))
        if cv2.countNonZero(cv2.bitwise_and(motion.foreground[y0:y1, x0:x1], zone.mask[y0:y1, x0:x1])):
            out.append(b)
    return tuple(out)


class IntrusionDetector:
    """Motion inside a restricted zone while its schedule is armed."""

    def __init__(self, camera_id: str, zone: Zone, settings: IntrusionSettings, schedule: Schedule,
                 scale: FrameScale) -> None:
        self.zone = zone
        self.schedule = schedule
        self._min_px = max(1.0, scale.area_to_analysis(settings.min_area))
        self._factor = scale.factor
        self._factor2 = scale.factor * scale.factor
        self.series = EventSeries(camera_id, INTRUSION, zone.name, settings.on_after_s, settings.off_after_s)

    def update(self, t: float, motion: MotionResult) -> CameraEvent | None:
        """Feed one analysed frame."""
        armed = self.schedule.active(t)
        px = moving_pixels(self.zone, motion) if armed else 0
        intruding = armed and px >= self._min_px
        boxes = boxes_in_zone(self.zone, motion, self._factor) if intruding else ()
        return self.series.update(t, intruding, round(px / self._factor2), boxes,
                                  f"motion in restricted zone {self.zone.name}")


class LoiteringDetector:
    """Something tracked inside the zone for longer than the configured time."""

    def __init__(self, camera_id: str, zone: Zone, settings: LoiteringSettings, rejoin_distance: float,
                 rejoin_s: float = 5.0) -> None:
        self.zone = zone
        self.settings = settings
        self.series = EventSeries(camera_id, LOITERING, zone.name, 0.0, settings.off_after_s)
        self.rejoin_distance = rejoin_distance
        self.rejoin_s = rejoin_s
        self._inside: dict[int, tuple[float, tuple[float, float], float]] = {}
        """Track id -> (entered, last foot, last seen) of tracks in the zone."""
        self._lost: list[tuple[float, tuple[float, float], float]] = []

    def _entry_time(self, t: float, foot: tuple[float, float]) -> float:
        """When a new track entered: a track lost nearby moments ago was probably the same person."""
        best: tuple[float, tuple[float, float], float] | None = None
        for lost in self._lost:
            (x, y), d = lost[1], self.rejoin_distance
            if abs(x - foot[0]) <= d and abs(y - foot[1]) <= d and (best is None or lost[0] < best[0]):
                best = lost
        if best is None:
            return t
        self._lost.remove(best)
        return best[0]

    def update(self, t: float, tracks: list[Track]) -> CameraEvent | None:
        """Feed the tracker's remembered tracks (seen now or within its grace time)."""
        longest = 0.0
        loiterers: list[Box] = []
        onset = t
        alive = {tr.id for tr in tracks}
        for tid in [tid for tid in self._inside if tid not in alive]:
            self._lost.append(self._inside.pop(tid))
        self._lost = [lost for lost in self._lost if t - lost[2] <= self.rejoin_s]
        for track in tracks:
            if track.last_seen == t:
                if self.zone.contains(*track.foot):
                    if self.zone.name not in track.zone_entered:
                        track.zone_entered[self.zone.name] = self._entry_time(t, track.foot)
                    self._inside[track.id] = (track.zone_entered[self.zone.name], track.foot, t)
                else:
                    track.zone_entered.pop(self.zone.name, None)
                    self._inside.pop(track.id, None)
            entered = track.zone_entered.get(self.zone.name)
            if entered is None:
                continue
            dwell = t - entered
            # Only what is seen now keeps the event going; the hold time bridges short gaps.
            if dwell >= self.settings.after_s and track.last_seen == t:
                loiterers.append(track.box)
                onset = min(onset, entered + self.settings.after_s)
            longest = max(longest, dwell)
        # The event starts when the dwell passed the limit, not at the frame that noticed it.
        at = onset if loiterers and not self.series.active else t
        event = self.series.update(at, bool(loiterers), round(longest, 1), tuple(loiterers),
                                   f"loitering in zone {self.zone.name} for {longest:.0f} s")
        return None if event is None else replace(event, detected_at=t)


class CrowdDetector:
    """Zone occupancy (people estimate or covered share) at or above a level for a while."""

    def __init__(self, camera_id: str, zone: Zone, settings: CrowdSettings, scale: FrameScale) -> None:
        self.zone = zone
        self.settings = settings
        self._factor = scale.factor
        self.series = EventSeries(camera_id, CROWD, zone.name, settings.on_after_s, settings.off_after_s)

    def estimate(self, motion: MotionResult, tracks: list[Track], t: float) -> tuple[int, float]:
        """People in the zone by motion regions, and the share of the zone covered by foreground.

        Each moving region standing in the zone counts as one person, or as several when its area
        is a multiple of a person's (people close together merge into one region); the tracker's
        count is a floor.
        """
        px = moving_pixels(self.zone, motion)
        by_area = sum(max(1, round(b.area / self.settings.person_area))
                      for b in motion.blobs if self.zone.contains(*b.box.foot))
        return max(self._tracked(tracks, t), by_area), px / self.zone.area

    def _tracked(self, tracks: list[Track], t: float) -> int:
        return sum(1 for tr in tracks if tr.last_seen == t and self.zone.contains(*tr.foot))

    def update(self, t: float, motion: MotionResult, tracks: list[Track],
               detected: int | None = None) -> CameraEvent | None:
        """Feed one analysed frame; ``detected`` is a fresh HOG person count for the zone, if there is one.

        With a HOG count the people are the detector's, with the tracker's count as a floor (people
        pressed together hide each other from it); without one they are estimated from motion regions.
        """
        people, occupancy = self.estimate(motion, tracks, t)
        method = "motion"
        if detected is not None:
            people, method = max(detected, self._tracked(tracks, t)), "hog"
        s = self.settings
        crowded = (s.min_people is not None and people >= s.min_people) or (
            s.min_occupancy is not None and occupancy >= s.min_occupancy)
        measure = float(people) if s.min_people is not None else round(occupancy, 3)
        boxes = boxes_in_zone(self.zone, motion, self._factor) if crowded else ()
        return self.series.update(t, crowded, measure, boxes, f"crowd in zone {self.zone.name}: about {people}",
                                  {"people": people, "occupancy": round(occupancy, 3), "count_method": method})


class LineCrossingDetector:
    """Tracks whose foot crosses a tripwire, with direction; one instant event per crossing."""

    def __init__(self, camera_id: str, tripwire: Tripwire, cooldown_s: float = 2.0) -> None:
        self.camera_id = camera_id
        self.tripwire = tripwire
        self.cooldown_s = cooldown_s
        self._last: dict[int, float] = {}

    def update(self, t: float, tracks: list[Track]) -> list[CameraEvent]:
        """Feed the tracks updated at ``t``."""
        events = []
        name = self.tripwire.config.name
        for track in tracks:
            if track.last_seen != t or track.previous_foot is None:
                continue
            direction = self.tripwire.crossing(track.previous_foot, track.foot)
            if direction is None or t - self._last.get(track.id, -1e18) < self.cooldown_s:
                continue
            # A track wobbling on the line must not report a crossing back and forth.
            self._last[track.id] = t
            if not self.tripwire.reports(direction):
                continue
            events.append(CameraEvent(
                LINE_CROSSING, "instant", event_id_for(self.camera_id, LINE_CROSSING, name, t), t, t, t, name,
                1.0, (track.box,), f"line {name} crossed {direction}", {"direction": direction, "track": track.id}))
        live = {tr.id for tr in tracks}
        for tid in [tid for tid in self._last if tid not in live]:
            del self._last[tid]
        return events
