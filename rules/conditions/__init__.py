"""Condition types, registered by type key (importing this package registers them all)."""

from rules.conditions import accumulate, basic, correlate, due, geo, periods, roads, windows  # noqa: F401
from rules.conditions.base import CLEAR, CONDITION_TYPES, FIRE, HOLD, Condition, EvalContext, RuleError

__all__ = ["CLEAR", "CONDITION_TYPES", "FIRE", "HOLD", "Condition", "EvalContext", "RuleError"]
