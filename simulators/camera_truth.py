"""Ground truth of a synthetic camera scene, and scoring of an agent's events against it.

The truth is derived from the scene script with the scene's own camera config (zones, lines,
schedules, timings), so scenes and expectations cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulators.camera_script import Scene

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_STEP = 0.05
EVENT_TYPES = ("intrusion", "line_crossing", "loitering", "crowd", "camera_covered", "camera_defocused",
               "camera_moved", "video_loss")
_INCIDENT_EVENT = {"cover": "camera_covered", "blind": "camera_covered", "defocus": "camera_defocused",
                   "turn": "camera_moved", "cut": "video_loss"}


@dataclass(frozen=True, slots=True)
class TruthEvent:
    """Something that happens in a scene, in scene seconds (instants have start == end)."""

    type: str
    start: float
    end: float
    zone: str | None = None
    direction: str | None = None


def _inside(poly: list[list[float]], x: float, y: float) -> bool:
    inside = False
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _side(a: list[float], b: list[float], p: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def _armed(windows: list[dict[str, Any]], local: datetime) -> bool:
    minute = local.hour * 60 + local.minute
    day, yesterday = _DAYS[local.weekday()], _DAYS[(local.weekday() - 1) % 7]
    for w in windows:
        start = _hhmm(w.get("start", "00:00"))
        end = _hhmm(w.get("end", "24:00"))
        days = w.get("days", list(_DAYS))
        if start < end and day in days and start <= minute < end:
            return True
        if start >= end and ((day in days and minute >= start) or (yesterday in days and minute < end)):
            return True
    return False


def _hhmm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def _intervals(times: list[float], flags: list[bool], merge_gap: float, min_len: float = 0.0) -> list[list[float]]:
    spans: list[list[float]] = []
    for t, on in zip(times, flags, strict=True):
        if not on:
            continue
        if spans and t - spans[-1][1] <= merge_gap + 1.5 * _STEP:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [s for s in spans if s[1] - s[0] >= min_len]


def ground_truth(scene: Scene) -> list[TruthEvent]:
    """Every event the scene should produce, derived from its script and camera config."""
    times = [i * _STEP for i in range(int(scene.duration_s / _STEP) + 1)]
    feet = {f.id: [f.foot(t) for t in times] for f in scene.figures}
    tz = ZoneInfo(str(scene.camera.get("timezone", "Asia/Shanghai")))
    events: list[TruthEvent] = []
    for zone in scene.camera.get("zones", []):
        poly, name = zone["polygon"], zone["name"]
        inside = {fid: [p is not None and _inside(poly, *p) for p in ps] for fid, ps in feet.items()}
        any_inside = [any(v[i] for v in inside.values()) for i in range(len(times))]
        if (cfg := zone.get("intrusion")) is not None:
            windows = cfg.get("schedule", [{}])
            armed = [_armed(windows, (scene.start_time + timedelta(seconds=t)).astimezone(tz)) for t in times]
            flags = [a and b for a, b in zip(any_inside, armed, strict=True)]
            for s, e in _intervals(times, flags, float(cfg.get("off_after_s", 5.0))):
                events.append(TruthEvent("intrusion", s, e, name))
        if (cfg := zone.get("loitering")) is not None:
            after = float(cfg.get("after_s", 20.0))
            loiter = [False] * len(times)
            for flags in inside.values():
                for s, e in _intervals(times, flags, 0.0):
                    if e - s >= after:
                        for i, t in enumerate(times):
                            if s + after <= t <= e:
                                loiter[i] = True
            for s, e in _intervals(times, loiter, float(cfg.get("off_after_s", 5.0))):
                events.append(TruthEvent("loitering", s, e, name))
        if (cfg := zone.get("crowd")) is not None:
            level = int(cfg.get("min_people", 5))
            counts = [sum(v[i] for v in inside.values()) >= level for i in range(len(times))]
            for s, e in _intervals(times, counts, float(cfg.get("off_after_s", 5.0)),
                                   float(cfg.get("on_after_s", 5.0))):
                events.append(TruthEvent("crowd", s, e, name))
    for line in scene.camera.get("lines", []):
        a, b = line["points"]
        wanted = line.get("direction", "both")
        for ps in feet.values():
            for i in range(1, len(times)):
                p0, p1 = ps[i - 1], ps[i]
                if p0 is None or p1 is None:
                    continue
                # A point exactly on the line counts as the left side, as in the agent.
                s0, s1 = _side(a, b, p0) > 0, _side(a, b, p1) > 0
                if s0 == s1 or (_side(list(p0), list(p1), (a[0], a[1])) > 0) == (
                        _side(list(p0), list(p1), (b[0], b[1])) > 0):
                    continue
                direction = "forward" if s1 else "backward"
                if wanted in ("both", direction):
                    events.append(TruthEvent("line_crossing", times[i], times[i], line["name"], direction))
    for inc in scene.incidents:
        if inc.type in _INCIDENT_EVENT:
            events.append(TruthEvent(_INCIDENT_EVENT[inc.type], inc.start, inc.end))
    return sorted(events, key=lambda e: (e.start, e.type))


def write_truth(scene: Scene, path: str | Path) -> None:
    """Write the ground truth as JSON (scene seconds and the scene's wall-clock start)."""
    doc = {"scene": scene.name, "start_time": scene.start_time.isoformat(), "duration_s": scene.duration_s,
           "quiet": scene.quiet, "events": [asdict(e) for e in ground_truth(scene)]}
    Path(path).write_text(json.dumps(doc, indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------- scoring

@dataclass(frozen=True, slots=True)
class Detection:
    """An agent event reduced to what scoring needs, in scene seconds."""

    type: str
    start: float
    end: float
    zone: str | None = None
    direction: str | None = None


def detections_from_events(events: Iterable[Any], epoch: float, duration_s: float) -> list[Detection]:
    """Pair start/end transitions by event id; ``events`` have type/state/event_id/ts/zone/data.

    ``ts`` may be epoch seconds or an aware datetime; ``epoch`` is the scene's t=0.
    """
    opened: dict[str, tuple[Any, float]] = {}
    out: list[Detection] = []
    for ev in events:
        ts = ev.ts.timestamp() if isinstance(ev.ts, datetime) else float(ev.ts)
        t = ts - epoch
        direction = (ev.data or {}).get("direction")
        if ev.state == "instant":
            out.append(Detection(ev.type, t, t, ev.zone, direction))
        elif ev.state == "start":
            opened[ev.event_id] = (ev, t)
        elif ev.event_id in opened:
            first, start = opened.pop(ev.event_id)
            out.append(Detection(first.type, start, t, first.zone, direction))
    for first, start in opened.values():
        out.append(Detection(first.type, start, duration_s, first.zone, None))
    return [d for d in out if d.start <= duration_s]


@dataclass(frozen=True, slots=True)
class TypeScore:
    """Precision and recall of one event type."""

    truths: int
    detections: int
    true_positives: int
    matched_truths: int

    @property
    def precision(self) -> float:
        """Share of detections that match a true event (1.0 when nothing was detected)."""
        return self.true_positives / self.detections if self.detections else 1.0

    @property
    def recall(self) -> float:
        """Share of true events that were detected (1.0 when nothing happened)."""
        return self.matched_truths / self.truths if self.truths else 1.0


def _matches(t: TruthEvent, d: Detection, before: float, after: float, instant_tol: float) -> bool:
    if t.type != d.type or (t.zone is not None and t.zone != d.zone) or (t.direction and t.direction != d.direction):
        return False
    if t.start == t.end:
        return abs(d.start - t.start) <= instant_tol
    return d.start <= t.end + after and d.end >= t.start - before and d.start >= t.start - before


def score(truth: list[TruthEvent], detections: list[Detection], before: float = 2.0, after: float = 6.0,
          instant_tol: float = 1.5) -> dict[str, TypeScore]:
    """Match detections to truth one to one, per event type.

    A duration event matches when it starts no earlier than ``before`` seconds ahead of the truth
    and overlaps the truth extended by ``after`` seconds (debounce and hold times); an instant
    matches within ``instant_tol`` seconds.
    """
    result = {}
    for kind in EVENT_TYPES:
        ts = [t for t in truth if t.type == kind]
        ds = [d for d in detections if d.type == kind]
        used_t: set[int] = set()
        used_d: set[int] = set()
        for i, t in enumerate(ts):
            for j, d in enumerate(ds):
                if j not in used_d and _matches(t, d, before, after, instant_tol):
                    used_t.add(i)
                    used_d.add(j)
                    break
        # Fragments of a matched event (one incident split in two) are still false positives.
        result[kind] = TypeScore(len(ts), len(ds), len(used_d), len(used_t))
    return result
