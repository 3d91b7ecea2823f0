"""Sliding-window conditions per device: aggregates, rate of change, trend, flatline and data quality.

Windows are measured in device time and end at the newest sample: ``(newest - over, newest]``.
A late sample (older than the newest) is inserted in order if it still falls inside the
window and dropped otherwise; a sample with the same timestamp as one already held
replaces it (a redelivered message is not counted twice).
"""

from __future__ import annotations

import bisect
import itertools
import math
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
from rules.expr import Expression
from rules.yamlsrc import LineDict

_FUNCTIONS: Final = {"avg", "mean", "min", "max", "sum", "count", "rate", "delta", "change", "stddev", "last",
                     "first"}


class Samples:
    """A window's samples: parallel sorted lists of timestamps and values."""

    __slots__ = ("first_ts", "ts", "values")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.values: list[Any] = []
        self.first_ts: float | None = None
        """Device time of the first sample ever seen (windows are judged only once full, when asked)."""

    def add(self, ts: float, value: Any, over: float) -> bool:
        """Insert a sample and evict old ones; False when it was too old to keep."""
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        tss = self.ts
        if not tss or ts > tss[-1]:
            tss.append(ts)
            self.values.append(value)
        else:
            if ts <= tss[-1] - over:
                return False
            i = bisect.bisect_left(tss, ts)
            if i < len(tss) and tss[i] == ts:
                self.values[i] = value
            else:
                tss.insert(i, ts)
                self.values.insert(i, value)
        cutoff = tss[-1] - over
        if tss[0] <= cutoff:
            k = bisect.bisect_right(tss, cutoff)
            del tss[:k]
            del self.values[:k]
        return True

    def evict(self, cutoff: float) -> None:
        """Drop samples at or before ``cutoff`` (the device's time has moved on)."""
        tss = self.ts
        if tss and tss[0] <= cutoff:
            k = bisect.bisect_right(tss, cutoff)
            del tss[:k]
            del self.values[:k]

    def full(self, over: float) -> bool:
        """Whether the device has been observed for at least one whole window."""
        return bool(self.ts) and self.first_ts is not None and self.ts[-1] - self.first_ts >= over * 0.999

    def dump(self) -> dict[str, Any]:
        """JSON form."""
        return {"t": self.ts, "v": self.values, "f": self.first_ts}

    @classmethod
    def load(cls, raw: dict[str, Any]) -> Samples:
        """Inverse of ``dump``."""
        s = cls()
        s.ts = [float(t) for t in raw.get("t", [])]
        s.values = list(raw.get("v", []))
        s.first_ts = raw.get("f")
        return s


