"""Scenario files: parsing and validation (the format is described in docs/rules.md, "Scenarios").

A scenario is YAML: the rules to load, a device registry, devices with adapter-specific input on
a timeline, and the alerts expected. Everything here is data; ``scenario.runner`` runs it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from rules.conditions.base import RuleError, parse_duration
from scenario.errors import ScenarioError as ScenarioError  # re-exported: the harness's error

DEFAULT_START: Final = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
ADAPTERS: Final = frozenset({"hj212", "jt808", "elevator", "camera", "json", "modbus"})
COMMON_DEVICE_KEYS: Final = frozenset({"id", "adapter", "latency", "jitter", "clock_offset", "duplicates", "outages",
                                       "unregistered"})
_TOP_KEYS: Final = frozenset({"scenario", "description", "covers", "rules", "timezone", "seed", "registry", "start",
                              "until", "tick_every", "devices", "expect"})


def duration(raw: Any, where: str) -> float:
    """Seconds from ``30s``/``2min``/``1h30min`` or a number.

    Raises:
        ScenarioError: naming ``where``.
    """
    if isinstance(raw, bool) or raw is None:
        raise ScenarioError(f"{where}: a duration is needed, got {raw!r}")
    try:
        return parse_duration(raw, 0, where)
    except RuleError as exc:
        raise ScenarioError(f"{where}: {exc.message}") from None


def offset(raw: Any, where: str) -> float:
    """A time offset from the scenario start (a duration, possibly negative like ``-1h``)."""
    if isinstance(raw, str) and raw.strip().startswith("-"):
        return -duration(raw.strip()[1:], where)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    return duration(raw, where)


def fmt_offset(seconds: float) -> str:
    """``1h2min3s`` style (what authors write), with fractions of a second when present."""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    parts = []
    if h >= 1:
        parts.append(f"{int(h)}h")
    if m >= 1:
        parts.append(f"{int(m)}min")
    if sec > 1e-6 or not parts:
        parts.append(f"{sec:.3f}".rstrip("0").rstrip(".") + "s")
    return sign + "".join(parts)


def _time(raw: Any, where: str) -> datetime:
    if raw is None:
        return DEFAULT_START
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise ScenarioError(f"{where}: {raw!r} is not an RFC 3339 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ValueGen:
    """A value that may vary per send: constant, gaussian noise, a ramp or a cycle (see the format)."""

    __slots__ = ("_const", "_cycle", "_decimals", "_from", "_hi", "_lo", "_mean", "_noise", "_to")

    def __init__(self, raw: Any, where: str) -> None:
        self._const: Any = None
        self._cycle: list[Any] | None = None
        self._mean = self._noise = 0.0
        self._from = self._to = None
        self._lo, self._hi = -math.inf, math.inf
        self._decimals: int | None = None
        if not isinstance(raw, dict):
            self._const = raw
            return
        unknown = set(raw) - {"mean", "noise", "from", "to", "cycle", "min", "max", "decimals"}
        if unknown:
            raise ScenarioError(f"{where}: unknown value generator keys {sorted(unknown)} "
                                "(mean/noise, from/to or cycle; min, max, decimals)")
        try:
            if "cycle" in raw:
                self._cycle = list(raw["cycle"])
                if not self._cycle:
                    raise ScenarioError(f"{where}: cycle is empty")
            elif "from" in raw or "to" in raw:
                self._from, self._to = float(raw["from"]), float(raw["to"])
            elif "mean" in raw:
                self._mean = float(raw["mean"])
            else:
                raise ScenarioError(f"{where}: a value generator needs mean, from/to or cycle")
            self._noise = float(raw.get("noise", 0.0))
            self._lo = float(raw.get("min", -math.inf))
            self._hi = float(raw.get("max", math.inf))
            self._decimals = int(raw["decimals"]) if "decimals" in raw else None
        except (TypeError, ValueError, KeyError) as exc:
            raise ScenarioError(f"{where}: bad value generator: {exc}") from None

    @property
    def constant(self) -> bool:
        """Whether the value never varies."""
        return self._cycle is None and self._from is None and self._noise == 0.0 and self._const is not None

    def at(self, index: int, fraction: float, rng: random.Random) -> Any:
        """The value of the ``index``-th send, ``fraction`` (0..1) through its segment."""
        if self._cycle is not None:
            return self._cycle[index % len(self._cycle)]
        if self._const is not None:
            return self._const
        base = self._mean if self._from is None else self._from + (self._to - self._from) * fraction  # type: ignore[operator]
        value = base + (rng.gauss(0.0, self._noise) if self._noise else 0.0)
        value = min(self._hi, max(self._lo, value))
        return round(value, self._decimals) if self._decimals is not None else value


def gens(raw: Any, where: str) -> dict[str, ValueGen]:
    """A mapping of names to value generators."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a mapping is needed")
    return {str(k): ValueGen(v, f"{where}.{k}") for k, v in raw.items()}


@dataclass(frozen=True)
class ExpectedAlert:
    """One alert the run must raise."""

    rule: str
    device: str
    at: float
    tolerance: float
    severity: str | None
    resolved_at: float | None
    """None: still open at the end of the run."""
    summary_contains: str | None
    where: str


@dataclass(frozen=True)
class Expectations:
    """What the run must (and must not) produce."""

    mode: str = "exact"
    alerts: tuple[ExpectedAlert, ...] = ()
    never: frozenset[str] = frozenset()
    rejected: dict[str, int] | None = None


