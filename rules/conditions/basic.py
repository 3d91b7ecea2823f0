"""Instant conditions: expressions, thresholds and ranges, composition, events, status, absence, schedules."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Final
from zoneinfo import ZoneInfo

from broker.calendar import DAY_FILTERS, day_matches
from broker.contracts import DeviceEvent
from rules.conditions.base import (
    CLEAR,
    FIRE,
    HOLD,
    STEADY_NOTHING,
    BuildContext,
    Condition,
    EvalContext,
    RuleError,
    Signal,
    Steady,
    check_keys,
    condition_type,
    parse_duration,
    require_mapping,
)
from rules.expr import Expression
from rules.yamlsrc import LineDict, LineList


class ExpressionCondition(Condition):
    """Holds while a boolean expression over metrics and parameters is true."""

    type_key = "expr"

    def __init__(self, expr: Expression, line: int) -> None:
        self.expr = expr
        self.fn = expr.fn
        self.metrics = expr.metrics
        # An expression over data flags only (flag("a21026") == "M") is judged on every message.
        self.any_telemetry = not expr.metrics and bool(expr.flags)
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE when true, CLEAR when false, None when a value is missing."""
        try:
            result = self.fn(ctx.metrics, ctx.params, ctx.quality)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if result is None:
            return None
        return FIRE if result else CLEAR

    def steady(self) -> Steady | None:
        """A function of the metrics and flags the expression reads."""
        if type(self) is not ExpressionCondition:
            return None  # a subclass may read more
        return Steady(self.expr.reads, self.expr.flags)


