"""Rule files: YAML to validated ``Rule`` objects, with ``file:line: rule 'name': problem`` errors.

A rule file looks like::

    schedules: {night: {between: "22:00-06:00"}}
    zones: {depot: {circle: {center: [121.47, 31.23], radius_m: 300}}}
    rules:
      - name: elevator_overspeed
        kind: elevator
        severity: critical
        params: {rated: {attr: rated_speed_mps, default: 1.75}}
        condition: {threshold: {value: speed_mps, above: rated * 1.15, clear_below: rated * 1.05}}
        for: 2s
        summary: "电梯超速 {speed_mps:.2f} m/s"
        summary_en: "Elevator overspeed {speed_mps:.2f} m/s"

Loading reports every error it finds, not only the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

# Importing the condition modules registers their types.
import rules.conditions  # noqa: F401
from broker.contracts import Kind, Severity
from rules.conditions.base import CONDITION_TYPES, BuildContext, Condition, RuleError, parse_duration
from rules.emission_limits import WHATS
from rules.model import FlappingSpec, ParamSpec, Rule, Template, spec_digest
from rules.yamlsrc import LineDict, LineList, load_yaml

DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
PACKS_DIR: Final = Path(__file__).parent / "packs"

_RULE_KEYS: Final = {
    "name", "kind", "sites", "devices", "match_labels", "match_attributes", "condition", "clear", "for",
    "keep_firing_for", "severity", "labels", "summary", "summary_en", "description", "description_en", "params",
    "flapping", "enabled", "foreach",
}
_FILE_KEYS: Final = {"rules", "zones", "schedules", "pack", "timezone", "description"}
_KINDS: Final = {k.value for k in Kind}
_SEVERITIES: Final = {s.value for s in Severity}


@dataclass
class RuleSet:
    """Rules loaded from one or more files, with the problems found."""

    rules: list[Rule] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, Rule]:
        """Rules by name."""
        return {r.name: r for r in self.rules}


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` rule files (rule tests ``*_test.yaml`` excluded)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml")
                              and not f.stem.endswith("_test")))
        else:
            out.append(path)
    return out


def load_rules(paths: Iterable[str | Path], timezone: str = DEFAULT_TIMEZONE) -> RuleSet:
    """Load every rule file; a file with an error contributes no rules (it is rejected whole)."""
    result = RuleSet()
    seen: dict[str, str] = {}
    for path in rule_files(paths):
        file_rules, errors = load_rule_file(path, timezone)
        result.files.append(str(path))
        for rule in file_rules:
            if rule.name in seen:
                errors.append(f"{path}:{rule.line}: rule {rule.name!r}: duplicate rule name (also in {seen[rule.name]})")
        if errors:
            result.errors.extend(errors)
            continue
        for rule in file_rules:
            seen[rule.name] = f"{path}:{rule.line}"
        result.rules.extend(file_rules)
    return result


def load_rule_file(path: str | Path, timezone: str = DEFAULT_TIMEZONE) -> tuple[list[Rule], list[str]]:
    """Load one file; returns its rules and every error found (``file:line: rule 'name': problem``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [f"{path}:0: cannot read: {exc.strerror or exc}"]
    return load_rule_text(text, str(path), timezone)


def load_rule_text(text: str, source: str = "<text>", timezone: str = DEFAULT_TIMEZONE) -> tuple[list[Rule], list[str]]:
    """Load rules from YAML text (see ``load_rule_file``)."""
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [f"{source}:{line}: YAML error: {problem}"]
    if doc is None:
        return [], []
    if not isinstance(doc, LineDict):
        return [], [f"{source}:1: a rule file must be a mapping with a 'rules' list"]
    errors: list[str] = []
    for key in doc:
        if key not in _FILE_KEYS:
            errors.append(f"{source}:{doc.line_of(key)}: unknown top-level key {key!r} "
                          f"(allowed: {', '.join(sorted(_FILE_KEYS))})")
    tz = str(doc.get("timezone", timezone))
    zones = doc.get("zones") or {}
    schedules = doc.get("schedules") or {}
    if not isinstance(zones, dict):
        errors.append(f"{source}:{doc.line_of('zones')}: 'zones' must be a mapping of name to zone")
        zones = {}
    if not isinstance(schedules, dict):
        errors.append(f"{source}:{doc.line_of('schedules')}: 'schedules' must be a mapping of name to schedule")
        schedules = {}
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, LineList):
        errors.append(f"{source}:{doc.line_of('rules')}: 'rules' must be a list")
        return [], errors
    rules: list[Rule] = []
    names: set[str] = set()
    expanded: list[tuple[Any, int]] = []
    for raw, line in zip(raw_rules, raw_rules.item_lines, strict=True):
        try:
            expanded.extend((r, line) for r in expand_foreach(raw, line))
        except RuleError as exc:
            name = raw.get("name") if isinstance(raw, dict) else None
            errors.append(f"{source}:{exc.line or line}: rule {name!r}: {exc.message}")
    for raw, line in expanded:
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"rule {name!r}" if isinstance(name, str) else "rule"
        try:
            rule = build_rule(raw, line, source, tz, zones, schedules)
        except RuleError as exc:
            errors.append(f"{source}:{exc.line or line}: {label}: {exc.message}")
            continue
        if rule is None:
            continue
        if rule.name in names:
            errors.append(f"{source}:{line}: {label}: duplicate rule name in this file")
            continue
        names.add(rule.name)
        rules.append(rule)
    return rules, errors


