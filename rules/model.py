"""Loaded rules: scope, condition, timing, severity, labels and message templates."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from broker.contracts import Severity
from broker.registry import Device, DeviceRegistry
from rules.conditions.base import Condition, RuleError

_FIELD_RE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)(?::([<>^]?[+\-]?\d{0,3}(?:\.\d{1,2})?[dfegs%]?))?\}")
_BRACES_RE: Final = re.compile(r"[{}]")


class Template:
    """``"电梯超速 {speed_mps:.2f} m/s"``: fields name metrics, parameters, computed values or
    ``device`` (also ``device_id``)/``kind``/``site``/``rule``/``device_name``/``site_name``; an
    optional format spec is limited to alignment, sign, width, precision and type, so a template
    cannot reach into objects."""

    def __init__(self, text: str, line: int, what: str) -> None:
        self.text = text
        self.parts: list[str | tuple[str, str]] = []
        pos = 0
        for m in _FIELD_RE.finditer(text):
            literal = text[pos:m.start()]
            if _BRACES_RE.search(literal):
                raise RuleError(line, f"{what}: unbalanced or invalid '{{...}}' field in {text!r}")
            if literal:
                self.parts.append(literal)
            self.parts.append((m.group(1), m.group(2) or ""))
            pos = m.end()
        tail = text[pos:]
        if _BRACES_RE.search(tail):
            raise RuleError(line, f"{what}: unbalanced or invalid '{{...}}' field in {text!r}")
        if tail:
            self.parts.append(tail)

    @property
    def fields(self) -> list[str]:
        """Names the template refers to."""
        return [p[0] for p in self.parts if isinstance(p, tuple)]

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the fields; a missing value shows as ``?``."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, spec = part
            value = values.get(name)
            if value is None:
                out.append("?")
                continue
            try:
                out.append(format(value, spec) if spec else _plain(value))
            except (TypeError, ValueError):
                out.append(str(value))
        return "".join(out)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@dataclass(frozen=True)
class ParamSpec:
    """A rule parameter: a registry attribute with the rule's default, or a constant."""

    name: str
    attr: str | None
    default: Any
    standard: tuple[str, str] | None = None
    """``(what, code)``: the device's emission limit from its declared standard (rules.emission_limits)."""
    required: bool = False
    """Every registered device the rule applies to must carry the attribute (no guessed default)."""

    def resolve(self, registry: DeviceRegistry | None, device_id: str) -> Any:
        """The device's value (device attribute, then its site's, then the default)."""
        if self.standard is not None:
            from rules.emission_limits import param_value  # the tables load only when a rule asks

            return param_value(registry, device_id, *self.standard)
        if self.attr is None or registry is None:
            return self.default
        return registry.attribute(device_id, self.attr, self.default)


@dataclass(frozen=True)
class FlappingSpec:
    """Flapping detection: ``max_changes`` state changes within ``window`` seconds."""

    window: float
    max_changes: int


@dataclass
class Rule:
    """One loaded, validated rule."""

    name: str
    source: str
    line: int
    kinds: frozenset[str]
    condition: Condition
    severity: Severity
    summary: Template
    summary_en: Template
    description: Template
    clear: Condition | None = None
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    sites: frozenset[str] | None = None
    devices: frozenset[str] | None = None
    match_labels: dict[str, str] = field(default_factory=dict)
    match_attributes: dict[str, list[Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    params: dict[str, ParamSpec] = field(default_factory=dict)
    flapping: FlappingSpec | None = None
    slots: int = 0
    digest: str = ""
    value_names: tuple[str, ...] = ()

    def conditions(self) -> list[Condition]:
        """Every condition node of the rule (fire and clear)."""
        nodes = self.condition.walk()
        if self.clear is not None:
            nodes += self.clear.walk()
        return nodes

    @property
    def stateful_conditions(self) -> list[Condition]:
        """The condition nodes that keep per-device state in a slot (computed once)."""
        cached: list[Condition] | None = self.__dict__.get("_stateful")
        if cached is None:
            cached = self.__dict__["_stateful"] = [c for c in self.conditions() if c.slot >= 0]
        return cached

    @property
    def metrics(self) -> frozenset[str]:
        """Telemetry metrics that trigger evaluation."""
        return self.condition.metrics | (self.clear.metrics if self.clear else frozenset())

    @property
    def any_telemetry(self) -> bool:
        """Whether every telemetry message triggers evaluation."""
        return self.condition.any_telemetry or bool(self.clear and self.clear.any_telemetry)

    @property
    def events(self) -> frozenset[str]:
        """Event types that trigger evaluation."""
        return self.condition.events | (self.clear.events if self.clear else frozenset())

    @property
    def on_status(self) -> bool:
        """Whether status messages trigger evaluation."""
        return self.condition.status or bool(self.clear and self.clear.status)

    @property
    def needs_tick(self) -> bool:
        """Whether the periodic tick evaluates the rule."""
        return self.condition.needs_tick or bool(self.clear and self.clear.needs_tick)

    @property
    def watches_silence(self) -> bool:
        """Whether the rule must also look at registered devices that never reported (absence, registry dates)."""
        return any(c.type_key in ("absence", "due") for c in self.conditions())

    def applies_to(self, device_id: str, kind: str, site: str | None, device: Device | None) -> bool:
        """Whether the rule's scope includes this device."""
        if kind not in self.kinds:
            return False
        if self.devices is not None and device_id not in self.devices:
            return False
        if self.sites is not None and site not in self.sites:
            return False
        if self.match_labels:
            labels = device.labels if device is not None else {}
            for k, v in self.match_labels.items():
                if labels.get(k) != v:
                    return False
        if self.match_attributes:
            attrs = device.attributes if device is not None else {}
            for k, allowed in self.match_attributes.items():
                if attrs.get(k) not in allowed:
                    return False
        return True

    def fingerprint(self, device_id: str) -> str:
        """Stable identity of this rule's alert for one device: hash of rule, device and labels."""
        text = "\x1f".join([self.name, device_id, *(f"{k}={v}" for k, v in sorted(self.labels.items()))])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def spec_digest(raw: Any) -> str:
    """Stable digest of a rule's YAML spec (hot reload keeps state when it is unchanged)."""
    return hashlib.sha256(repr(_canonical(raw)).encode("utf-8")).hexdigest()[:16]


def _canonical(raw: Any) -> Any:
    if isinstance(raw, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in raw.items()))
    if isinstance(raw, list):
        return tuple(_canonical(v) for v in raw)
    return raw


def missing_required_attributes(rules: Iterable[Rule], registry: DeviceRegistry) -> list[str]:
    """Registered devices lacking an attribute that a rule applying to them declares ``required``.

    An elevator without its rated speed would be judged against a guess; the platform refuses to
    start instead, naming each device and attribute.
    """
    problems: set[str] = set()
    for rule in rules:
        needed = [p for p in rule.params.values() if p.required and p.attr]
        if not needed:
            continue
        for dev in registry.devices.values():
            kind = str(getattr(dev.kind, "value", dev.kind))  # Device built in code may carry a plain string
            if not rule.applies_to(dev.id, kind, dev.site, dev):
                continue
            for p in needed:
                if registry.attribute(dev.id, str(p.attr), None) is None:
                    problems.add(f"{registry.source}: device {dev.id} ({kind}): attribute {p.attr!r} "
                                 f"is required (rule {rule.name})")
    return sorted(problems)