def coverage_s(ts: list[float], default_interval: float = 60.0) -> float:
    """Time the samples stand for: their number times their typical (median) interval.

    HJ 212 minute records come every 1 or 10 minutes (the logger's setting): 45 one-minute records
    and 5 ten-minute records both cover about 45 minutes, and a missing record leaves a hole.
    """
    gaps = sorted(b - a for a, b in itertools.pairwise(ts) if b > a)
    interval = gaps[len(gaps) // 2] if gaps else default_interval
    return len(ts) * interval


def aggregate(fn: str, ts: list[float], values: list[Any], per: float = 1.0) -> float | None:
    """One aggregate of a window (None when it cannot be computed)."""
    n = len(values)
    if fn == "count":
        return float(n)
    if n == 0:
        return None
    if fn in ("avg", "mean"):
        return float(sum(values)) / n
    if fn == "sum":
        return float(sum(values))
    if fn == "min":
        return float(min(values))
    if fn == "max":
        return float(max(values))
    if fn == "last":
        return float(values[-1])
    if fn == "first":
        return float(values[0])
    if fn == "delta":
        return float(values[-1] - values[0])
    if fn == "change":
        # Relative change first -> last (0.2 = rose by 20 %); unknown from a zero start.
        return float(values[-1] - values[0]) / abs(values[0]) if values[0] else None
    if fn == "rate":
        if n < 2 or ts[-1] <= ts[0]:
            return None
        return float(values[-1] - values[0]) / (ts[-1] - ts[0]) * per
    if fn == "stddev":
        mean = float(sum(values)) / n
        return math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if fn.startswith("p"):
        q = float(fn[1:]) / 100.0
        ordered = sorted(values)
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    raise ValueError(f"unknown window function {fn!r}")


class _Windowed(Condition):
    """Shared sampling: which messages add a sample, and with what value."""

    stateful = True

    value: Expression
    over: float
    where: Expression | None
    valid_flags: frozenset[str] | None
    flag_code: str | None

    def _sample(self, ctx: EvalContext, slots: list[Any]) -> Samples:
        samples: Samples | None = slots[self.slot]
        if samples is None:
            samples = slots[self.slot] = Samples()
        if (ctx.sample or ctx.late) and not self.metrics.isdisjoint(ctx.message_metrics):
            if self.where is not None and not self.where(ctx.metrics, ctx.params, ctx.quality):
                return samples
            if self.valid_flags is not None and self.flag_code is not None:
                flag = ctx.quality.get(self.flag_code, "N")
                if flag not in self.valid_flags:
                    return samples
            v = self.value(ctx.metrics, ctx.params, ctx.quality)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                samples.add(ctx.data_ts, v, self.over)
        if ctx.sample:
            # The window ends at the device's current time, not at its newest kept sample.
            samples.evict(ctx.data_ts - self.over)
        return samples

    def dump(self, state: Any) -> Any:
        """JSON form of the samples."""
        return state.dump() if isinstance(state, Samples) else state

    def load(self, raw: Any) -> Any:
        """Samples from JSON."""
        return Samples.load(raw) if isinstance(raw, dict) else raw


def _levels(spec: LineDict, bc: BuildContext, what: str) -> tuple[str, Expression, Expression | None]:
    if ("above" in spec) == ("below" in spec):
        raise RuleError(spec.line, f"{what}: give exactly one of 'above' or 'below'")
    if "above" in spec:
        if "clear_above" in spec:
            raise RuleError(spec.line_of("clear_above"), f"{what}: 'above' pairs with 'clear_below'")
        level = bc.expr(spec["above"], spec.line_of("above"), f"{what}.above")
        clear = bc.expr(spec["clear_below"], spec.line_of("clear_below"), f"{what}.clear_below") \
            if "clear_below" in spec else None
        return ">", level, clear
    if "clear_below" in spec:
        raise RuleError(spec.line_of("clear_below"), f"{what}: 'below' pairs with 'clear_above'")
    level = bc.expr(spec["below"], spec.line_of("below"), f"{what}.below")
    clear = bc.expr(spec["clear_above"], spec.line_of("clear_above"), f"{what}.clear_above") \
        if "clear_above" in spec else None
    return "<", level, clear


def _compare(x: float, op: str, level: Any, clear: Any) -> Signal:
    if not isinstance(level, int | float):
        return None
    if (x > level) if op == ">" else (x < level):
        return FIRE
    if clear is None:
        return CLEAR
    if not isinstance(clear, int | float):
        return None
    return CLEAR if ((x < clear) if op == ">" else (x > clear)) else HOLD


def _flag_code(value: Expression, spec: LineDict) -> str | None:
    if "flag_code" in spec:
        return str(spec["flag_code"])
    if len(value.metrics) == 1:
        return next(iter(value.metrics)).split(".", 1)[0]
    return None


class WindowCondition(_Windowed):
    """An aggregate of a metric over a sliding window compared to a level."""

    type_key = "window"

    def __init__(self, spec: LineDict, bc: BuildContext, fn: str) -> None:
        self.line = spec.line
        self.value = bc.expr(spec["value"], spec.line_of("value"), "window.value")
        self.metrics = self.value.metrics
        self.over = parse_duration(spec["over"], spec.line_of("over"), "window.over")
        if self.over <= 0:
            raise RuleError(spec.line_of("over"), "window.over must be positive")
        self.fn = fn
        self.per = parse_duration(spec.get("per", "1s"), spec.line_of("per"), "window.per")
        self.min_samples = int(spec.get("min_samples", 2 if fn == "rate" else 1))
        self.require_full = bool(spec.get("full", False))
        self.min_coverage = parse_duration(spec.get("min_coverage", 0), spec.line_of("min_coverage"),
                                           "window.min_coverage")
        self.where = bc.expr(spec["where"], spec.line_of("where"), "window.where") if "where" in spec else None
        flags = spec.get("valid_flags")
        self.valid_flags = frozenset(str(f) for f in flags) if flags is not None else None
        self.flag_code = _flag_code(self.value, spec)
        self.op, self.level, self.clear = _levels(spec, bc, "window")
        self.name = str(spec.get("as", f"{fn}_{'_'.join(sorted(self.value.metrics)) or 'value'}"))

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """Compare the window's aggregate to the level."""
        samples = self._sample(ctx, slots)
        if self.fn != "count" and len(samples.values) < self.min_samples:
            return None
        if self.require_full and not samples.full(self.over):
            return None
        if self.min_coverage and coverage_s(samples.ts) < self.min_coverage:
            return None
        x = aggregate(self.fn, samples.ts, samples.values, self.per)
        if x is None:
            return None
        ctx.computed[self.name] = x
        p, m, q = ctx.params, ctx.metrics, ctx.quality
        return _compare(x, self.op, self.level(m, p, q), self.clear(m, p, q) if self.clear is not None else None)


_WINDOW_KEYS: Final = {"value", "over", "fn", "per", "min_samples", "min_coverage", "full", "where", "valid_flags",
                       "flag_code", "above", "below", "clear_below", "clear_above", "as"}


@condition_type("window")
def build_window(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``window: {value: a21026.ZsAvg, fn: avg, over: 1h, above: limit, valid_flags: [N], min_samples: 45}``."""
    spec = require_mapping(spec, line, "window")
    check_keys(spec, _WINDOW_KEYS, {"value", "over", "fn"}, "window")
    fn = str(spec["fn"])
    if fn not in _FUNCTIONS and not (fn.startswith("p") and fn[1:].replace(".", "", 1).isdigit()
                                     and 0 <= float(fn[1:]) <= 100):
        raise RuleError(spec.line_of("fn"), f"window.fn: unknown function {fn!r} "
                                             f"(known: {', '.join(sorted(_FUNCTIONS))}, p50, p95, p99 ...)")
    return WindowCondition(spec, bc, fn)


@condition_type("rate")
def build_rate(spec: Any, line: int, bc: BuildContext) -> Condition:
    """Rate of change: ``rate: {value: a21026.Rtd, over: 10min, per: 1h, above: 20}``."""
    spec = require_mapping(spec, line, "rate")
    check_keys(spec, _WINDOW_KEYS - {"fn"}, {"value", "over"}, "rate")
    return WindowCondition(spec, bc, "rate")


class TrendCondition(_Windowed):
    """Early warning: the least-squares line over the window reaches the limit within ``within``."""

    type_key = "trend"

    def __init__(self, spec: LineDict, bc: BuildContext) -> None:
        self.line = spec.line
        self.value = bc.expr(spec["value"], spec.line_of("value"), "trend.value")
        self.metrics = self.value.metrics
        self.over = parse_duration(spec["over"], spec.line_of("over"), "trend.over")
        self.within = parse_duration(spec["within"], spec.line_of("within"), "trend.within")
        self.limit = bc.expr(spec["limit"], spec.line_of("limit"), "trend.limit")
        self.rising = str(spec.get("direction", "rising")) == "rising"
        if str(spec.get("direction", "rising")) not in ("rising", "falling"):
            raise RuleError(spec.line_of("direction"), "trend.direction must be rising or falling")
        self.min_samples = int(spec.get("min_samples", 5))
        self.min_r2 = float(spec.get("min_r2", 0.0))
        """Least fit quality (R²) for a warning: noise around a flat level fits a line badly."""
        self.where = bc.expr(spec["where"], spec.line_of("where"), "trend.where") if "where" in spec else None
        flags = spec.get("valid_flags")
        self.valid_flags = frozenset(str(f) for f in flags) if flags is not None else None
        self.flag_code = _flag_code(self.value, spec)
        self.name = str(spec.get("as", "trend"))

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE when the fitted line crosses the limit within the horizon while moving towards it."""
        s = self._sample(ctx, slots)
        n = len(s.values)
        if n < self.min_samples:
            return None
        limit = self.limit(ctx.metrics, ctx.params, ctx.quality)
        if not isinstance(limit, int | float):
            return None
        t0 = s.ts[0]
        xs = [t - t0 for t in s.ts]
        mx = sum(xs) / n
        my = sum(s.values) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx <= 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, s.values, strict=True)) / sxx
        now_fit = my + slope * (xs[-1] - mx)
        projected = now_fit + slope * self.within
        ctx.computed[f"{self.name}_slope_per_h"] = slope * 3600.0
        ctx.computed[f"{self.name}_projected"] = projected
        towards = slope > 0 if self.rising else slope < 0
        reaches = projected >= limit if self.rising else projected <= limit
        if self.min_r2 > 0 and towards and reaches:
            syy = sum((y - my) ** 2 for y in s.values)
            r2 = (slope * slope * sxx / syy) if syy > 0 else 1.0
            ctx.computed[f"{self.name}_r2"] = r2
            reaches = r2 >= self.min_r2
        last = s.values[-1]
        crossed = last >= limit if self.rising else last <= limit
        if crossed:
            return CLEAR  # an early warning ends once the limit is crossed; limit rules take over
        if towards and reaches:
            if slope != 0:
                ctx.computed[f"{self.name}_eta_min"] = max(0.0, (limit - now_fit) / slope / 60.0)
            return FIRE
        return CLEAR


