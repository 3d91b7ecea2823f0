"""Conditions on HJ 212 period records: a missing hourly (or daily) record while real-time data flows."""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime
from typing import Any

from rules.conditions.base import (
    CLEAR,
    FIRE,
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
from rules.periods import PERIOD_METRIC, PERIOD_SECONDS, period_of


class MissingPeriodCondition(Condition):
    """FIRE while a period whose record (``command``, e.g. 2061) should have arrived is missing.

    A period ``[h, h + every)`` is due at its end plus ``grace``; it is missing until its record
    arrives, whether live or re-sent later (history re-sends fill the hole and clear the alert).
    Judged on the device's own clock as its other telemetry (2011, 2021) advances, so a silent
    device is left to the absence rule. Periods are expected from the first one that began after
    the device was first heard, and only those that ended within ``lookback`` (24 h, or three
    periods if longer): an older hole is forgotten.
    """

    type_key = "missing_period"
    stateful = True

    def __init__(self, spec: Any, bc: BuildContext) -> None:
        self.line = spec.line
        self.command = str(spec["command"])
        if self.command not in PERIOD_SECONDS:
            raise RuleError(spec.line_of("command"), f"missing_period.command: one of {sorted(PERIOD_SECONDS)}")
        self.every = parse_duration(spec.get("every", PERIOD_SECONDS[self.command]), spec.line_of("every"),
                                    "missing_period.every")
        self.grace = parse_duration(spec.get("grace", "15min"), spec.line_of("grace"), "missing_period.grace")
        self.lookback = parse_duration(spec.get("lookback", max(86400.0, 3 * self.every)), spec.line_of("lookback"),
                                       "missing_period.lookback")
        if self.every <= 0 or self.lookback < self.every:
            raise RuleError(spec.line, "missing_period: every must be positive and lookback at least every")
        self.name = str(spec.get("as", "missing_periods"))
        self.metrics = frozenset([PERIOD_METRIC])

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """Note arriving records; on in-order data, FIRE while a due period has no record."""
        st: dict[str, Any] | None = slots[self.slot]
        if st is None:
            st = slots[self.slot] = {"first": ctx.data_ts, "seen": []}
        cn = period_of(ctx.message_metrics)
        if cn == self.command:
            seen: list[float] = st["seen"]
            if ctx.data_ts not in seen:
                bisect.insort(seen, ctx.data_ts)
            # Periods start where the logger's do (a local midnight is not a UTC one).
            st.setdefault("phase", ctx.data_ts % self.every)
        elif cn is not None or not ctx.sample:
            return None  # other period records and ticks say nothing about this one
        if ctx.late:
            return None  # a re-sent record fills its hole; the next in-order data says so
        horizon = ctx.ts - self.lookback - self.every  # periods that ended within the lookback
        seen = st["seen"]
        while seen and seen[0] < horizon - self.every:
            seen.pop(0)
        phase = st.get("phase", 0.0)
        start = max(math.ceil((st["first"] - phase) / self.every),
                    math.ceil((horizon - phase) / self.every)) * self.every + phase
        got = set(seen)
        missing = []
        h = start
        while h + self.every + self.grace <= ctx.ts:
            if h not in got:
                missing.append(h)
            h += self.every
        if not missing:
            return CLEAR
        ctx.computed[self.name] = len(missing)
        ctx.computed[f"{self.name}_first"] = datetime.fromtimestamp(missing[0], UTC).isoformat().replace(
            "+00:00", "Z")
        return FIRE


@condition_type("missing_period")
def build_missing_period(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``missing_period: {command: "2061", grace: 15min}``: no hourly record while real-time data flows."""
    spec = require_mapping(spec, line, "missing_period")
    check_keys(spec, {"command", "every", "grace", "lookback", "as"}, {"command"}, "missing_period")
    return MissingPeriodCondition(spec, bc)
