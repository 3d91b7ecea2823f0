"""A small, safe expression language over metrics, rule parameters and data flags.

Rule authors write Python-like expressions (``speed_mps > rated * 1.15``,
``door != "closed" and speed_mps > 0.3``, ``bit(alarm_flags, 1)``). The text is parsed
with :mod:`ast` and every node is checked against a whitelist (literals, names, dotted
metric names, arithmetic, comparisons, ``and``/``or``/``not``, conditional expressions
and a fixed set of functions). Only the checked tree, rewritten so names become lookups
in the metric, parameter and flag maps, is compiled to a Python function once at load
time; user text is never evaluated directly, and no attribute access, subscript,
keyword, lambda or dunder can reach the compiled code.

Evaluation returns ``None`` when a metric the expression needs is missing or a value has
the wrong type, so a partial message never fires or clears a rule by accident.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from rules.errors import RulesError

MetricMap = Mapping[str, Any]
Compiled = Callable[[MetricMap, MetricMap, MetricMap], Any]


class ExpressionError(RulesError, ValueError):
    """An expression is not valid; the message says what is wrong."""


def _bit(value: Any, n: Any) -> bool:
    return bool((int(value) >> int(n)) & 1)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clamp(value: Any, low: Any, high: Any) -> Any:
    return max(low, min(high, value))


O2_UNUSABLE: Final = 20.0
"""Measured O2 (%) at or above which a converted (折算) value is meaningless (flue gas is almost air)."""


def _zs(value: Any, o2: Any, reference: Any) -> Any:
    # HJ 75 / the emission standards: C_zs = C * (21 - O2_ref) / (21 - O2_measured).
    if reference is None:
        return float(value)  # no reference O2 (water, a local limit without one): the value as measured
    if not O2_UNUSABLE > float(o2) >= 0:
        raise ValueError("O2 out of the usable range")
    return float(value) * (21.0 - float(reference)) / (21.0 - float(o2))


def _mul(a: Any, b: Any) -> Any:
    # Numbers only: "x" * n with n from a device could allocate without bound.
    if a.__class__ is str or b.__class__ is str or isinstance(a, tuple) or isinstance(b, tuple):
        raise TypeError("only numbers can be multiplied")
    return a * b


_FUNCTIONS: Final[dict[str, tuple[Callable[..., Any], int, int]]] = {
    # name: (function, min args, max args)
    "abs": (abs, 1, 1),
    "min": (min, 2, 8),
    "max": (max, 2, 8),
    "round": (round, 1, 2),
    "bit": (_bit, 2, 2),
    "int": (int, 1, 1),
    "float": (float, 1, 1),
    "finite": (_finite, 1, 1),
    "clamp": (_clamp, 3, 3),
    "zs": (_zs, 3, 3),
}
"""Plain functions callable from expressions."""

_CONTEXT_FUNCTIONS: Final = {"metric", "get", "has", "flag"}
"""Functions compiled to lookups: ``metric("a-b")``, ``get("x", default)``, ``has("x")``, ``flag("a21026")``."""

_LITERAL_NAMES: Final = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}

_BINOPS: Final = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_CMPOPS: Final = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.In, ast.NotIn)
_UNARY: Final = (ast.Not, ast.USub, ast.UAdd)
_MAX_NODES: Final = 400


@dataclass(frozen=True)
class Expression:
    """A compiled expression with the metric names it reads."""

    source: str
    metrics: frozenset[str]
    params: frozenset[str]
    flags: frozenset[str]
    fn: Compiled
    constant: Any = None
    is_constant: bool = False
    reads: frozenset[str] = frozenset()
    """Every metric the expression looks at: ``metrics`` plus those only probed by ``get``/``has``
    (which do not trigger evaluation but still decide the result)."""

    def __call__(self, metrics: MetricMap, params: MetricMap, quality: MetricMap) -> Any:
        """Evaluate; ``None`` when a needed value is missing or of the wrong type."""
        try:
            return self.fn(metrics, params, quality)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


TEXT_METRICS: Final = frozenset({"hj212.cn", "hj212.st", "hj212.qn"})
"""Metrics that are always text: comparing one with a number is always false, so it is refused."""


def _check_text_metrics(operands: list[ast.expr]) -> None:
    names = [_dotted(o) for o in operands]
    text = next((n for n in names if n in TEXT_METRICS), None)
    if text is None:
        return
    for o in operands:
        items = o.elts if isinstance(o, ast.Tuple | ast.List) else [o]
        for item in items:
            if isinstance(item, ast.Constant) and isinstance(item.value, int | float) \
                    and not isinstance(item.value, bool):
                raise ExpressionError(f"{text} is text (\"{item.value!r}\"), compare it with a quoted string: "
                                      f"{text} == \"{item.value!r}\"")


class _Rewriter:
    """Checks a parsed tree against the whitelist and rewrites names into map lookups."""

    def __init__(self, param_names: frozenset[str]) -> None:
        self.param_names = param_names
        self.metrics: set[str] = set()
        self.params: set[str] = set()
        self.flags: set[str] = set()
        self.probed: set[str] = set()
        """Metrics read through ``get``/``has`` (not triggers, but inputs)."""
        self.probed_params: set[str] = set()
        """Parameters read through ``get``/``has`` (optional ones)."""
        self.nodes = 0

    def lookup(self, name: str, node: ast.AST) -> ast.expr:
        if name in self.param_names:
            self.params.add(name)
            target = "_p"
        else:
            self.metrics.add(name)
            target = "_m"
        return ast.copy_location(
            ast.Subscript(value=ast.Name(id=target, ctx=ast.Load()), slice=ast.Constant(value=name), ctx=ast.Load()),
            node,
        )

    def visit(self, node: ast.AST) -> ast.expr:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ExpressionError(f"expression is too long (more than {_MAX_NODES} nodes)")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, int, float, str)) or node.value is None:
                return node
            raise ExpressionError(f"literal {node.value!r} is not allowed")
        if isinstance(node, ast.Name):
            if node.id in _LITERAL_NAMES:
                return ast.copy_location(ast.Constant(value=_LITERAL_NAMES[node.id]), node)
            if node.id.startswith("_"):
                raise ExpressionError(f"name {node.id!r} is not allowed (names must not start with '_')")
            return self.lookup(node.id, node)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is None or "__" in dotted or dotted.startswith("_"):
                raise ExpressionError("attribute access is not allowed; dotted names must be metric names")
            return self.lookup(dotted, node)
        if isinstance(node, ast.BoolOp):
            node.values = [self.visit(v) for v in node.values]
            return node
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY):
                raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
            node.operand = self.visit(node.operand)
            return node
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
            node.left, node.right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Mult):
                return ast.copy_location(ast.Call(func=ast.Name(id="_mul", ctx=ast.Load()),
                                                  args=[node.left, node.right], keywords=[]), node)
            return node
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, _CMPOPS):
                    raise ExpressionError(f"comparison {type(op).__name__} is not allowed")
            _check_text_metrics([node.left, *node.comparators])
            node.left = self.visit(node.left)
            node.comparators = [self.visit(c) for c in node.comparators]
            return node
        if isinstance(node, ast.IfExp):
            node.test, node.body, node.orelse = self.visit(node.test), self.visit(node.body), self.visit(node.orelse)
            return node
        if isinstance(node, (ast.Tuple, ast.List)):
            elts = [self.visit(e) for e in node.elts]
            return ast.copy_location(ast.Tuple(elts=elts, ctx=ast.Load()), node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")

    def call(self, node: ast.Call) -> ast.expr:
        if not isinstance(node.func, ast.Name):
            raise ExpressionError("only plain function calls are allowed")
        name = node.func.id
        if node.keywords:
            raise ExpressionError(f"{name}(): keyword arguments are not allowed")
        if name in _CONTEXT_FUNCTIONS:
            return self.context_call(name, node)
        spec = _FUNCTIONS.get(name)
        if spec is None:
            known = ", ".join(sorted([*_FUNCTIONS, *_CONTEXT_FUNCTIONS]))
            raise ExpressionError(f"unknown function {name!r} (known: {known})")
        _, low, high = spec
        if not low <= len(node.args) <= high:
            raise ExpressionError(f"{name}() takes {low}..{high} arguments, got {len(node.args)}")
        node.func = ast.copy_location(ast.Name(id=f"_f_{name}", ctx=ast.Load()), node.func)
        node.args = [self.visit(a) for a in node.args]
        return node

    def context_call(self, name: str, node: ast.Call) -> ast.expr:
        args = node.args
        if not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
            raise ExpressionError(f"{name}() needs a quoted name as its first argument")
        key = args[0].value
        if name == "metric":
            if len(args) != 1:
                raise ExpressionError("metric() takes one argument")
            return self.lookup(key, node)
        if name == "flag":
            if len(args) != 1:
                raise ExpressionError("flag() takes one argument")
            self.flags.add(key)
            return ast.copy_location(
                ast.Subscript(value=ast.Name(id="_q", ctx=ast.Load()), slice=ast.Constant(value=key),
                              ctx=ast.Load()), node)
        if name == "has":
            if len(args) != 1:
                raise ExpressionError("has() takes one argument")
            target = "_p" if key in self.param_names else "_m"
            (self.probed if target == "_m" else self.probed_params).add(key)
            return ast.copy_location(
                ast.Compare(left=ast.Constant(value=key), ops=[ast.In()],
                            comparators=[ast.Name(id=target, ctx=ast.Load())]), node)
        # get(name, default)
        if len(args) != 2:
            raise ExpressionError("get() takes a name and a default")
        default = self.visit(args[1])
        target = "_p" if key in self.param_names else "_m"
        (self.probed if target == "_m" else self.probed_params).add(key)
        return ast.copy_location(
            ast.Call(func=ast.Attribute(value=ast.Name(id=target, ctx=ast.Load()), attr="get", ctx=ast.Load()),
                     args=[ast.Constant(value=key), default], keywords=[]), node)


_GLOBALS: Final[dict[str, Any]] = {"__builtins__": {}, "_mul": _mul,
                                   **{f"_f_{k}": v[0] for k, v in _FUNCTIONS.items()}}


def compile_expression(source: str | int | float | bool, param_names: frozenset[str] = frozenset()) -> Expression:
    """Parse, check and compile an expression once.

    Args:
        source: the expression text (numbers and booleans are accepted as constants).
        param_names: names that refer to rule parameters rather than metrics.

    Returns:
        The compiled expression.

    Raises:
        ExpressionError: syntax error or a construct outside the whitelist.
    """
    if isinstance(source, bool | int | float):
        value = source
        return Expression(str(source), frozenset(), frozenset(), frozenset(), lambda _m, _p, _q: value,
                          constant=value, is_constant=True)
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("expression must be a non-empty string or a number")
    if len(source) > 2000:
        raise ExpressionError("expression is longer than 2000 characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error in {source!r}: {exc.msg}") from None
    rewriter = _Rewriter(param_names)
    body = rewriter.visit(tree.body)
    lam = ast.Lambda(
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg="_m"), ast.arg(arg="_p"), ast.arg(arg="_q")],
                           kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=body,
    )
    wrapper = ast.Expression(body=lam)
    ast.fix_missing_locations(wrapper)
    code = compile(wrapper, "<rule expression>", "eval")
    fn: Compiled = eval(code, dict(_GLOBALS))
    # get()/has() read the message too: an expression built only from them is not a constant.
    is_constant = not (rewriter.metrics or rewriter.params or rewriter.flags or rewriter.probed
                       or rewriter.probed_params)
    constant = None
    if is_constant:
        try:
            constant = fn({}, {}, {})
        except Exception as exc:
            raise ExpressionError(f"constant expression {source!r} fails: {exc}") from None
    return Expression(source, frozenset(rewriter.metrics), frozenset(rewriter.params), frozenset(rewriter.flags),
                      fn, constant, is_constant, frozenset(rewriter.metrics | rewriter.probed))