@condition_type("trend")
def build_trend(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``trend: {value: a21026.ZsRtd, over: 30min, limit: limit, within: 1h}``."""
    spec = require_mapping(spec, line, "trend")
    check_keys(spec, {"value", "over", "within", "limit", "direction", "min_samples", "min_r2", "where",
                      "valid_flags", "flag_code", "as"}, {"value", "over", "within", "limit"}, "trend")
    return TrendCondition(spec, bc)


class FlatlineCondition(_Windowed):
    """A value that does not change over a whole window (a classic sign of tampered data).

    Flat means a spread within ``tolerance``, or, with a minimum variance model, a standard
    deviation below ``max(min_stddev, min_cv * |mean|)`` (genuine analyser readings always
    carry some noise). Only samples with a flag in ``valid_flags`` count, so maintenance or
    calibration runs are not taken for flat data, and a window whose mean is at or below
    ``ignore_below`` is never flat (a gas-fired unit legitimately reports 0.0 SO2 for hours).
    """

    type_key = "flatline"

    def __init__(self, spec: LineDict, bc: BuildContext) -> None:
        self.line = spec.line
        self.value = bc.expr(spec["value"], spec.line_of("value"), "flatline.value")
        self.metrics = self.value.metrics
        self.over = parse_duration(spec["over"], spec.line_of("over"), "flatline.over")
        self.tolerance = float(spec.get("tolerance", 0.0))
        self.min_stddev = float(spec["min_stddev"]) if "min_stddev" in spec else None
        self.min_cv = float(spec["min_cv"]) if "min_cv" in spec else None
        self.ignore_below = float(spec["ignore_below"]) if "ignore_below" in spec else None
        self.min_samples = int(spec.get("min_samples", 5))
        self.where = bc.expr(spec["where"], spec.line_of("where"), "flatline.where") if "where" in spec else None
        flags = spec.get("valid_flags")
        self.valid_flags = frozenset(str(f) for f in flags) if flags is not None else None
        self.flag_code = _flag_code(self.value, spec)

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE when a full window varies too little; CLEAR once it moves (or sits at zero)."""
        s = self._sample(ctx, slots)
        n = len(s.values)
        if n < self.min_samples:
            return None
        spread = max(s.values) - min(s.values)
        ctx.computed["flatline_spread"] = spread
        mean = sum(s.values) / n
        if self.ignore_below is not None and mean <= self.ignore_below:
            return CLEAR
        if self.min_stddev is not None or self.min_cv is not None:
            stddev = math.sqrt(sum((v - mean) ** 2 for v in s.values) / n)
            floor = max(self.min_stddev or 0.0, (self.min_cv or 0.0) * abs(mean))
            ctx.computed["flatline_stddev"] = stddev
            if stddev > floor:
                return CLEAR
        elif spread > self.tolerance:
            return CLEAR
        # Only a window the device has covered end to end counts as flat.
        if s.ts[-1] - s.ts[0] < self.over * 0.9:
            return None
        return FIRE


@condition_type("flatline")
def build_flatline(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``flatline: {value: a21026.Rtd, over: 30min, tolerance: 0.0, min_samples: 10}``."""
    spec = require_mapping(spec, line, "flatline")
    check_keys(spec, {"value", "over", "tolerance", "min_samples", "where", "valid_flags", "flag_code",
                      "min_stddev", "min_cv", "ignore_below"}, {"value", "over"}, "flatline")
    return FlatlineCondition(spec, bc)


class QualityCondition(_Windowed):
    """Data quality: too few valid samples (HJ 212 flag in ``valid_flags``) in the window."""

    type_key = "quality"

    def __init__(self, spec: LineDict, bc: BuildContext) -> None:
        self.line = spec.line
        metric = str(spec["metric"])
        self.metrics = frozenset([metric])
        self.code = str(spec.get("code", metric.split(".", 1)[0]))
        self.over = parse_duration(spec["over"], spec.line_of("over"), "quality.over")
        self.valid = frozenset(str(f) for f in spec.get("valid_flags", ["N"]))
        self.min_fraction = spec.get("min_valid_fraction")
        self.min_count = spec.get("min_valid_count")
        if self.min_fraction is None and self.min_count is None:
            raise RuleError(spec.line, "quality: give min_valid_fraction or min_valid_count")
        self.where = bc.expr(spec["where"], spec.line_of("where"), "quality.where") if "where" in spec else None
        self.valid_flags = None
        self.flag_code = None
        self.value = bc.expr(f"1 if flag({self.code!r}) in {tuple(sorted(self.valid))!r} else 0", spec.line,
                             "quality")
        self.name = str(spec.get("as", f"valid_{self.code}"))
        self.minutes = str(spec.get("count", "samples")) == "minutes"
        """Count valid *minutes*: each valid record stands for the records' typical interval (1-minute or
        10-minute HJ 212 minute data alike), so ``min_valid_count: 45`` means HJ 75's 45 valid minutes."""
        if str(spec.get("count", "samples")) not in ("samples", "minutes"):
            raise RuleError(spec.line_of("count"), "quality.count must be samples or minutes")

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE when a full window holds too few valid samples."""
        if (ctx.sample or ctx.late) and self.code not in ctx.quality and not self.metrics.isdisjoint(
                ctx.message_metrics):
            # No flag at all means normal data (HJ 212 loggers omit N flags).
            ctx.quality = {**ctx.quality, self.code: "N"}
        s = self._sample(ctx, slots)
        if not s.full(self.over):
            return None
        valid = sum(s.values)
        if self.minutes and valid:
            valid = round(valid * max(coverage_s(s.ts) / len(s.ts), 60.0) / 60.0)
        ctx.computed[self.name] = valid
        ctx.computed[f"{self.name}_fraction"] = valid / len(s.values) if s.values else 0.0
        bad = (self.min_count is not None and valid < self.min_count) or (
            self.min_fraction is not None and s.values and valid / len(s.values) < self.min_fraction)
        return FIRE if bad else CLEAR


@condition_type("quality")
def build_quality(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``quality: {metric: a21026.Avg, over: 1h, min_valid_count: 45, valid_flags: [N]}``."""
    spec = require_mapping(spec, line, "quality")
    check_keys(spec, {"metric", "code", "over", "valid_flags", "min_valid_fraction", "min_valid_count", "where",
                      "count", "as"}, {"metric", "over"}, "quality")
    return QualityCondition(spec, bc)
