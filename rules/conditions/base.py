"""Condition plumbing: the evaluation context, the base class and the type registry.

A condition is evaluated for one device and returns a *signal*:

- ``FIRE`` (1): the condition holds;
- ``CLEAR`` (-1): the condition is clear (for hysteresis conditions: below the clear level);
- ``HOLD`` (0): between the two (only hysteresis conditions return it; a firing alert stays);
- ``None``: unknown (a needed value is missing), nothing changes.

Conditions are registered under a type key (``threshold``, ``window``, ``geofence`` ...)
and built from their YAML spec by the loader. Per-device state lives in a list of slots
owned by the engine, so one compiled condition serves every device; a stateful condition
keeps JSON-serialisable state in its slot so the engine can snapshot it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.contracts import DeviceEvent, DeviceStatus
from rules.errors import RulesError
from rules.expr import Expression, ExpressionError, compile_expression
from rules.yamlsrc import LineDict, line_of

FIRE: Final = 1
HOLD: Final = 0
CLEAR: Final = -1

Signal = int | None


class RuleError(RulesError, ValueError):
    """A rule is invalid: carries the line and the problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(slots=True)
class EvalContext:
    """What a condition sees when evaluated for one device."""

    device_id: str
    kind: str
    ts: float
    """Device time (epoch seconds) of the data, or the estimated device time on a tick."""
    metrics: Mapping[str, Any]
    """The device's latest known value of every metric (this message merged over earlier ones)."""
    quality: Mapping[str, Any]
    params: Mapping[str, Any]
    now_wall: float
    last_rx: float
    """Wall time the device was last heard from (or when the engine began watching it)."""
    sample: bool = True
    """True for a new, in-order data message; False on ticks."""
    late: bool = False
    """True for a message older than the device's newest data."""
    message_metrics: Mapping[str, Any] = field(default_factory=dict)
    event: DeviceEvent | None = None
    status: DeviceStatus | None = None
    computed: dict[str, Any] = field(default_factory=dict)
    """Values computed by conditions (window means, rates ...) for templates and ``values``."""
    sample_ts: float | None = None
    """Device time the message's data belongs to when it differs from ``ts``: a period record
    (HJ 212 2051/2061/2031) is filed in windows under its period start but judged at ``ts``."""

    @property
    def data_ts(self) -> float:
        """Timestamp under which this message's samples are filed (``sample_ts`` or ``ts``)."""
        return self.ts if self.sample_ts is None else self.sample_ts


Guard = Callable[[list[Any]], bool]


@dataclass(frozen=True, slots=True)
class Steady:
    """What a condition's signal on an in-order telemetry message is a function of (see ``Condition.steady``)."""

    metrics: frozenset[str] = frozenset()
    """Metrics whose values it reads (through expressions, ``get`` and ``has`` included)."""
    flags: frozenset[str] = frozenset()
    """Data flags (``flag("a21026")``) it reads."""
    guards: tuple[Guard, ...] = ()
    """Checks on the rule's slots that must hold after an evaluation for its signal to be reused (an
    instant event waiting to expire makes the signal depend on time)."""
    heard_within: float = math.inf
    """The signal also depends on silence: reusable only while the device was heard less than this
    many seconds of wall time ago (a deadman on the whole device)."""

    def __or__(self, other: Steady) -> Steady:
        return Steady(self.metrics | other.metrics, self.flags | other.flags, self.guards + other.guards,
                      min(self.heard_within, other.heard_within))


STEADY_NOTHING: Final = Steady()
"""A condition whose telemetry signal reads no metric (it follows events or status messages only)."""


@dataclass
class BuildContext:
    """What the loader hands a condition builder."""

    param_names: frozenset[str]
    zones: Mapping[str, Any]
    schedules: Mapping[str, Any]
    timezone: str
    build: Callable[[Any, int], Condition]
    """Builds a nested condition from its spec (with the parent's line as fallback)."""
    slots: int = 0

    def allocate(self) -> int:
        """Reserve a per-device state slot."""
        self.slots += 1
        return self.slots - 1

    def expr(self, source: Any, line: int, what: str) -> Expression:
        """Compile an expression, turning errors into ``RuleError``."""
        try:
            return compile_expression(source, self.param_names)
        except ExpressionError as exc:
            raise RuleError(line, f"{what}: {exc}") from None

    def tz(self, name: Any, line: int) -> ZoneInfo:
        """A time zone by name."""
        try:
            return ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleError(line, f"unknown time zone {name!r}") from None


