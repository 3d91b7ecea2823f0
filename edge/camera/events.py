"""Camera events as the analytics emit them, and the debounce that gives each a clear start and end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edge.camera.motion import Box

EventState = Literal["start", "end", "instant"]

INTRUSION = "intrusion"
LINE_CROSSING = "line_crossing"
LOITERING = "loitering"
CROWD = "crowd"
CAMERA_COVERED = "camera_covered"
CAMERA_DEFOCUSED = "camera_defocused"
CAMERA_MOVED = "camera_moved"
VIDEO_LOSS = "video_loss"
EVENT_TYPES = (INTRUSION, LINE_CROSSING, LOITERING, CROWD, CAMERA_COVERED, CAMERA_DEFOCUSED, CAMERA_MOVED,
               VIDEO_LOSS)
HEALTH_TYPES = frozenset({CAMERA_COVERED, CAMERA_DEFOCUSED, CAMERA_MOVED, VIDEO_LOSS})


@dataclass(frozen=True, slots=True)
class CameraEvent:
    """One transition of a camera event; start and end share ``event_id``."""

    type: str
    state: EventState
    event_id: str
    ts: float
    """Epoch seconds (source time) of this transition: onset for start, clearance for end."""
    detected_at: float
    """Source time at which the analytics decided (``ts`` plus the debounce)."""
    started_at: float
    zone: str | None = None
    measure: float | None = None
    boxes: tuple[Box, ...] = ()
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A debounced condition changed state at ``ts`` (decided at ``decided_at``)."""

    state: Literal["start", "end"]
    ts: float
    decided_at: float
    peak: float | None


class SustainedCondition:
    """Debounce: a condition must hold ``on_after_s`` to start and be clear ``off_after_s`` to end."""

    def __init__(self, on_after_s: float, off_after_s: float) -> None:
        self.on_after_s = on_after_s
        self.off_after_s = off_after_s
        self.active = False
        self.started_at: float | None = None
        self._pending_since: float | None = None
        self._clear_since: float | None = None
        self._peak: float | None = None

    def update(self, t: float, condition: bool, measure: float | None = None) -> Transition | None:
        """Feed the condition observed at ``t``; returns a transition when the state changes."""
        if measure is not None and condition:
            self._peak = measure if self._peak is None else max(self._peak, measure)
        if not self.active:
            if not condition:
                self._pending_since = None
                self._peak = None
                return None
            if self._pending_since is None:
                self._pending_since = t
            if t - self._pending_since >= self.on_after_s:
                self.active = True
                self.started_at = self._pending_since
                self._clear_since = None
                return Transition("start", self._pending_since, t, self._peak)
            return None
        if condition:
            self._clear_since = None
            return None
        if self._clear_since is None:
            self._clear_since = t
        if t - self._clear_since >= self.off_after_s:
            return self.stop(t)
        return None

    def stop(self, t: float) -> Transition | None:
        """End an active condition now (camera fault, shutdown); None if it was not active."""
        if not self.active:
            self._pending_since = None
            return None
        ended = self._clear_since if self._clear_since is not None else t
        peak = self._peak
        self.active = False
        self.started_at = None
        self._pending_since = None
        self._clear_since = None
        self._peak = None
        return Transition("end", ended, t, peak)

    @property
    def peak(self) -> float | None:
        """Largest measure seen while active (or pending)."""
        return self._peak


def event_id_for(camera_id: str, event_type: str, zone: str | None, started_at: float) -> str:
    """Deterministic id: the same video gives the same ids live or replayed."""
    return f"{camera_id}.{event_type}.{zone or '-'}.{round(started_at * 1000)}"


class EventSeries:
    """One debounced event type in one zone (or camera-wide), turned into start/end events."""

    def __init__(self, camera_id: str, event_type: str, zone: str | None, on_after_s: float,
                 off_after_s: float) -> None:
        self.camera_id = camera_id
        self.type = event_type
        self.zone = zone
        self.condition = SustainedCondition(on_after_s, off_after_s)
        self._event_id: str | None = None
        self._started_at = 0.0

    @property
    def active(self) -> bool:
        """Whether an event is open."""
        return self.condition.active

    def update(self, t: float, condition: bool, measure: float | None = None, boxes: tuple[Box, ...] = (),
               message: str = "", data: dict[str, Any] | None = None) -> CameraEvent | None:
        """Feed one observation; returns the start or end event when the state changes."""
        return self._event(self.condition.update(t, condition, measure), measure, boxes, message, data)

    def resume(self, event_id: str, started_at: float) -> None:
        """Take over an event a previous agent process left open: it ends by this series' own off-time."""
        c = self.condition
        c.active, c.started_at = True, started_at
        c._pending_since = c._clear_since = None
        self._event_id, self._started_at = event_id, started_at

    def stop(self, t: float, message: str = "") -> CameraEvent | None:
        """Close an open event now (camera fault or shutdown)."""
        return self._event(self.condition.stop(t), None, (), message, None)

    def _event(self, tr: Transition | None, measure: float | None, boxes: tuple[Box, ...], message: str,
               data: dict[str, Any] | None) -> CameraEvent | None:
        if tr is None:
            return None
        if tr.state == "start":
            self._started_at = tr.ts
            self._event_id = event_id_for(self.camera_id, self.type, self.zone, tr.ts)
        event_id = self._event_id or event_id_for(self.camera_id, self.type, self.zone, tr.ts)
        value = tr.peak if tr.state == "end" or measure is None else max(measure, tr.peak or measure)
        return CameraEvent(self.type, tr.state, event_id, tr.ts, tr.decided_at, self._started_at, self.zone,
                           value, boxes, message, dict(data or {}))