def expand_foreach(raw: Any, line: int) -> list[Any]:
    """``foreach: {code: [a21026, a21002], limit: [35, 50]}`` makes one rule per column, with
    ``${code}`` and ``${limit}`` replaced in every string of the rule (its name must use one)."""
    if not isinstance(raw, LineDict) or "foreach" not in raw:
        return [raw]
    spec = raw["foreach"]
    fl = raw.line_of("foreach")
    if not isinstance(spec, dict) or not spec:
        raise RuleError(fl, "foreach: expected a mapping of variable to a list of values")
    columns = {str(k): v for k, v in spec.items()}
    lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise RuleError(fl, "foreach: every variable needs a non-empty list, all of the same length")
    if not any(f"${{{k}}}" in str(raw.get("name", "")) for k in columns):
        raise RuleError(raw.line_of("name"), "foreach: the rule name must contain one of the variables, "
                                             f"e.g. {raw.get('name')}_${{{next(iter(columns))}}}")
    out = []
    for i in range(lengths.pop()):
        values = {k: v[i] for k, v in columns.items()}
        copy = _substitute(raw, values)
        del copy["foreach"]
        out.append(copy)
    return out


def _substitute(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, LineDict):
        d = LineDict((k, _substitute(v, values)) for k, v in node.items())
        d.line, d.key_lines = node.line, dict(node.key_lines)
        return d
    if isinstance(node, LineList):
        lst = LineList(_substitute(v, values) for v in node)
        lst.line, lst.item_lines = node.line, list(node.item_lines)
        return lst
    if isinstance(node, str) and "${" in node:
        for k, v in values.items():
            if node == f"${{{k}}}":
                return v  # a whole value keeps its type (a number stays a number)
            node = node.replace(f"${{{k}}}", str(v))
        return node
    return node


def build_condition(spec: Any, line: int, bc: BuildContext) -> Condition:
    """Build a condition from ``"expr"`` text or a one-key mapping ``{type: spec}``."""
    if isinstance(spec, str):
        cond = CONDITION_TYPES["expr"](spec, line, bc)
    elif isinstance(spec, dict) and len(spec) == 1:
        key = next(iter(spec))
        key_line = spec.line_of(key) if isinstance(spec, LineDict) else line
        builder = CONDITION_TYPES.get(key)
        if builder is None:
            raise RuleError(key_line, f"unknown condition type {key!r} (known: {', '.join(sorted(CONDITION_TYPES))})")
        cond = builder(spec[key], key_line, bc)
    else:
        raise RuleError(line, "a condition is an expression string or a mapping with exactly one condition type "
                              f"(known: {', '.join(sorted(CONDITION_TYPES))})")
    if cond.slot < 0 and cond.stateful:
        cond.slot = bc.allocate()
    return cond


def _str_set(raw: Any, line: int, what: str) -> frozenset[str]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise RuleError(line, f"{what}: expected a name or a list of names")
    return frozenset(items)


