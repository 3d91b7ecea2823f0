"""Accumulators with resets (driving time) and repeat counting."""

from __future__ import annotations

from typing import Any, Final

from rules.conditions.base import (
    CLEAR,
    FIRE,
    HOLD,
    BuildContext,
    Condition,
    EvalContext,
    RuleError,
    Signal,
    check_keys,
    condition_type,
    parse_duration,
    require_mapping,
)
from rules.conditions.basic import Schedule, parse_schedule
from rules.expr import Expression

_MODES: Final = {"continuous", "rolling"}


class DrivingTimeCondition(Condition):
    """Driving time: continuous (reset by a rest of at least ``rest``) or in a rolling window.

    Each interval between two samples is credited to the state at its start (moving or
    stopped). A gap in the data longer than ``max_gap`` counts as rest: a terminal that
    stops reporting is usually parked with the ignition off.
    """

    type_key = "driving_time"
    stateful = True

    def __init__(self, moving: Expression, mode: str, limit: Expression, rest: float, window: float, max_gap: float,
                 during: Schedule | None, line: int) -> None:
        self.moving = moving
        self.mode = mode
        self.limit = limit
        self.rest = rest
        self.window = window
        self.max_gap = max_gap
        self.during = during
        self.metrics = moving.metrics
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE at the limit; continuous mode CLEARs only after a full rest."""
        st = slots[self.slot]
        moving = self.moving(ctx.metrics, ctx.params, ctx.quality)
        if st is None:
            if moving is None:
                return None
            st = slots[self.slot] = {"t": ctx.ts, "m": bool(moving), "drive": 0.0, "stop": 0.0, "seg": []}
        if ctx.sample and moving is not None and ctx.ts > st["t"]:
            self._advance(st, ctx.ts, bool(moving))
        limit = self.limit(ctx.metrics, ctx.params, ctx.quality)
        if not isinstance(limit, int | float):
            return None
        if self.mode == "continuous":
            drive = st["drive"]
            ctx.computed["driving_h"] = round(drive / 3600.0, 3)
            ctx.computed["rest_min"] = round(st["stop"] / 60.0, 1)
            if drive >= limit:
                return FIRE
            return CLEAR if drive == 0.0 else HOLD
        total = self._rolling_total(st, ctx.ts)
        ctx.computed["driving_h"] = round(total / 3600.0, 3)
        return FIRE if total >= limit else CLEAR

    def _advance(self, st: dict[str, Any], ts: float, moving_now: bool) -> None:
        start = st["t"]
        dt = ts - start
        was_moving = st["m"]
        counts = self.during is None or self.during.active(start)
        if dt > self.max_gap:
            was_moving = False  # a long silence is a rest
        if self.during is not None and not counts:
            st["drive"] = 0.0
            st["stop"] = 0.0
        elif was_moving:
            st["drive"] += dt
            st["stop"] = 0.0
            seg = st["seg"]
            if seg and seg[-1][1] == start:
                seg[-1][1] = ts
            else:
                seg.append([start, ts])
        else:
            st["stop"] += dt
            if st["stop"] >= self.rest:
                st["drive"] = 0.0
        cutoff = ts - self.window
        st["seg"] = [s for s in st["seg"] if s[1] > cutoff]
        st["t"] = ts
        st["m"] = moving_now

    def _rolling_total(self, st: dict[str, Any], ts: float) -> float:
        cutoff = ts - self.window
        return float(sum(max(0.0, end - max(start, cutoff)) for start, end in st["seg"]))


@condition_type("driving_time")
def build_driving_time(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``driving_time: {mode: continuous, limit: 4h, rest: 20min}`` or ``{mode: rolling, window: 24h, limit: 8h}``."""
    spec = require_mapping(spec, line, "driving_time")
    check_keys(spec, {"moving", "mode", "limit", "rest", "window", "max_gap", "during"}, {"limit"}, "driving_time")
    mode = str(spec.get("mode", "continuous"))
    if mode not in _MODES:
        raise RuleError(spec.line_of("mode"), "driving_time.mode must be continuous or rolling")
    limit_raw = spec["limit"]
    if isinstance(limit_raw, str) and limit_raw.strip()[-1:].isalpha() and not limit_raw.strip().isidentifier():
        limit_raw = parse_duration(limit_raw, spec.line_of("limit"), "driving_time.limit")
    limit = bc.expr(limit_raw, spec.line_of("limit"), "driving_time.limit")
    during = parse_schedule(spec["during"], spec.line_of("during"), bc) if "during" in spec else None
    return DrivingTimeCondition(
        moving=bc.expr(spec.get("moving", "speed_kmh > 5"), spec.line_of("moving"), "driving_time.moving"),
        mode=mode, limit=limit,
        rest=parse_duration(spec.get("rest", "20min"), spec.line_of("rest"), "driving_time.rest"),
        window=parse_duration(spec.get("window", "24h"), spec.line_of("window"), "driving_time.window"),
        max_gap=parse_duration(spec.get("max_gap", "10min"), spec.line_of("max_gap"), "driving_time.max_gap"),
        during=during, line=spec.line,
    )


class RepeatCondition(Condition):
    """Fires when its part becomes true ``count`` times within ``within`` (each event counts once)."""

    stateful = True

    type_key = "repeat"

    def __init__(self, part: Condition, count: int, within: float, line: int) -> None:
        self.part = part
        self.count = count
        self.within = within
        self.metrics = part.metrics
        self.any_telemetry = part.any_telemetry
        self.events = part.events
        self.status = part.status
        self.needs_tick = True
        self.line = line

    def children(self) -> list[Condition]:
        """The counted condition."""
        return [self.part]

    def wants_tick(self, slots: list[Any]) -> bool:
        """Occurrences age out of the window with time."""
        st = slots[self.slot]
        return (st is not None and bool(st["at"])) or self.part.wants_tick(slots)

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE while ``count`` occurrences lie inside the window."""
        st = slots[self.slot]
        if st is None:
            st = slots[self.slot] = {"prev": None, "at": []}
        sig = self.part.evaluate(ctx, slots)
        if not ctx.late:
            ev = ctx.event
            is_event = ev is not None and ev.state != "end" and ("*" in self.events or ev.type in self.events)
            if sig == FIRE and (is_event or (st["prev"] != FIRE and ctx.sample)):
                st["at"].append(ctx.ts)
            if sig is not None:
                st["prev"] = sig
        st["at"] = [t for t in st["at"] if t > ctx.ts - self.within]
        ctx.computed["occurrences"] = len(st["at"])
        return FIRE if len(st["at"]) >= self.count else CLEAR


@condition_type("repeat")
def build_repeat(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``repeat: {condition: {event: door_fail_close}, count: 3, within: 1h}``."""
    spec = require_mapping(spec, line, "repeat")
    check_keys(spec, {"condition", "count", "within"}, {"condition", "count", "within"}, "repeat")
    count = spec["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise RuleError(spec.line_of("count"), "repeat.count must be a positive integer")
    part = bc.build(spec["condition"], spec.line_of("condition"))
    return RepeatCondition(part, count, parse_duration(spec["within"], spec.line_of("within"), "repeat.within"),
                           spec.line)