@dataclass
class Scenario:
    """A parsed scenario file."""

    path: Path
    name: str
    description: str
    fires: tuple[str, ...]
    quiet: tuple[str, ...]
    packs: tuple[str, ...] | None
    rule_files: tuple[Path, ...]
    timezone: str
    seed: int
    registry: dict[str, Any]
    start: datetime
    until: float | None
    tick_every: float
    devices: list[dict[str, Any]]
    expect: Expectations = field(default_factory=Expectations)

    def where(self, key: str) -> str:
        """``file: key`` for messages."""
        return f"{self.path}: {key}"


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ScenarioError(f"{where}: a list of rule names is needed")
    return tuple(raw)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file.

    Raises:
        ScenarioError: the file is unreadable or invalid (the message names the file and the key).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(raw, path)


def parse_scenario(raw: Any, path: Path) -> Scenario:
    """Validate parsed YAML as a scenario (``path`` names it and anchors relative files)."""
    w = str(path)
    if not isinstance(raw, dict):
        raise ScenarioError(f"{w}: the top level must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"{w}: unknown keys {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    if not raw.get("scenario"):
        raise ScenarioError(f"{w}: scenario: give the scenario's one-line name")
    covers = raw.get("covers") or {}
    if not isinstance(covers, dict) or set(covers) - {"fires", "quiet"}:
        raise ScenarioError(f"{w}: covers: a mapping with fires and/or quiet")
    rules = raw.get("rules") or {}
    if not isinstance(rules, dict) or set(rules) - {"packs", "files"}:
        raise ScenarioError(f"{w}: rules: a mapping with packs and/or files")
    packs = _names(rules["packs"], f"{w}: rules.packs") if "packs" in rules else None
    files = tuple(path.parent / f for f in _names(rules.get("files"), f"{w}: rules.files"))
    registry = raw.get("registry")
    if not isinstance(registry, dict):
        raise ScenarioError(f"{w}: registry: the devices (same shape as the registry file) are required")
    devices = raw.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ScenarioError(f"{w}: devices: at least one device is needed")
    ids: set[str] = set()
    for i, dev in enumerate(devices):
        dw = f"{w}: devices[{i}]"
        if not isinstance(dev, dict) or "id" not in dev or "adapter" not in dev:
            raise ScenarioError(f"{dw}: each device needs id and adapter")
        dev["id"] = str(dev["id"])
        if dev["adapter"] not in ADAPTERS:
            raise ScenarioError(f"{dw}.adapter: {dev['adapter']!r} is not one of {sorted(ADAPTERS)}")
        if dev["id"] in ids:
            raise ScenarioError(f"{dw}.id: duplicate device {dev['id']!r}")
        ids.add(dev["id"])
    until = offset(raw["until"], f"{w}: until") if raw.get("until") is not None else None
    tick = duration(raw.get("tick_every", 1), f"{w}: tick_every")
    if tick <= 0:
        raise ScenarioError(f"{w}: tick_every must be positive")
    try:
        seed = int(raw.get("seed", 1))
    except (TypeError, ValueError):
        raise ScenarioError(f"{w}: seed must be an integer") from None
    return Scenario(
        path=path, name=str(raw["scenario"]), description=str(raw.get("description") or ""),
        fires=_names(covers.get("fires"), f"{w}: covers.fires"), quiet=_names(covers.get("quiet"), f"{w}: covers.quiet"),
        packs=packs, rule_files=files, timezone=str(raw.get("timezone", "Asia/Shanghai")), seed=seed,
        registry=registry, start=_time(raw.get("start"), f"{w}: start"), until=until, tick_every=tick,
        devices=devices, expect=_expectations(raw.get("expect"), w, sorted(ids)),
    )


def _expectations(raw: Any, w: str, ids: list[str]) -> Expectations:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - {"mode", "tolerance", "alerts", "never", "rejected"}:
        raise ScenarioError(f"{w}: expect: a mapping with mode, tolerance, alerts, never, rejected")
    mode = str(raw.get("mode", "exact"))
    if mode not in ("exact", "listed"):
        raise ScenarioError(f"{w}: expect.mode: exact or listed")
    tolerance = duration(raw.get("tolerance", 5), f"{w}: expect.tolerance")
    alerts = []
    for i, a in enumerate(raw.get("alerts") or []):
        aw = f"{w}: expect.alerts[{i}]"
        if not isinstance(a, dict) or "rule" not in a or "at" not in a:
            raise ScenarioError(f"{aw}: each expected alert needs rule and at")
        unknown = set(a) - {"rule", "device", "at", "tolerance", "severity", "resolved_at", "summary_contains"}
        if unknown:
            raise ScenarioError(f"{aw}: unknown keys {sorted(unknown)}")
        device = a.get("device")
        if device is None:
            if len(ids) != 1:
                raise ScenarioError(f"{aw}.device: name the device (the scenario has {len(ids)})")
            device = ids[0]
        resolved = a.get("resolved_at")
        alerts.append(ExpectedAlert(
            rule=str(a["rule"]), device=str(device), at=offset(a["at"], f"{aw}.at"),
            tolerance=duration(a.get("tolerance", tolerance), f"{aw}.tolerance"),
            severity=str(a["severity"]) if a.get("severity") is not None else None,
            resolved_at=None if resolved in (None, "never") else offset(resolved, f"{aw}.resolved_at"),
            summary_contains=str(a["summary_contains"]) if a.get("summary_contains") is not None else None,
            where=aw.split(": ", 1)[1]))
    rejected = raw.get("rejected")
    if rejected is not None and (not isinstance(rejected, dict)
                                 or not all(isinstance(v, int) for v in rejected.values())):
        raise ScenarioError(f"{w}: expect.rejected: a mapping of reason -> count")
    return Expectations(mode, tuple(alerts), frozenset(_names(raw.get("never"), f"{w}: expect.never")),
                        {str(k): int(v) for k, v in rejected.items()} if rejected is not None else None)
