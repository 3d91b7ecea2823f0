"""Registry-date deadlines: maintenance every 15 days, inspections, certificates.

``due: {since: maintained_on, every: 15d}`` holds once the date in the rule parameter
``maintained_on`` (a registry attribute: ``2026-11-20``, ``2026-11-20T09:30:00+08:00`` or epoch
seconds) plus ``every`` has passed on the engine's clock. It is judged on the tick, so a device
that never sends anything is still watched; a device with no date on record gives no signal
(the registry check is where missing dates are reported, not an alert per device).
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

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

_CACHE_SIZE = 4096
_EPOCHS: dict[tuple[str, ZoneInfo], float | None] = {}
"""Registry dates (text) already parsed: the tick judges every device's date every second."""
_LABELS: dict[tuple[float, ZoneInfo], str] = {}
"""``due_at`` texts already formatted."""


def epoch_of(value: Any, tz: ZoneInfo) -> float | None:
    """Epoch seconds of a registry date (a bare date is local midnight); None when absent or unreadable."""
    if value.__class__ is str:
        key = (value, tz)
        if key in _EPOCHS:
            return _EPOCHS[key]
        if len(_EPOCHS) >= _CACHE_SIZE:
            _EPOCHS.clear()
        found = _EPOCHS[key] = _epoch_of(value, tz)
        return found
    return _epoch_of(value, tz)


def _due_label(due_at: float, tz: ZoneInfo) -> str:
    key = (due_at, tz)
    label = _LABELS.get(key)
    if label is None:
        if len(_LABELS) >= _CACHE_SIZE:
            _LABELS.clear()
        label = _LABELS[key] = datetime.fromtimestamp(due_at, tz).strftime("%Y-%m-%d %H:%M")
    return label


def _epoch_of(value: Any, tz: ZoneInfo) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=tz)).timestamp()
    if isinstance(value, date):
        return datetime.combine(value, time(0), tz).timestamp()
    text = str(value).strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tz).timestamp()
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).timestamp()


class DueCondition(Condition):
    """Holds once ``since`` + ``every`` has passed (``overdue_days`` and ``due_at`` go to the templates)."""

    type_key = "due"

    def __init__(self, since: str, every: float, tz: ZoneInfo, line: int) -> None:
        self.since = since
        self.every = every
        self.tz = tz
        self.needs_tick = True
        self.line = line

    def wants_tick(self, slots: list[Any]) -> bool:
        """Only time moves a deadline."""
        return True

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE past the deadline, CLEAR before it, None without a date."""
        start = epoch_of(ctx.params.get(self.since), self.tz)
        if start is None:
            return None
        due_at = start + self.every
        ctx.computed["due_at"] = _due_label(due_at, self.tz)
        overdue = ctx.now_wall - due_at
        ctx.computed["overdue_days"] = round(max(overdue, 0.0) / 86400.0, 1)
        return FIRE if overdue >= 0 else CLEAR

    def value_names(self) -> set[str]:
        """The date itself is reported through the computed values."""
        return set()


@condition_type("due")
def build_due(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``due: {since: PARAM, every: 15d}``; ``since`` names a rule parameter (usually a registry attribute)."""
    spec = require_mapping(spec, line, "due")
    check_keys(spec, {"since", "every", "tz"}, {"since", "every"}, "due")
    since = str(spec["since"])
    if since not in bc.param_names:
        raise RuleError(spec.line_of("since"), f"due.since: {since!r} is not a parameter of this rule "
                                               f"(declare it: params: {{{since}: {{attr: {since}, default: null}}}})")
    every = parse_duration(spec["every"], spec.line_of("every"), "due.every")
    if every <= 0:
        raise RuleError(spec.line_of("every"), "due.every must be positive")
    return DueCondition(since, every, bc.tz(spec.get("tz", bc.timezone), spec.line_of("tz")), spec.line)