class Condition:
    """Base class: a compiled condition shared by every device a rule applies to."""

    type_key: ClassVar[str] = ""
    metrics: frozenset[str] = frozenset()
    """Telemetry metrics whose arrival triggers evaluation."""
    any_telemetry: bool = False
    """Evaluate on every telemetry message of the rule's devices."""
    events: frozenset[str] = frozenset()
    """Event types that trigger evaluation (``*`` for all)."""
    status: bool = False
    """Evaluate on status messages."""
    needs_tick: bool = False
    """Evaluate on the periodic tick too (time-driven conditions)."""
    stateful: bool = False
    """Whether the condition keeps per-device state (it then gets a slot)."""
    slot: int = -1
    line: int = 0

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """The signal for this device now."""
        raise NotImplementedError

    def children(self) -> list[Condition]:
        """Nested conditions."""
        return []

    def steady(self) -> Steady | None:
        """What this condition's signal on an in-order telemetry message depends on, or None.

        A ``Steady`` promises: once its ``guards`` held after an evaluation, and while the device
        was heard within ``heard_within``, the signal is a function of the values of its
        ``metrics`` and ``flags`` and the rule's parameters alone, and evaluating it on such a
        message changes no state -- so the engine may reuse the last signal while none of them
        changed. Its state may move only on event and status messages and ticks (after which the
        engine evaluates afresh). The default, None, says "it reads the time, or keeps state
        every message moves": the engine then evaluates it on every message. A subclass that
        reads more than its parent must override this.
        """
        return None

    def wants_tick(self, slots: list[Any]) -> bool:
        """Whether time alone could change this device's signal now (the tick skips it otherwise)."""
        return any(c.wants_tick(slots) for c in self.children())

    def dump(self, state: Any) -> Any:
        """JSON-serialisable form of a slot's state."""
        return state

    def load(self, raw: Any) -> Any:
        """Inverse of ``dump``."""
        return raw

    def walk(self) -> list[Condition]:
        """This condition and all nested ones."""
        out: list[Condition] = [self]
        for child in self.children():
            out.extend(child.walk())
        return out

    def value_names(self) -> set[str]:
        """Metric names worth reporting in a transition's ``values``."""
        names = set(self.metrics)
        for child in self.children():
            names |= child.value_names()
        return names


Builder = Callable[[Any, int, BuildContext], Condition]
CONDITION_TYPES: dict[str, Builder] = {}
"""Condition builders by type key."""


def condition_type(key: str) -> Callable[[Builder], Builder]:
    """Register a condition builder under ``key``."""

    def register(builder: Builder) -> Builder:
        if key in CONDITION_TYPES:
            raise ValueError(f"condition type {key!r} registered twice")
        CONDITION_TYPES[key] = builder
        return builder

    return register


_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d|w)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
                 "w": 604800.0, None: 1.0}


def parse_duration(value: Any, line: int, what: str) -> float:
    """``2s``, ``500ms``, ``20min``/``20m``, ``4h``, ``1d`` or a number of seconds.

    Raises:
        RuleError: not a non-negative duration.
    """
    if isinstance(value, bool):
        raise RuleError(line, f"{what}: expected a duration like 30s, 20min, 4h, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise RuleError(line, f"{what}: duration must not be negative")
        return float(value)
    if isinstance(value, str):
        total = 0.0
        parts = value.split()
        if not parts:
            raise RuleError(line, f"{what}: empty duration")
        for part in re.findall(r"\d+(?:\.\d+)?\s*[a-z]*", value):
            m = _DURATION_RE.match(part)
            if m is None:
                raise RuleError(line, f"{what}: bad duration {value!r} (use e.g. 30s, 20min, 4h, 1h30min)")
            total += float(m.group(1)) * _UNITS[m.group(2)]
        if re.sub(r"\d+(?:\.\d+)?\s*(ms|sec|min|s|m|h|d|w)?", "", value).strip():
            raise RuleError(line, f"{what}: bad duration {value!r} (use e.g. 30s, 20min, 4h, 1h30min)")
        return total
    raise RuleError(line, f"{what}: expected a duration like 30s, 20min, 4h, got {value!r}")


def require_mapping(spec: Any, line: int, what: str) -> LineDict:
    """The spec as a mapping, or a ``RuleError``."""
    if not isinstance(spec, dict):
        raise RuleError(line, f"{what}: expected a mapping, got {type(spec).__name__}")
    if not isinstance(spec, LineDict):
        ld = LineDict(spec)
        ld.line = line
        ld.key_lines = {}
        return ld
    return spec


def check_keys(spec: LineDict, allowed: set[str], required: set[str], what: str) -> None:
    """Reject unknown keys and report missing ones."""
    for key in spec:
        if key not in allowed:
            raise RuleError(spec.line_of(key), f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in spec:
            raise RuleError(spec.line, f"{what}: missing required key {key!r}")


def spec_line(spec: Any, key: str | None, default: int) -> int:
    """Line of a key in a spec, falling back to ``default``."""
    return line_of(spec, key, default) or default