@condition_type("expr")
def build_expr(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``expr: "door != 'closed' and speed_mps > 0.3"``."""
    return ExpressionCondition(bc.expr(spec, line, "expr"), line)


class ThresholdCondition(Condition):
    """A value compared to a fire level, with an optional separate clear level (hysteresis)."""

    type_key = "threshold"

    def __init__(self, value: Expression, fire: Expression, clear: Expression | None, line: int,
                 above: bool = True, level: Expression | None = None, clear_level: Expression | None = None) -> None:
        self._metric: str | None = None
        self._above = above
        self._level: Any = level.constant if level is not None else None
        self._clear_level: Any = clear_level.constant if clear_level is not None else None
        plain = len(value.metrics) == 1 and not value.params and value.source.strip() in value.metrics
        if (plain and level is not None and level.is_constant and isinstance(self._level, int | float)
                and (clear_level is None or (clear_level.is_constant and isinstance(self._clear_level, int | float)))):
            self._metric = value.source.strip()
        self.value = value
        self.fire = fire
        self.clear = clear
        self._fire = fire.fn
        self._clear = clear.fn if clear is not None else None
        self.metrics = value.metrics | fire.metrics | (clear.metrics if clear else frozenset())
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE beyond the fire level, CLEAR beyond the clear level, HOLD in between."""
        if self._metric is not None:
            # Fast path for the commonest rule: one metric against constant levels.
            v = ctx.metrics.get(self._metric)
            if v.__class__ is not float and v.__class__ is not int:
                return None
            if (v > self._level) if self._above else (v < self._level):
                return FIRE
            c = self._clear_level
            if c is None:
                return CLEAR
            return CLEAR if ((v < c) if self._above else (v > c)) else HOLD
        m, p, q = ctx.metrics, ctx.params, ctx.quality
        try:
            if self._fire(m, p, q):
                return FIRE
            if self._clear is None:
                return CLEAR
            return CLEAR if self._clear(m, p, q) else HOLD
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None

    def steady(self) -> Steady | None:
        """A function of the metrics and flags its value and levels read."""
        if type(self) is not ThresholdCondition:
            return None
        exprs = [self.value, self.fire, *([self.clear] if self.clear is not None else [])]
        return Steady(frozenset().union(*(e.reads for e in exprs)), frozenset().union(*(e.flags for e in exprs)))


@condition_type("threshold")
def build_threshold(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``threshold: {value: speed_mps, above: rated * 1.15, clear_below: rated * 1.05}``."""
    spec = require_mapping(spec, line, "threshold")
    check_keys(spec, {"value", "above", "below", "clear_below", "clear_above"}, {"value"}, "threshold")
    if ("above" in spec) == ("below" in spec):
        raise RuleError(spec.line, "threshold: give exactly one of 'above' or 'below'")
    value_src = spec["value"]
    bc.expr(value_src, spec.line_of("value"), "threshold.value")
    if "above" in spec:
        level_key, op, clear_key, clear_op = "above", ">", "clear_below", "<"
        if "clear_above" in spec:
            raise RuleError(spec.line_of("clear_above"), "threshold: 'above' pairs with 'clear_below'")
    else:
        level_key, op, clear_key, clear_op = "below", "<", "clear_above", ">"
        if "clear_below" in spec:
            raise RuleError(spec.line_of("clear_below"), "threshold: 'below' pairs with 'clear_above'")
    level = bc.expr(spec[level_key], spec.line_of(level_key), f"threshold.{level_key}")
    fire = bc.expr(f"({value_src}) {op} ({spec[level_key]})", spec.line_of(level_key), f"threshold.{level_key}")
    clear = clear_level = None
    if clear_key in spec:
        clear_level = bc.expr(spec[clear_key], spec.line_of(clear_key), f"threshold.{clear_key}")
        clear = bc.expr(f"({value_src}) {clear_op} ({spec[clear_key]})", spec.line_of(clear_key),
                        f"threshold.{clear_key}")
    return ThresholdCondition(bc.expr(value_src, spec.line_of("value"), "threshold.value"), fire, clear, spec.line,
                              above=op == ">", level=level, clear_level=clear_level)


class RangeCondition(Condition):
    """Fires when a value leaves ``[min, max]``; clears once it is back inside by ``clear_margin``."""

    type_key = "range"

    def __init__(self, outside: Expression, inside: Expression, metrics: frozenset[str], line: int) -> None:
        self.outside = outside
        self.inside = inside
        self.metrics = metrics
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE outside the range, CLEAR well inside, HOLD at the margin."""
        out = self.outside(ctx.metrics, ctx.params, ctx.quality)
        if out is None:
            return None
        if out:
            return FIRE
        inside = self.inside(ctx.metrics, ctx.params, ctx.quality)
        if inside is None:
            return None
        return CLEAR if inside else HOLD

    def steady(self) -> Steady | None:
        """A function of the metrics and flags its bounds read."""
        if type(self) is not RangeCondition:
            return None
        return Steady(self.outside.reads | self.inside.reads, self.outside.flags | self.inside.flags)


@condition_type("range")
def build_range(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``range: {value: a01012.Rtd, min: 80, max: 200, clear_margin: 5}``."""
    spec = require_mapping(spec, line, "range")
    check_keys(spec, {"value", "min", "max", "clear_margin"}, {"value"}, "range")
    if "min" not in spec and "max" not in spec:
        raise RuleError(spec.line, "range: give 'min', 'max' or both")
    v = spec["value"]
    margin = spec.get("clear_margin", 0)
    for key in ("value", "min", "max", "clear_margin"):
        if key in spec:
            bc.expr(spec[key], spec.line_of(key), f"range.{key}")
    outs, ins = [], []
    if "min" in spec:
        outs.append(f"({v}) < ({spec['min']})")
        ins.append(f"({v}) >= ({spec['min']}) + ({margin})")
    if "max" in spec:
        outs.append(f"({v}) > ({spec['max']})")
        ins.append(f"({v}) <= ({spec['max']}) - ({margin})")
    outside = bc.expr(" or ".join(outs), spec.line, "range")
    inside = bc.expr(" and ".join(ins), spec.line, "range")
    return RangeCondition(outside, inside, outside.metrics, spec.line)


class AllCondition(Condition):
    """Holds when every part holds; clears as soon as one part is clear."""

    type_key = "all"

    def __init__(self, parts: list[Condition], line: int) -> None:
        self.parts = parts
        self._evals = tuple(p.evaluate for p in parts)
        """The parts' evaluate methods, bound once (evaluated for every message of every device)."""
        self.line = line
        _inherit_triggers(self, parts)

    def children(self) -> list[Condition]:
        """The parts."""
        return list(self.parts)

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """Min of the parts' signals (unknown if any part is unknown and none is clear)."""
        result: Signal = FIRE
        unknown = False
        for evaluate in self._evals:
            s = evaluate(ctx, slots)
            if s is None:
                unknown = True
            elif s < result:  # type: ignore[operator]
                result = s
        if result == CLEAR:
            return CLEAR
        return None if unknown else result

    def steady(self) -> Steady | None:
        """Steady when every part is."""
        return _steady_parts(self, self.parts, AllCondition)


class AnyCondition(Condition):
    """Holds when one part holds; clears when every known part is clear."""

    type_key = "any"

    def __init__(self, parts: list[Condition], line: int) -> None:
        self.parts = parts
        self._evals = tuple(p.evaluate for p in parts)
        """The parts' evaluate methods, bound once (evaluated for every message of every device)."""
        self.line = line
        _inherit_triggers(self, parts)

    def children(self) -> list[Condition]:
        """The parts."""
        return list(self.parts)

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """Max of the known parts' signals; unknown only when no part is known.

        A part that cannot be judged (its metric never arrives, say) must not keep an alert
        raised by another part from resolving.
        """
        result: Signal = None
        for evaluate in self._evals:
            s = evaluate(ctx, slots)
            if s is not None and (result is None or s > result):
                result = s
        return result

    def steady(self) -> Steady | None:
        """Steady when every part is."""
        return _steady_parts(self, self.parts, AnyCondition)


class NotCondition(Condition):
    """Holds when its part is clear."""

    type_key = "not"

    def __init__(self, part: Condition, line: int) -> None:
        self.part = part
        self.line = line
        _inherit_triggers(self, [part])

    def children(self) -> list[Condition]:
        """The negated part."""
        return [self.part]

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """The negated signal."""
        s = self.part.evaluate(ctx, slots)
        return None if s is None else -s

    def steady(self) -> Steady | None:
        """Steady when its part is."""
        return _steady_parts(self, [self.part], NotCondition)


def _steady_parts(cond: Condition, parts: list[Condition], cls: type[Condition]) -> Steady | None:
    """Steady when every part is (the union of what they read)."""
    if type(cond) is not cls:
        return None
    out = STEADY_NOTHING
    for part in parts:
        s = part.steady()
        if s is None:
            return None
        out = out | s
    return out


def _inherit_triggers(cond: Condition, parts: list[Condition]) -> None:
    cond.metrics = frozenset().union(*(p.metrics for p in parts))
    cond.any_telemetry = any(p.any_telemetry for p in parts)
    cond.events = frozenset().union(*(p.events for p in parts))
    cond.status = any(p.status for p in parts)
    cond.needs_tick = any(p.needs_tick for p in parts)


def _build_parts(spec: Any, line: int, bc: BuildContext, what: str) -> list[Condition]:
    if not isinstance(spec, list) or not spec:
        raise RuleError(line, f"{what}: expected a non-empty list of conditions")
    lines = spec.item_lines if isinstance(spec, LineList) else [line] * len(spec)
    return [bc.build(item, item_line) for item, item_line in zip(spec, lines, strict=True)]


@condition_type("all")
def build_all(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``all: [cond, cond, ...]``."""
    return AllCondition(_build_parts(spec, line, bc, "all"), line)


@condition_type("any")
def build_any(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``any: [cond, cond, ...]``."""
    return AnyCondition(_build_parts(spec, line, bc, "any"), line)


@condition_type("not")
def build_not(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``not: cond``."""
    return NotCondition(bc.build(spec, line), line)


class EventCondition(Condition):
    """A device event passed through: start/end events hold until ended, instant ones for ``resolve_after``."""

    stateful = True

    type_key = "event"

    def __init__(self, types: frozenset[str], zone: str | None, resolve_after: float, line: int,
                 zones: tuple[str, ...] = (), zones_not: tuple[str, ...] = (),
                 min_measure: float | str | None = None) -> None:
        self.events = types
        self.zone = zone
        self.zones = zones or ((zone,) if zone is not None else ())
        """Zone name patterns (``perimeter*``) an event must match; empty: any zone."""
        self.zones_not = zones_not
        """Zone name patterns an event must not match (a perimeter rule's zones left to the perimeter rule)."""
        self.min_measure = min_measure
        """Events whose ``measure`` is below this (a number or a rule parameter) are ignored (crowd size at peaks)."""
        self.resolve_after = resolve_after
        self.needs_tick = True
        self.line = line

    def wants_tick(self, slots: list[Any]) -> bool:
        """Only an instant event waiting to expire changes with time."""
        state = slots[self.slot]
        return state is not None and state["at"] is not None

    def steady(self) -> Steady | None:
        """Without an event its signal follows the open events, which only events move -- unless an
        instant event is waiting to expire (then the message's time decides)."""
        if type(self) is not EventCondition:
            return None
        return Steady(guards=(self._no_expiry,))

    def _no_expiry(self, slots: list[Any]) -> bool:
        # (None: never evaluated, its state not created yet -- let the first evaluation create it)
        state = slots[self.slot]
        return state is not None and state["at"] is None

    def _measure_ok(self, ev: DeviceEvent, ctx: EvalContext) -> bool:
        if self.min_measure is None or ev.state == "end":
            return True  # an end always closes what a start opened
        level = ctx.params.get(self.min_measure) if isinstance(self.min_measure, str) else self.min_measure
        if not isinstance(level, int | float):
            return True  # no level on record: the event passes as it would without the filter
        return ev.measure is not None and ev.measure >= level

    def _zone_ok(self, zone: str | None) -> bool:
        if self.zones and (zone is None or not any(fnmatchcase(zone, p) for p in self.zones)):
            return False
        return not (self.zones_not and zone is not None and any(fnmatchcase(zone, p) for p in self.zones_not))

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE while a matching event is open or an instant one is recent."""
        state = slots[self.slot]
        if state is None:
            state = slots[self.slot] = {"open": [], "at": None}
        ev = ctx.event
        if (ev is not None and not ctx.late and ("*" in self.events or ev.type in self.events)
                and self._zone_ok(ev.zone) and self._measure_ok(ev, ctx)):
            key = ev.event_id or "-"
            kinds = state.setdefault("kinds", {})
            if ev.state == "start":
                # A device has one open event per type and zone (Vigil's edge detectors all work so): a
                # new start means it lost track of an older one (an agent restarted mid-event), and no end
                # will ever close that one; without this the alert stayed open for good.
                kind = f"{ev.type}|{ev.zone or ''}"
                for stale in [k for k, v in kinds.items() if v == kind and k != key]:
                    del kinds[stale]
                    if stale in state["open"]:
                        state["open"].remove(stale)
                if key not in state["open"]:
                    state["open"].append(key)
                kinds[key] = kind
            elif ev.state == "end":
                if ev.event_id is None:
                    state["open"].clear()
                    kinds.clear()
                elif key in state["open"]:
                    state["open"].remove(key)
                    kinds.pop(key, None)
                state["at"] = None
            else:
                state["at"] = ctx.ts
            ctx.computed["event_type"] = ev.type
            if ev.zone is not None:
                ctx.computed["zone"] = ev.zone
            if ev.measure is not None:
                ctx.computed["measure"] = ev.measure
            if ev.message:
                ctx.computed["event_message"] = ev.message
            for k, v in ev.data.items():
                # The device's own details (a JT/T 808 alarm's speed, a camera's track id) as evidence.
                if isinstance(v, str | int | float | bool) and len(ctx.computed) < 64:
                    ctx.computed[f"data.{k}"] = v
        if state["open"]:
            return FIRE
        at = state["at"]
        if at is not None:
            if ctx.ts - at < self.resolve_after:
                return FIRE
            state["at"] = None
        return CLEAR


@condition_type("event")
def build_event(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``event: trapped_passenger`` or ``event: {types: [...], zone: gate, resolve_after: 10min}``.

    ``zones: [perimeter*, wall]`` / ``zone_not: perimeter*`` select events by zone name pattern.
    """
    if isinstance(spec, str):
        return EventCondition(frozenset([spec]), None, 300.0, line)
    spec = require_mapping(spec, line, "event")
    check_keys(spec, {"type", "types", "zone", "zones", "zone_not", "min_measure", "resolve_after"}, set(), "event")
    raw = spec.get("types", spec.get("type"))
    if raw is None:
        raise RuleError(spec.line, "event: give 'type' or 'types'")
    types = [raw] if isinstance(raw, str) else raw
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise RuleError(spec.line, "event: 'types' must be a list of event type names")
    resolve_after = parse_duration(spec.get("resolve_after", "5min"), spec.line_of("resolve_after"),
                                   "event.resolve_after")
    zone = spec.get("zone")
    zones = _patterns(spec.get("zones"), spec.line_of("zones"), "event.zones")
    zones_not = _patterns(spec.get("zone_not"), spec.line_of("zone_not"), "event.zone_not")
    if zone is not None and zones:
        raise RuleError(spec.line_of("zones"), "event: give 'zone' or 'zones', not both")
    min_measure = spec.get("min_measure")
    number = isinstance(min_measure, int | float) and not isinstance(min_measure, bool)
    named = isinstance(min_measure, str) and min_measure in bc.param_names
    if min_measure is not None and not (number or named):
        raise RuleError(spec.line_of("min_measure"), "event.min_measure: expected a number or a parameter name")
    return EventCondition(frozenset(types), str(zone) if zone is not None else None, resolve_after, spec.line,
                          zones=tuple(zones), zones_not=tuple(zones_not), min_measure=min_measure)


def _patterns(raw: Any, line: int, what: str) -> list[str]:
    """Zone name patterns: one string or a list (``*`` and ``?`` as in file names)."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise RuleError(line, f"{what}: expected a zone name pattern or a list of them")
    return [str(p) for p in items]


class StatusCondition(Condition):
    """Follows the device's retained status: ``offline`` holds while the device says it is offline."""

    stateful = True

    type_key = "status"

    def __init__(self, want_offline: bool, line: int) -> None:
        self.want_offline = want_offline
        self.status = True
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE in the watched state, CLEAR otherwise, unknown before the first status."""
        if ctx.status is not None and not ctx.late:
            slots[self.slot] = bool(ctx.status.online)
        online = slots[self.slot]
        if online is None:
            return CLEAR  # a device that never said it is offline is not known to be offline
        return FIRE if (not online) == self.want_offline else CLEAR

    def steady(self) -> Steady | None:
        """Follows the last status message (only status messages move it)."""
        return STEADY_NOTHING if type(self) is StatusCondition else None


@condition_type("status")
def build_status(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``status: offline`` or ``status: online``."""
    if spec not in ("offline", "online"):
        raise RuleError(line, f"status: expected 'offline' or 'online', got {spec!r}")
    return StatusCondition(spec == "offline", line)


class AbsenceCondition(Condition):
    """Deadman: no data (or no value of one metric) for ``after`` seconds of wall time."""

    stateful = True

    type_key = "absence"

    def __init__(self, after: float, metric: str | None, line: int) -> None:
        self.after = after
        self.metric = metric
        self.any_telemetry = metric is None
        self.metrics = frozenset([metric]) if metric else frozenset()
        self.events = frozenset(["*"]) if metric is None else frozenset()
        self.needs_tick = True
        self.line = line

    def wants_tick(self, slots: list[Any]) -> bool:
        """Silence grows with time."""
        return True

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE once silent for ``after`` seconds, CLEAR on data."""
        if self.metric is not None:
            if self.metric in ctx.message_metrics:
                slots[self.slot] = ctx.now_wall
            last = slots[self.slot]
            if last is None:
                last = slots[self.slot] = ctx.last_rx
        else:
            last = ctx.last_rx
        return FIRE if ctx.now_wall - last >= self.after else CLEAR

    def steady(self) -> Steady | None:
        """On the device's silence (no metric): clear while the device was heard within ``after``.

        One metric's absence stamps its slot on every message carrying it: never steady.
        """
        if type(self) is not AbsenceCondition or self.metric is not None:
            return None
        return Steady(heard_within=self.after)

    def value_names(self) -> set[str]:
        """Nothing to report but the silence."""
        return set()


@condition_type("absence")
def build_absence(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``absence: 5min`` or ``absence: {after: 5min, metric: a21026.Rtd}``."""
    if not isinstance(spec, dict):
        return AbsenceCondition(parse_duration(spec, line, "absence"), None, line)
    spec = require_mapping(spec, line, "absence")
    check_keys(spec, {"after", "metric"}, {"after"}, "absence")
    metric = spec.get("metric")
    return AbsenceCondition(parse_duration(spec["after"], spec.line_of("after"), "absence.after"),
                            str(metric) if metric is not None else None, spec.line)


# --------------------------------------------------------------------------- schedules

_WEEKDAYS: Final = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_HHMM: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class Schedule:
    """Local-time windows on chosen weekdays; a window past midnight belongs to the day it starts."""

    def __init__(self, windows: list[tuple[int, int]], weekdays: frozenset[int], tz: ZoneInfo,
                 days: str = "any") -> None:
        self.windows = windows
        self.weekdays = weekdays
        self.tz = tz
        self.days = days
        """Calendar filter (broker/calendar.py): any, workdays, rest_days, school_days, non_school_days."""

    def active(self, ts: float) -> bool:
        """Whether the schedule is on at epoch time ``ts``."""
        local = datetime.fromtimestamp(ts, self.tz)
        minute = local.hour * 60 + local.minute
        wd = local.weekday()
        for start, end in self.windows:
            if start <= end:
                if start <= minute < end and wd in self.weekdays and self._day_ok(local.date()):
                    return True
            elif minute >= start:
                if wd in self.weekdays and self._day_ok(local.date()):
                    return True
            elif minute < end and (wd - 1) % 7 in self.weekdays and self._day_ok(local.date() - timedelta(days=1)):
                return True
        return False

    def _day_ok(self, day: date) -> bool:
        # Statutory holidays and make-up working days decide, not the weekday alone.
        return self.days == "any" or day_matches(self.days, day)


def parse_schedule(spec: Any, line: int, bc: BuildContext) -> Schedule:
    """``{between: "02:00-05:00", weekdays: [mon, tue], tz: Asia/Shanghai}`` or a named schedule."""
    if isinstance(spec, str) and spec in bc.schedules:
        spec = bc.schedules[spec]
    elif isinstance(spec, str) and _HHMM.match(spec):
        spec = {"between": spec}
    elif isinstance(spec, str):
        known = ", ".join(sorted(bc.schedules)) or "none"
        raise RuleError(line, f"schedule: unknown schedule {spec!r} (named schedules: {known})")
    spec = require_mapping(spec, line, "schedule")
    check_keys(spec, {"between", "weekdays", "tz", "days"}, {"between"}, "schedule")
    raw = spec["between"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise RuleError(spec.line_of("between"), "schedule.between: expected 'HH:MM-HH:MM' or a list of them")
    windows = []
    for item in items:
        m = _HHMM.match(str(item))
        if m is None:
            raise RuleError(spec.line_of("between"), f"schedule.between: bad window {item!r} (use HH:MM-HH:MM)")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
            raise RuleError(spec.line_of("between"), f"schedule.between: bad time in {item!r}")
        windows.append((h1 * 60 + m1, h2 * 60 + m2))
    days = spec.get("weekdays", list(_WEEKDAYS))
    if not isinstance(days, list) or not days:
        raise RuleError(spec.line_of("weekdays"), "schedule.weekdays: expected a list like [mon, tue]")
    weekdays = set()
    for d in days:
        key = str(d).lower()[:3]
        if key not in _WEEKDAYS:
            raise RuleError(spec.line_of("weekdays"), f"schedule.weekdays: unknown day {d!r}")
        weekdays.add(_WEEKDAYS[key])
    tz = bc.tz(spec.get("tz", bc.timezone), spec.line_of("tz"))
    day_filter = str(spec.get("days", "any"))
    if day_filter not in DAY_FILTERS:
        raise RuleError(spec.line_of("days"), f"schedule.days: unknown value {day_filter!r} "
                                              f"(known: {', '.join(DAY_FILTERS)})")
    return Schedule(windows, frozenset(weekdays), tz, day_filter)


class ScheduleCondition(Condition):
    """Holds inside the schedule's local-time windows (judged on the data's device time)."""

    type_key = "schedule"

    def __init__(self, schedule: Schedule, line: int) -> None:
        self.schedule = schedule
        self.line = line

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE inside the schedule, CLEAR outside."""
        return FIRE if self.schedule.active(ctx.ts) else CLEAR


@condition_type("schedule")
def build_schedule(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``schedule: night`` or ``schedule: {between: "02:00-05:00", weekdays: [...]}``."""
    return ScheduleCondition(parse_schedule(spec, line, bc), line)


__all__ = ["HOLD", "LineDict", "Schedule", "parse_schedule"]
