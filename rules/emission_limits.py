"""Emission limits per stack or outfall, from the standard it declares in the device registry.

The limit tables (``rules/data/emission_standards.yaml``) name their sources. A registry
device of kind ``emission`` declares ``standard`` (``GB13223``, ``GB13271``, ``GB18485``,
``GB4915``, ``GB8978``, ``GB18918`` or ``local``) and the attributes that standard asks for
(``fuel``, ``new_source``, ``grade`` ...), on the device or on its site. A local standard or
permit overrides the national value per pollutant with ``{code}_limit`` (hourly),
``{code}_daily_limit`` (daily) and ``{code}_min``/``{code}_max`` (ranges); it may only be
stricter (Environmental Protection Law art. 16). Rules read the result through parameters
``{standard: hour | day | min | max | reference_o2, code: a21026}`` (``rules.model.ParamSpec``).
A stack without a usable standard is a configuration error when the rules load, never a
silent default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any, Final

import yaml

from broker.registry import DeviceRegistry
from rules.errors import RulesError

STANDARDS_FILE: Final = Path(__file__).resolve().parent / "data" / "emission_standards.yaml"
WHATS: Final = frozenset({"hour", "day", "min", "max", "reference_o2"})
"""What a rule parameter can ask for."""
_LOCAL_SUFFIX: Final = {"hour": "_limit", "day": "_daily_limit", "min": "_min", "max": "_max"}
_CACHE_LIMIT: Final = 100_000


class StandardsError(RulesError, ValueError):
    """The standards data file is invalid (a bug in the shipped data)."""


@dataclass(frozen=True)
class StackLimits:
    """The limits that apply to one stack or outfall."""

    standard: str
    medium: str
    reference_o2: float | None
    hour: dict[str, float] = field(default_factory=dict)
    """Hourly limits (mg/m3 at the reference O2 for air)."""
    day: dict[str, float] = field(default_factory=dict)
    """Daily (24 h) limits (mg/L for water)."""
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    """Ranges (pH 6-9): ``low[code]`` .. ``high[code]``."""
    local: frozenset[str] = frozenset()
    """Codes whose limit comes from the device's local limit."""
    unconfirmed: bool = False

    def value(self, what: str, code: str) -> float | None:
        """One limit (``hour``, ``day``, ``min``, ``max``) or the reference O2."""
        if what == "reference_o2":
            return self.reference_o2
        table = {"hour": self.hour, "day": self.day, "min": self.low, "max": self.high}[what]
        return table.get(code)


def _norm(value: Any) -> str:
    return str(value).strip().lower()


@dataclass(frozen=True)
class _Row:
    when: dict[str, frozenset[str]]
    values: dict[str, Any]
    unconfirmed: bool


@dataclass(frozen=True)
class Standard:
    """One standard's attributes, reference O2 rows and limit rows."""

    key: str
    title: str
    medium: str
    source: str
    attributes: dict[str, tuple[frozenset[str], Any]]
    """name -> (accepted values normalised, default or None when required)."""
    o2_rows: tuple[_Row, ...]
    rows: tuple[_Row, ...]