def build_rule(raw: Any, line: int, source: str, timezone: str, zones: Any, schedules: Any) -> Rule | None:
    """Validate and build one rule (None when ``enabled: false``).

    Raises:
        RuleError: with the line of the offending key.
    """
    if not isinstance(raw, LineDict):
        raise RuleError(line, "a rule must be a mapping")
    for key in raw:
        if key not in _RULE_KEYS:
            raise RuleError(raw.line_of(key), f"unknown key {key!r} (allowed: {', '.join(sorted(_RULE_KEYS))})")
    for key in ("name", "kind", "condition", "severity", "summary"):
        if key not in raw:
            raise RuleError(raw.line, f"missing required key {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise RuleError(raw.line_of("name"), "name must be letters, digits, '_' or '-'")
    if raw.get("enabled", True) is False:
        return None
    kinds = _str_set(raw["kind"], raw.line_of("kind"), "kind")
    for k in kinds:
        if k not in _KINDS:
            raise RuleError(raw.line_of("kind"), f"unknown device kind {k!r} (known: {', '.join(sorted(_KINDS))})")
    severity = raw["severity"]
    if severity not in _SEVERITIES:
        raise RuleError(raw.line_of("severity"), f"severity must be one of info, warning, major, critical, "
                                                  f"got {severity!r}")
    params = _params(raw)
    bc = BuildContext(frozenset(params), zones, schedules, timezone, lambda s, ln: build_condition(s, ln, bc))
    condition = build_condition(raw["condition"], raw.line_of("condition"), bc)
    clear = build_condition(raw["clear"], raw.line_of("clear"), bc) if "clear" in raw else None
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str | int | float | bool) for v in labels.values()):
        raise RuleError(raw.line_of("labels"), "labels must map names to plain values")
    match_labels = raw.get("match_labels") or {}
    if not isinstance(match_labels, dict):
        raise RuleError(raw.line_of("match_labels"), "match_labels must map label names to values")
    match_attributes = raw.get("match_attributes") or {}
    if not isinstance(match_attributes, dict):
        raise RuleError(raw.line_of("match_attributes"), "match_attributes must map attribute names to values")
    templates = {}
    for key in ("summary", "summary_en", "description", "description_en"):
        text = raw.get(key, "")
        if not isinstance(text, str):
            raise RuleError(raw.line_of(key), f"{key} must be text")
        templates[key] = Template(text, raw.line_of(key), key)
    description = templates["description"]
    if templates["description_en"].text:
        joined = (description.text + "\n\n" if description.text else "") + templates["description_en"].text
        description = Template(joined, raw.line_of("description_en"), "description_en")
    flapping = None
    if "flapping" in raw:
        fl = raw["flapping"]
        if not isinstance(fl, LineDict) or set(fl) - {"window", "max_changes"} or "max_changes" not in fl:
            raise RuleError(raw.line_of("flapping"), "flapping: expected {window: 10min, max_changes: 6}")
        changes = fl["max_changes"]
        if not isinstance(changes, int) or changes < 2:
            raise RuleError(fl.line_of("max_changes"), "flapping.max_changes must be an integer >= 2")
        flapping = FlappingSpec(parse_duration(fl.get("window", "10min"), fl.line_of("window"), "flapping.window"),
                                changes)
    rule = Rule(
        name=name, source=source, line=line, kinds=kinds, condition=condition, clear=clear,
        severity=Severity(severity), summary=templates["summary"],
        summary_en=templates["summary_en"] if templates["summary_en"].text else templates["summary"],
        description=description,
        for_s=parse_duration(raw.get("for", 0), raw.line_of("for"), "for"),
        keep_firing_for_s=parse_duration(raw.get("keep_firing_for", 0), raw.line_of("keep_firing_for"),
                                         "keep_firing_for"),
        sites=_str_set(raw["sites"], raw.line_of("sites"), "sites") if "sites" in raw else None,
        devices=_str_set(raw["devices"], raw.line_of("devices"), "devices") if "devices" in raw else None,
        match_labels={str(k): str(v) for k, v in match_labels.items()},
        match_attributes={str(k): (list(v) if isinstance(v, list) else [v]) for k, v in match_attributes.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        params=params, flapping=flapping, slots=bc.slots, digest=spec_digest(raw),
    )
    names = set(rule.condition.value_names())
    if rule.clear is not None:
        names |= rule.clear.value_names()
    rule.value_names = tuple(sorted(names))
    if not (rule.metrics or rule.any_telemetry or rule.events or rule.on_status or rule.needs_tick):
        raise RuleError(raw.line_of("condition"), "the condition reads no metric, event or status, so it would "
                                                  "never be evaluated")
    return rule


def _params(raw: LineDict) -> dict[str, ParamSpec]:
    spec = raw.get("params")
    if spec is None:
        return {}
    if not isinstance(spec, LineDict):
        raise RuleError(raw.line_of("params"), "params must be a mapping of name to value or {attr, default}")
    out: dict[str, ParamSpec] = {}
    for pname, value in spec.items():
        pline = spec.line_of(pname)
        if not pname.isidentifier() or pname.startswith("_"):
            raise RuleError(pline, f"params: {pname!r} is not a valid parameter name")
        if isinstance(value, dict) and "standard" in value:
            what, code = value.get("standard"), value.get("code", "")
            if set(value) - {"standard", "code"} or what not in WHATS or (what != "reference_o2" and not code):
                raise RuleError(pline, f"params.{pname}: expected {{standard: {' | '.join(sorted(WHATS))}, "
                                       "code: POLLUTANT}")
            out[pname] = ParamSpec(pname, None, None, (str(what), str(code)))
        elif isinstance(value, dict):
            extra = set(value) - {"attr", "default", "required"}
            if extra or "attr" not in value:
                raise RuleError(pline, f"params.{pname}: expected {{attr: NAME, default: VALUE}} "
                                       "or {attr: NAME, required: true}")
            required = value.get("required", False)
            if not isinstance(required, bool) or (required and value.get("default") is not None):
                raise RuleError(pline, f"params.{pname}: 'required' is true or false, and a required "
                                       "attribute has no default")
            out[pname] = ParamSpec(pname, str(value["attr"]), value.get("default"), required=required)
        elif isinstance(value, str | int | float | bool | list) or value is None:
            out[pname] = ParamSpec(pname, None, value)
        else:
            raise RuleError(pline, f"params.{pname}: unsupported value {value!r}")
    return out
