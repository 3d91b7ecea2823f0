"""Conditions across devices and over parameter-driven durations: ``correlate`` and ``held``.

``correlate`` is the engine's one cross-device condition: several devices of one group (an
area of a plant) alarming together. Rules are evaluated per device, so each device's member
state lives in its own slot (snapshotted as usual) and the condition object keeps a shared
index per group, rebuilt from the slots on restore and refreshed by every message. The group
raises **one** alert: the device that completed the group leads it and fires; the others
return clear. The leader keeps the alert until fewer than ``min_devices`` alarm.

``held`` fires once its part has held continuously for a duration computed from parameters,
e.g. an interlock bypass past its approved window (``bypass_max_h * 3600``).
"""

from __future__ import annotations

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
from rules.expr import Expression


class CorrelateCondition(Condition):
    """Fires (on one leading device) while ``min_devices`` devices of a group alarm within ``within``."""

    type_key = "correlate"
    stateful = True

    def __init__(self, part: Condition, group_by: str, min_devices: int, within: float, line: int) -> None:
        self.part = part
        self.group_by = group_by
        self.min_devices = min_devices
        self.within = within
        self.metrics = part.metrics
        self.any_telemetry = part.any_telemetry
        self.events = part.events
        self.status = part.status
        self.needs_tick = True
        self.line = line
        self._groups: dict[str, dict[str, float]] = {}
        """Per group: device -> device time of its latest alarming evaluation."""
        self._leaders: dict[str, str] = {}

    def children(self) -> list[Condition]:
        """The per-device alarm condition."""
        return [self.part]

    def wants_tick(self, slots: list[Any]) -> bool:
        """A member's alarm ages out of the window with time; a silent leader must still resolve."""
        st = slots[self.slot]
        return st is not None or self.part.wants_tick(slots)

    def _group(self, ctx: EvalContext) -> str:
        value = ctx.params.get(self.group_by)
        if value is None:
            value = ctx.metrics.get(self.group_by)
        return str(value) if value is not None else ""

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE on the group's leader while enough members alarm; CLEAR elsewhere."""
        sig = self.part.evaluate(ctx, slots)
        group = self._group(ctx)
        if not group:
            return None  # a device outside any group is never correlated
        dev = ctx.device_id
        st = slots[self.slot]
        if st is not None and st["g"] != group:
            self._forget(st["g"], dev)  # the device moved to another area
            st = None
        members = self._groups.setdefault(group, {})
        if not ctx.late:
            if sig == FIRE and (ctx.sample or ctx.event is not None):
                # Only data refreshes membership: a detector that fell silent in alarm ages out of the window.
                members[dev] = max(ctx.ts, members.get(dev, ctx.ts))
            elif sig == CLEAR:
                members.pop(dev, None)
        cutoff = ctx.ts - self.within
        for other in [d for d, t in members.items() if t < cutoff]:
            del members[other]
        leader = self._leaders.get(group)
        if len(members) >= self.min_devices:
            if leader is None and dev in members:
                leader = self._leaders[group] = dev
        elif leader is not None:
            del self._leaders[group]
            leader = None
        ctx.computed["devices_alarming"] = len(members)
        ctx.computed["alarming_devices"] = ", ".join(sorted(members))[:200]
        ctx.computed["group"] = group
        slots[self.slot] = {"d": dev, "g": group, "t": members.get(dev), "lead": leader == dev} \
            if (dev in members or leader == dev) else None
        if sig is None and leader != dev and dev not in members:
            return None
        return FIRE if leader == dev else CLEAR

    def _forget(self, group: str, dev: str) -> None:
        self._groups.get(group, {}).pop(dev, None)
        if self._leaders.get(group) == dev:
            del self._leaders[group]

    def load(self, raw: Any) -> Any:
        """Restore a member's slot and re-register it in the shared group index."""
        if isinstance(raw, dict) and isinstance(raw.get("d"), str) and isinstance(raw.get("g"), str):
            if isinstance(raw.get("t"), int | float):
                self._groups.setdefault(raw["g"], {})[raw["d"]] = float(raw["t"])
            if raw.get("lead"):
                self._leaders[raw["g"]] = raw["d"]
            return raw
        return None


@condition_type("correlate")
def build_correlate(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``correlate: {condition: ..., group_by: area, min_devices: 2, within: 5min}``."""
    spec = require_mapping(spec, line, "correlate")
    check_keys(spec, {"condition", "group_by", "min_devices", "within"}, {"condition", "group_by"}, "correlate")
    count = spec.get("min_devices", 2)
    if not isinstance(count, int) or isinstance(count, bool) or count < 2:
        raise RuleError(spec.line_of("min_devices"), "correlate.min_devices must be an integer >= 2")
    group_by = spec["group_by"]
    if not isinstance(group_by, str) or not group_by.isidentifier():
        raise RuleError(spec.line_of("group_by"), "correlate.group_by must name a parameter or metric")
    part = bc.build(spec["condition"], spec.line_of("condition"))
    return CorrelateCondition(part, group_by, count,
                              parse_duration(spec.get("within", "5min"), spec.line_of("within"), "correlate.within"),
                              spec.line)


class HeldCondition(Condition):
    """Fires once its part has held without a break for ``for`` seconds (an expression over parameters)."""

    type_key = "held"
    stateful = True

    def __init__(self, part: Condition, duration: Expression, line: int) -> None:
        self.part = part
        self.duration = duration
        self.metrics = part.metrics | duration.metrics
        self.any_telemetry = part.any_telemetry
        self.events = part.events
        self.status = part.status
        self.needs_tick = True
        self.line = line

    def children(self) -> list[Condition]:
        """The condition that must hold."""
        return [self.part]

    def wants_tick(self, slots: list[Any]) -> bool:
        """Time alone can reach the duration."""
        return slots[self.slot] is not None or self.part.wants_tick(slots)

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE after the duration, CLEAR as soon as the part clears."""
        sig = self.part.evaluate(ctx, slots)
        since = slots[self.slot]
        if not ctx.late:
            if sig == FIRE and since is None:
                since = slots[self.slot] = ctx.ts
            elif sig == CLEAR:
                since = slots[self.slot] = None
        if since is None:
            return None if sig is None else CLEAR
        try:
            limit = self.duration(ctx.metrics, ctx.params, ctx.quality)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if not isinstance(limit, int | float) or isinstance(limit, bool):
            return None
        held = max(0.0, ctx.ts - since)
        ctx.computed["held_min"] = round(held / 60.0, 1)
        ctx.computed["held_h"] = round(held / 3600.0, 2)
        return FIRE if held >= limit else CLEAR


@condition_type("held")
def build_held(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``held: {condition: "bypass_count > 0", for: "bypass_max_h * 3600"}`` (``for`` may be a duration)."""
    spec = require_mapping(spec, line, "held")
    check_keys(spec, {"condition", "for"}, {"condition", "for"}, "held")
    raw = spec["for"]
    if isinstance(raw, str) and raw.strip()[-1:].isalpha() and not raw.strip().isidentifier() \
            and "*" not in raw and "/" not in raw:
        raw = parse_duration(raw, spec.line_of("for"), "held.for")
    part = bc.build(spec["condition"], spec.line_of("condition"))
    return HeldCondition(part, bc.expr(raw, spec.line_of("for"), "held.for"), spec.line)