class StandardsTable:
    """The loaded ``emission_standards.yaml``."""

    def __init__(self, raw: Any, source: str = "<data>") -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("standards"), dict):
            raise StandardsError(f"{source}: needs a 'standards' mapping")
        self.codes: dict[str, dict[str, str]] = dict(raw.get("codes") or {})
        self.standards: dict[str, Standard] = {}
        for key, spec in raw["standards"].items():
            self.standards[str(key)] = self._standard(str(key), spec, source)

    def _standard(self, key: str, spec: Any, source: str) -> Standard:
        where = f"{source}: standards.{key}"
        if not isinstance(spec, dict) or "title" not in spec or "medium" not in spec:
            raise StandardsError(f"{where}: needs title and medium")
        attrs: dict[str, tuple[frozenset[str], Any]] = {}
        for name, a in (spec.get("attributes") or {}).items():
            values = frozenset(_norm(v) for v in a.get("values", []))
            attrs[str(name)] = (values, a.get("default"))

        def rows(items: Any, what: str) -> tuple[_Row, ...]:
            out = []
            for i, row in enumerate(items or []):
                if not isinstance(row, dict) or not isinstance(row.get("when", {}), dict):
                    raise StandardsError(f"{where}.{what}[{i}]: expected a mapping with 'when'")
                when = {}
                for name, v in (row.get("when") or {}).items():
                    if name not in attrs:
                        raise StandardsError(f"{where}.{what}[{i}].when: {name!r} is not one of the attributes")
                    when[str(name)] = frozenset(_norm(x) for x in (v if isinstance(v, list) else [v]))
                values = {k: v for k, v in row.items() if k not in ("when", "unconfirmed")}
                out.append(_Row(when, values, bool(row.get("unconfirmed", False))))
            return tuple(out)

        return Standard(key, str(spec["title"]), str(spec["medium"]), str(spec.get("source", "")), attrs,
                        rows(spec.get("reference_o2"), "reference_o2"), rows(spec.get("limits"), "limits"))

    def resolve(self, attribute: Callable[[str], Any]) -> StackLimits:
        """The limits for a device whose attributes ``attribute(name)`` returns (None when absent).

        Raises:
            ValueError: every problem found, joined by "; " (no standard, missing or bad attributes,
                a local limit looser than the national one).
        """
        declared = attribute("standard")
        if declared is None:
            raise ValueError(f"no 'standard' attribute (one of {', '.join(self.standards)})")
        std = self.standards.get(str(declared).replace(" ", "").split("-")[0])
        if std is None:
            raise ValueError(f"unknown standard {declared!r} (known: {', '.join(self.standards)})")
        problems: list[str] = []
        values: dict[str, str] = {}
        for name, (accepted, default) in std.attributes.items():
            raw = attribute(name)
            if raw is None:
                raw = default
            if raw is None:
                continue  # required only if a row asks for it
            if accepted and _norm(raw) not in accepted:
                problems.append(f"{name}={raw!r} is not one of {sorted(accepted)} ({std.key})")
            values[name] = _norm(raw)

        def first(rows: tuple[_Row, ...], what: str) -> _Row | None:
            for row in rows:
                if any(n in values and values[n] not in accepted for n, accepted in row.when.items()):
                    continue
                missing = [n for n in row.when if n not in values]
                if missing:
                    problems.append(f"{std.key} needs attribute {missing[0]!r} to choose its {what}")
                    return None
                return row
            return None

        row = first(std.rows, "limits") if std.rows else None
        o2_row = first(std.o2_rows, "reference O2") if std.o2_rows else None
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        if std.rows and row is None:
            raise ValueError(f"no {std.key} limit row matches {values}")
        reference_o2 = float(o2_row.values["o2"]) if o2_row is not None else None
        local_o2 = attribute("reference_o2")
        if reference_o2 is None and local_o2 is not None:
            reference_o2 = _positive(local_o2, "reference_o2", problems)
        hour: dict[str, float] = {}
        day: dict[str, float] = {}
        low: dict[str, float] = {}
        high: dict[str, float] = {}
        for code, v in (row.values.items() if row is not None else ()):
            if isinstance(v, dict):
                for k, target in (("hour", hour), ("day", day), ("min", low), ("max", high)):
                    if k in v:
                        target[code] = float(v[k])
            else:
                hour[code] = float(v)
        local: set[str] = set()
        for code in self.codes:
            for what, table in (("hour", hour), ("day", day), ("min", low), ("max", high)):
                name = f"{code}{_LOCAL_SUFFIX[what]}"
                raw = attribute(name)
                if raw is None:
                    continue
                value = _positive(raw, name, problems) if what != "min" else _number(raw, name, problems)
                if value is None:
                    continue
                national = table.get(code)
                looser = national is not None and (value < national if what == "min" else value > national)
                if looser:
                    problems.append(f"local {name}={value:g} is looser than {std.key}'s {national:g} "
                                    "(a local limit may only be stricter)")
                    continue
                table[code] = value
                local.add(code)
        if problems:
            raise ValueError("; ".join(problems))
        return StackLimits(std.key, std.medium, reference_o2, hour, day,
                           low, high, frozenset(local), bool(row is not None and row.unconfirmed))


def _number(raw: Any, name: str, problems: list[str]) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        problems.append(f"{name}={raw!r} is not a number")
        return None
    return float(raw)


def _positive(raw: Any, name: str, problems: list[str]) -> float | None:
    value = _number(raw, name, problems)
    if value is not None and value <= 0:
        problems.append(f"{name}={raw!r} must be positive")
        return None
    return value


@cache
def standards() -> StandardsTable:
    """The shipped standards table (loaded once)."""
    return StandardsTable(yaml.safe_load(STANDARDS_FILE.read_text(encoding="utf-8")), str(STANDARDS_FILE))


_resolved: dict[tuple[int, str], tuple[DeviceRegistry, StackLimits | None]] = {}


def stack_limits(registry: DeviceRegistry | None, device_id: str) -> StackLimits | None:
    """The limits of a registered emission device; None when it is unregistered or its entry is invalid."""
    if registry is None or registry.device(device_id) is None:
        return None
    key = (id(registry), device_id)
    hit = _resolved.get(key)
    if hit is not None and hit[0] is registry:
        return hit[1]
    try:
        limits: StackLimits | None = standards().resolve(partial(registry.attribute, device_id))
    except ValueError:
        limits = None  # reported by check_registry when the rules load
    if len(_resolved) >= _CACHE_LIMIT:
        _resolved.clear()
    _resolved[key] = (registry, limits)
    return limits


def param_value(registry: DeviceRegistry | None, device_id: str, what: str, code: str) -> float | None:
    """A rule parameter ``{standard: what, code: code}`` for one device (None: no such limit)."""
    limits = stack_limits(registry, device_id)
    return limits.value(what, code) if limits is not None else None


def check_registry(registry: DeviceRegistry) -> list[str]:
    """Every emission device whose standard cannot be resolved, as ``source: devices[id]: problem``."""
    problems = []
    table = standards()
    for device in registry.devices.values():
        if device.kind != "emission":
            continue
        try:
            table.resolve(partial(registry.attribute, device.id))
        except ValueError as exc:
            problems.append(f"{registry.source}: device {device.id!r}: {exc}")
    return problems
