"""Reusing a rule's last signal on telemetry that changed nothing the rule reads (the engine's hot path).

A monitoring box repeats itself: an idle elevator sends the same eleven values ten times a second,
a moving one changes its speed and position but not its power, mode or safety circuit. A rule
whose condition is *steady* (``Condition.steady``: a function of the metric values and data flags
it reads, no time, no state a message moves) gives the same signal on the same values, so the
engine keeps the last one in ``RuleState.memo`` and reuses it while

- none of the metrics or flags the rule reads changed since that evaluation (values compared with
  their types: ``1``, ``1.0`` and ``true`` are different inputs);
- the device was heard recently enough for a deadman part to stay clear;
- no event, status message, period record, late message, tick, reload or restore evaluated or
  reset the rule's state in between (each of these sets the memo ``STALE``).

The state machine still steps on the reused signal exactly as on a fresh one. ``TelemetryPlan``
is what a device's message with a given set of metrics meets, computed once per device and set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from rules.conditions.base import EvalContext, Guard, Signal, Steady
from rules.model import Rule

STALE: Final = 2
"""``RuleState.memo`` when no reusable signal is on record (signals are -1, 0, 1 or None)."""
NOTHING: Final[frozenset[str]] = frozenset()
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
"""Value types whose ``==`` within one type is "the same input" (containers may hide ``1 == 1.0``)."""
_MISSING: Final = object()
Evaluate = Callable[[EvalContext, list[Any]], Signal]
Entry = tuple[Rule, str, Evaluate, Evaluate | None, frozenset[str], frozenset[str], tuple[Guard, ...], float]


def rule_steady(rule: Rule) -> Steady | None:
    """What the rule's signal on in-order telemetry depends on (condition and clear), or None."""
    s = rule.condition.steady()
    if s is None or rule.clear is None:
        return s
    c = rule.clear.steady()
    return None if c is None else s | c


class TelemetryPlan:
    """The rules a device's telemetry with one set of metrics meets, with what each one reads."""

    __slots__ = ("bystanders", "entries", "heard_within", "rules")

    def __init__(self, rules: list[Rule], steady: Mapping[str, Steady | None], others: list[Rule],
                 keys: tuple[str, ...]) -> None:
        self.rules = rules
        """The candidate rules, in evaluation order."""
        entries: list[Entry] = []
        for r in rules:
            s = steady.get(r.name)
            clear = r.clear.evaluate if r.clear is not None else None
            if s is None:  # evaluated on every message: never "heard recently enough" to reuse
                entries.append((r, r.name, r.condition.evaluate, clear, NOTHING, NOTHING, (), -math.inf))
            else:
                entries.append((r, r.name, r.condition.evaluate, clear, s.metrics, s.flags, s.guards, s.heard_within))
        self.entries: tuple[Entry, ...] = tuple(entries)
        """(rule, name, evaluate, clear's evaluate, metrics read, flags read, slot guards, heard within), bound once."""
        self.heard_within = min((e[7] for e in entries), default=math.inf)
        sent = frozenset(keys)
        bystanders = []
        for r in others:
            s = steady.get(r.name)
            if s is not None and (s.flags or not s.metrics.isdisjoint(sent)):
                bystanders.append((r.name, s))
        self.bystanders: tuple[tuple[str, Steady], ...] = tuple(bystanders)
        """Steady rules of the device this message does not trigger but whose inputs it can change
        (``get("mode", ...)`` reads ``mode`` without being triggered by it): their memo goes stale."""


def changed_keys(old: dict[str, Any], new: Mapping[str, Any]) -> frozenset[str] | set[str]:
    """Names in ``new`` whose value differs from ``old``'s in value or type (NaN always differs)."""
    changed: set[str] | None = None
    get = old.get
    for k, v in new.items():
        o = get(k, _MISSING)
        if o is v:
            continue
        c = v.__class__
        if o.__class__ is not c or c not in _SCALARS or o != v:
            if changed is None:
                changed = set()
            changed.add(k)
    return NOTHING if changed is None else changed


def scalar_types(types: tuple[type, ...]) -> tuple[type, ...] | None:
    """``types`` when every one is a scalar (equal values of one scalar type are the same input), else None."""
    return types if _SCALARS.issuperset(types) else None
