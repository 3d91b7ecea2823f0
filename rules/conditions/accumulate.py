"""Accumulators with resets (driving time, per driver, through data gaps and late uploads) and repeat counting."""

from __future__ import annotations

import bisect
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
from rules.conditions.geo import haversine_m
from rules.expr import Expression

_MODES: Final = {"continuous", "rolling"}


class DrivingTimeCondition(Condition):
    """Driving time: continuous (reset by a rest of at least ``rest``) or in a rolling window.

    Each interval between two samples is credited to the state at its start (moving or not,
    inside ``during`` or not). A data gap longer than ``max_gap`` is a rest unless the fixes on
    both sides show the vehicle moved in between (farther than ``gap_km``, or faster than
    ``gap_kmh`` on average): switching the terminal off does not stop the clock. Late samples
    (blind-area uploads, 0x0704 type 1) are inserted in their own time order. With ``per`` (a
    metric such as ``driver_id``) each driver has a clock of their own: a relay driver starts
    afresh, the first driver's time stays theirs (the time they were away counts as their rest);
    a report without a driver keeps the current one (signing out does not reset anything), and
    the first driver to sign in takes over the time driven before anyone signed in.

    State per driver: *runs* of samples in one state (``[start, end, moving, during, lat0, lon0,
    lat1, lon1, fresh]``, kept for ``min(window, 24 h)`` to place late samples), the continuous
    accumulators, and driving seconds per time bucket with their running sum (rolling mode), so
    an in-order sample costs O(1) however long the window; a late sample recomputes from the runs.
    """

    type_key = "driving_time"
    stateful = True
    MAX_RUNS: Final = 5000

    def __init__(self, moving: Expression, mode: str, limit: Expression, rest: float, window: float, max_gap: float,
                 during: Schedule | None, line: int, *, gap_km: float = 1.0, gap_kmh: float = 5.0,
                 per: str | None = None, lat: str = "lat", lon: str = "lon") -> None:
        self.moving = moving
        self.mode = mode
        self.limit = limit
        self.rest = rest
        self.window = window
        self.max_gap = max_gap
        self.during = during
        self.gap_m = gap_km * 1000.0
        self.gap_kmh = gap_kmh
        self.per = per
        self.lat, self.lon = lat, lon
        self.metrics = moving.metrics
        self.line = line
        self.horizon = min(window, 86400.0)
        self.bucket = max(60.0, float(round(window / 2000.0)))

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE at the limit; continuous mode CLEARs only after a full rest."""
        st = slots[self.slot]
        moving = self.moving(ctx.metrics, ctx.params, ctx.quality)
        if st is None:
            if moving is None:
                return None
            st = slots[self.slot] = {"v": 3, "t": ctx.ts, "cur": "", "d": {}}
        if moving is not None and (ctx.sample or ctx.late):
            self._driver(st, ctx)
            per = st["d"].get(st["cur"])
            if per is None:
                per = st["d"][st["cur"]] = _fresh()
            if ctx.sample and ctx.ts >= st["t"]:
                self._append(per, ctx, bool(moving))
                st["t"] = ctx.ts
                self._prune(st)
            elif ctx.late:
                self._insert(per, ctx, bool(moving))
        limit = self.limit(ctx.metrics, ctx.params, ctx.quality)
        if not isinstance(limit, int | float):
            return None
        per = st["d"].get(st["cur"]) or _fresh()
        if per["dirty"]:
            self._recompute(per)
        if self.per is not None:
            ctx.computed["driver"] = st["cur"] or "?"
        if self.mode == "continuous":
            drive = per["dr"]
            ctx.computed["driving_h"] = round(drive / 3600.0, 3)
            ctx.computed["rest_min"] = round(per["sp"] / 60.0, 1)
            if drive >= limit:
                return FIRE
            return CLEAR if drive == 0.0 else HOLD
        total = self._rolling(per, st["t"])
        ctx.computed["driving_h"] = round(total / 3600.0, 3)
        return FIRE if total >= limit else CLEAR

    # ------------------------------------------------------------------ samples

    def _driver(self, st: dict[str, Any], ctx: EvalContext) -> None:
        if self.per is None:
            return
        who = ctx.metrics.get(self.per)
        if not isinstance(who, str | int) or isinstance(who, bool) or not str(who) or str(who) == st["cur"]:
            return
        who = str(who)
        d = st["d"]
        if st["cur"] == "" and "" in d and who not in d:
            d[who] = d.pop("")  # driving before the first sign-in was theirs: a late sign-in resets nothing
        elif who in d:
            d[who]["away"] = True  # back after someone else drove: the time away is their rest
        st["cur"] = who

    def _position(self, ctx: EvalContext) -> tuple[float | None, float | None]:
        m = ctx.metrics
        lat, lon = m.get(self.lat), m.get(self.lon)
        if (m.get("gnss_fixed") is False or not isinstance(lat, int | float) or not isinstance(lon, int | float)
                or isinstance(lat, bool) or isinstance(lon, bool)):
            return None, None
        return float(lat), float(lon)

    def _append(self, per: dict[str, Any], ctx: EvalContext, moving: bool) -> None:
        ts = ctx.ts
        m, n = int(moving), int(self.during is None or self.during.active(ts))
        lat, lon = self._position(ctx)
        runs = per["r"]
        away = per.pop("away", False)
        new = [ts, ts, m, n, lat, lon, lat, lon, int(away)]
        if runs:
            last = runs[-1]
            if ts > last[1]:
                self._credit(per, last[1], ts, self._gap_driving(last, new), bool(last[3]))
            if not away and last[2] == m and last[3] == n and ts - last[1] <= self.max_gap:
                last[1] = ts
                if lat is not None:
                    last[6], last[7] = lat, lon
                return
        runs.append(new)

    def _gap_driving(self, a: list[Any], b: list[Any]) -> bool:
        """Whether the interval from the end of run ``a`` to the start of run ``b`` was driven."""
        if b[8]:
            return False  # the driver was away: someone else drove
        gap = b[0] - a[1]
        if gap <= self.max_gap:
            return bool(a[2])
        if a[6] is None or b[4] is None:
            return False  # no fix on one side: nothing shows movement
        d = haversine_m(a[6], a[7], b[4], b[5])
        return d > self.gap_m or d / 1000.0 / (gap / 3600.0) > self.gap_kmh

    def _credit(self, per: dict[str, Any], a: float, b: float, driving: bool, counts: bool) -> None:
        if not counts:
            per["dr"] = per["sp"] = 0.0  # outside ``during`` the clock starts again
            return
        if driving:
            per["dr"] += b - a
            per["sp"] = 0.0
            self._add_buckets(per, a, b)
        else:
            per["sp"] += b - a
            if per["sp"] >= self.rest:
                per["dr"] = 0.0

    def _add_buckets(self, per: dict[str, Any], a: float, b: float) -> None:
        if self.mode != "rolling":
            return
        size, buckets = self.bucket, per["b"]
        k = int(a // size)
        while a < b:
            end = min(b, (k + 1) * size)
            if buckets and buckets[-1][0] == k:
                buckets[-1][1] += end - a
            else:
                buckets.append([k, end - a])
            per["s"] += end - a
            a, k = end, k + 1

    def _insert(self, per: dict[str, Any], ctx: EvalContext, moving: bool) -> None:
        runs = per["r"]
        ts = ctx.ts
        if not runs or ts < runs[0][0]:
            return  # older than anything kept: nothing to place it against
        i = bisect.bisect_right([r[0] for r in runs], ts) - 1
        if runs[i][0] <= ts <= runs[i][1]:
            return  # inside a run already covered by neighbouring samples
        m, n = int(moving), int(self.during is None or self.during.active(ts))
        lat, lon = self._position(ctx)
        runs.insert(i + 1, [ts, ts, m, n, lat, lon, lat, lon, 0])
        per["dirty"] = True

    def _prune(self, st: dict[str, Any]) -> None:
        horizon = st["t"] - self.horizon
        cutoff = st["t"] - self.window
        for who, per in list(st["d"].items()):
            runs = per["r"]
            drop = 0
            while drop + 1 < len(runs) and (runs[drop + 1][1] < horizon or len(runs) - drop > self.MAX_RUNS):
                drop += 1
            if drop:
                del runs[:drop]
            if runs and runs[-1][1] < cutoff and who != st["cur"]:
                del st["d"][who]

    # ------------------------------------------------------------------ totals

    def _intervals(self, runs: list[list[Any]]) -> list[tuple[float, float, bool, bool]]:
        """(start, end, driving, counts) of every interval between the kept samples, oldest first."""
        out: list[tuple[float, float, bool, bool]] = []
        for k, r in enumerate(runs):
            if r[1] > r[0]:
                out.append((r[0], r[1], bool(r[2]), bool(r[3])))
            if k + 1 < len(runs) and runs[k + 1][0] > r[1]:
                out.append((r[1], runs[k + 1][0], self._gap_driving(r, runs[k + 1]), bool(r[3])))
        return out

    def _recompute(self, per: dict[str, Any]) -> None:
        """After a late sample: accumulators and buckets again from the kept runs."""
        runs = per["r"]
        per["dirty"] = False
        start = runs[0][0] if runs else 0.0
        first = int(start // self.bucket)
        per["b"] = [b for b in per["b"] if b[0] < first]
        per["s"] = float(sum(b[1] for b in per["b"]))
        per["dr"] = per["sp"] = 0.0
        for a, b, driving, counts in self._intervals(runs):
            self._credit(per, a, b, driving, counts)

    def _rolling(self, per: dict[str, Any], ts: float) -> float:
        cutoff = ts - self.window
        buckets, size = per["b"], self.bucket
        while buckets and (buckets[0][0] + 1) * size <= cutoff:
            per["s"] -= buckets.pop(0)[1]
        total = per["s"]
        if buckets and buckets[0][0] * size < cutoff:
            # The bucket across the window's edge: the part before the edge, as if driven evenly.
            total -= buckets[0][1] * (cutoff - buckets[0][0] * size) / size
        return max(0.0, float(total))

    def load(self, raw: Any) -> Any:
        """State of an older version starts afresh."""
        return raw if isinstance(raw, dict) and raw.get("v") == 3 else None


def _fresh() -> dict[str, Any]:
    return {"r": [], "dr": 0.0, "sp": 0.0, "b": [], "s": 0.0, "dirty": False}


@condition_type("driving_time")
def build_driving_time(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``driving_time: {mode: continuous, limit: 4h, rest: 20min}`` or ``{mode: rolling, window: 24h, limit: 8h}``."""
    spec = require_mapping(spec, line, "driving_time")
    check_keys(spec, {"moving", "mode", "limit", "rest", "window", "max_gap", "during", "gap_km", "gap_kmh", "per",
                      "lat", "lon"}, {"limit"}, "driving_time")
    mode = str(spec.get("mode", "continuous"))
    if mode not in _MODES:
        raise RuleError(spec.line_of("mode"), "driving_time.mode must be continuous or rolling")
    limit_raw = spec["limit"]
    if isinstance(limit_raw, str) and limit_raw.strip()[-1:].isalpha() and not limit_raw.strip().isidentifier():
        limit_raw = parse_duration(limit_raw, spec.line_of("limit"), "driving_time.limit")
    limit = bc.expr(limit_raw, spec.line_of("limit"), "driving_time.limit")
    during = parse_schedule(spec["during"], spec.line_of("during"), bc) if "during" in spec else None
    gaps = {}
    for key, default in (("gap_km", 1.0), ("gap_kmh", 5.0)):
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise RuleError(spec.line_of(key), f"driving_time.{key} must be a positive number")
        gaps[key] = float(value)
    per = spec.get("per")
    if per is not None and (not isinstance(per, str) or not per):
        raise RuleError(spec.line_of("per"), "driving_time.per must be a metric name (e.g. driver_id)")
    return DrivingTimeCondition(
        moving=bc.expr(spec.get("moving", "speed_kmh > 5"), spec.line_of("moving"), "driving_time.moving"),
        mode=mode, limit=limit,
        rest=parse_duration(spec.get("rest", "20min"), spec.line_of("rest"), "driving_time.rest"),
        window=parse_duration(spec.get("window", "24h"), spec.line_of("window"), "driving_time.window"),
        max_gap=parse_duration(spec.get("max_gap", "10min"), spec.line_of("max_gap"), "driving_time.max_gap"),
        during=during, line=spec.line, gap_km=gaps["gap_km"], gap_kmh=gaps["gap_kmh"], per=per,
        lat=str(spec.get("lat", "lat")), lon=str(spec.get("lon", "lon")),
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
