"""The safe expression language: what it evaluates, what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from rules.expr import ExpressionError, compile_expression

M: dict[str, Any] = {"speed_mps": 2.1, "door": "open", "a21026.ZsAvg": 40.0, "alarm_flags": 5, "zero": 0,
                     "name-with-dash": 7}
P: dict[str, Any] = {"rated": 1.75}
Q: dict[str, Any] = {"a21026": "M"}


@pytest.mark.parametrize(("source", "expected"), [
    ("speed_mps > rated * 1.15", True),
    ("speed_mps > rated * 1.25", False),
    ('door != "closed" and speed_mps > 0.3', True),
    ("not (speed_mps > 3)", True),
    ("a21026.ZsAvg - 5", 35.0),
    ("bit(alarm_flags, 0) and not bit(alarm_flags, 1) and bit(alarm_flags, 2)", True),
    ('flag("a21026") in ("M", "C")', True),
    ('get("mode", "normal") == "normal"', True),
    ('has("speed_mps") and not has("mode")', True),
    ('metric("name-with-dash") * 2', 14),
    ("max(speed_mps, 3, 1) + min(1, 2) + abs(-1) + round(2.46, 1)", 7.5),
    ("1 if speed_mps > 2 else 0", 1),
    ("clamp(speed_mps, 0, 2)", 2),
    ("true and not false", True),
    ("speed_mps // 1 + 7 % 4", 5.0),
    ("-speed_mps < 0 < speed_mps", True),
])
def test_evaluates(source: str, expected: Any) -> None:
    result = compile_expression(source, frozenset(P))(M, P, Q)
    assert result == pytest.approx(expected) if isinstance(expected, float) else result == expected


def test_collects_metrics_params_and_flags() -> None:
    e = compile_expression('speed_mps > rated and flag("a21026") == "N" and a21026.ZsAvg > 1', frozenset(["rated"]))
    assert e.metrics == {"speed_mps", "a21026.ZsAvg"}
    assert e.params == {"rated"}
    assert e.flags == {"a21026"}


@pytest.mark.parametrize("source", ["missing_metric > 1", "door > 1", "speed_mps / zero", 'flag("a34013") == "N"',
                                    "int(door)", "door * alarm_flags"])
def test_missing_or_mistyped_values_are_unknown(source: str) -> None:
    assert compile_expression(source)(M, P, Q) is None


@pytest.mark.parametrize(("source", "problem"), [
    ("__import__('os').system('true')", "allowed"),
    ("speed_mps.__class__", "not allowed"),
    ("_m['x']", "not allowed"),
    ("(lambda: 1)()", "allowed"),
    ("[x for x in speed_mps]", "not allowed"),
    ("speed_mps[0]", "not allowed"),
    ("open('/etc/passwd')", "unknown function"),
    ("max(speed_mps, key=abs)", "keyword"),
    ("speed_mps ** 99999", "not allowed"),
    ("speed_mps >", "syntax error"),
    ("b'bytes'", "not allowed"),
    ("metric(door)", "quoted name"),
    ("bit(1)", "takes 2..2"),
    ("", "non-empty"),
    ("x := 1", "syntax error"),
    ("speed_mps if", "syntax error"),
    ("a " * 2000, "longer than"),
    ('"x" * 1000000000', "only numbers"),
    ('("a",) * 3', "only numbers"),
])
def test_refuses(source: str, problem: str) -> None:
    with pytest.raises(ExpressionError, match=problem):
        compile_expression(source)


def test_constants() -> None:
    e = compile_expression("1.75 * 1.15")
    assert e.is_constant and e.constant == pytest.approx(2.0125)
    assert compile_expression(80).constant == 80


def test_get_and_has_alone_are_not_constants() -> None:
    # An expression that reads the message only through get()/has() must be evaluated per message
    # (used as a threshold level it would otherwise be frozen at its load-time value).
    level = compile_expression('get("limit_mps", 2.5)')
    assert not level.is_constant and level.reads == frozenset({"limit_mps"})
    assert level.fn({"limit_mps": 4.0}, {}, {}) == 4.0 and level.fn({}, {}, {}) == 2.5
    present = compile_expression('has("door_open")')
    assert not present.is_constant and present.fn({"door_open": 1}, {}, {}) is True
    optional = compile_expression('get("margin", 1)', frozenset({"margin"}))
    assert not optional.is_constant and optional.fn({}, {"margin": 3}, {}) == 3
