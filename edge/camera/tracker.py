"""A simple nearest-neighbour tracker of moving regions (enough for loitering and tripwires)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge.camera.config import TrackerSettings
from edge.camera.motion import Blob, Box


@dataclass(slots=True)
class Track:
    """One moving thing followed across frames."""

    id: int
    box: Box
    first_seen: float
    last_seen: float
    previous_foot: tuple[float, float] | None = None
    hits: int = 1
    zone_entered: dict[str, float] = field(default_factory=dict)
    """Zone name -> time the track's foot entered it."""

    @property
    def foot(self) -> tuple[float, float]:
        """Where the tracked thing stands."""
        return self.box.foot

    def age(self, now: float) -> float:
        """Seconds since the track was first seen."""
        return now - self.first_seen


class CentroidTracker:
    """Greedy nearest-neighbour association of blobs to tracks, gated by distance."""

    def __init__(self, settings: TrackerSettings, frame_size: tuple[int, int]) -> None:
        self.settings = settings
        self._gate = settings.max_distance * math.hypot(*frame_size)
        self._tracks: dict[int, Track] = {}
        self._next_id = 1

    def live(self, now: float) -> list[Track]:
        """Tracks updated by the frame at ``now``."""
        return [t for t in self._tracks.values() if t.last_seen == now]

    def clear(self) -> None:
        """Drop every track (after a scene change)."""
        self._tracks.clear()

    def update(self, now: float, blobs: tuple[Blob, ...]) -> list[Track]:
        """Associate this frame's blobs with tracks; returns the tracks updated now."""
        pairs = []
        for tid, track in self._tracks.items():
            tx, ty = track.box.centre
            for bi, blob in enumerate(blobs):
                bx, by = blob.box.centre
                d = math.hypot(bx - tx, by - ty)
                if d <= self._gate:
                    pairs.append((d, tid, bi))
        pairs.sort()
        used_tracks: set[int] = set()
        used_blobs: set[int] = set()
        for _d, tid, bi in pairs:
            if tid in used_tracks or bi in used_blobs:
                continue
            used_tracks.add(tid)
            used_blobs.add(bi)
            track = self._tracks[tid]
            track.previous_foot = track.foot
            track.box = blobs[bi].box
            track.last_seen = now
            track.hits += 1
        for bi, blob in enumerate(blobs):
            if bi not in used_blobs:
                self._tracks[self._next_id] = Track(self._next_id, blob.box, now, now)
                self._next_id += 1
        for tid in [tid for tid, t in self._tracks.items() if now - t.last_seen > self.settings.max_missed_s]:
            del self._tracks[tid]
        return self.live(now)

    def all(self) -> list[Track]:
        """Every track still remembered, seen now or recently."""
        return list(self._tracks.values())
