"""Rule unit tests: input series in, expected alerts out (in the spirit of ``promtool test rules``).

A test file (``*_test.yaml``)::

    rule_files: [elevator.yaml]          # relative to the test file
    registry:                            # optional, same shape as the device registry file
      devices: [{id: el-1, kind: elevator, attributes: {rated_speed_mps: 2.0}}]
    tests:
      - name: overspeed held 2 s fires, clears below 105 %
        device: el-1                     # default device for inputs (kind from the registry or `kind`)
        start: 2026-11-26T06:00:00Z      # default
        tick_every: 1s                   # optional: run the engine's tick between inputs
        input:
          - {at: 0s, metrics: {speed_mps: 1.0, door: closed}}
          - {at: 5s, event: {type: trapped_passenger, state: start}}
          - {at: 9s, status: {online: false}}
          - {at: 0s, arrive: 1h, metrics: {x: 1}}   # `arrive`: received later than its timestamp
        series:                          # shorthand: one metric, values every `interval` ('_' = no sample),
          - {metric: speed_mps, start: 1s, interval: 1s, values: "2.4 2.4 2.4 1.9"}
          # optional: `flag: N` (HJ 212 flag of the metric's code), `extra: {cn: 2051}` (metrics sent alongside)
        until: 10min                     # optional end of the test (ticks continue until then)
        expect:
          - {at: 3s, rule: elevator_overspeed, status: firing, values: {speed_mps: 2.4}}
          - {at: 4s, rule: elevator_overspeed, status: resolved}

Every transition the rules produce must be expected (optionally only for ``rules: [...]``
listed in the test), in order, at the expected device time (``at``, within ``tolerance``,
default 0 s). Inputs are received with no delay: wall time equals device time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from broker.contracts import Channel, DeviceEvent, DeviceMessage, DeviceStatus, Kind, Telemetry, Transition
from broker.registry import DeviceRegistry, RegistryError
from rules.conditions.base import RuleError, parse_duration
from rules.engine import RuleEngine
from rules.loader import load_rules
from rules.yamlsrc import LineDict, load_yaml

DEFAULT_START = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


@dataclass
class TestOutcome:
    """One rule test's result."""

    file: str
    name: str
    passed: bool
    problems: list[str]


def _parse_start(raw: Any) -> datetime:
    if raw is None:
        return DEFAULT_START
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def _fmt_offset(seconds: float) -> str:
    return f"{seconds:g}s"


class _Case:
    """One test case turned into a time-ordered list of steps."""

    def __init__(self, spec: LineDict, registry: DeviceRegistry | None, where: str) -> None:
        self.name = str(spec.get("name", f"test at line {spec.line}"))
        self.where = where
        self.start = _parse_start(spec.get("start"))
        self.device = str(spec.get("device", "dev-1"))
        self.kind = str(spec.get("kind", ""))
        if not self.kind and registry is not None and registry.device(self.device) is not None:
            self.kind = registry.devices[self.device].kind.value
        if not self.kind:
            raise RuleError(spec.line, "give the test's 'kind' (or a registry device)")
        self.only = set(spec.get("rules", []) or [])
        self.tolerance = parse_duration(spec.get("tolerance", 0), spec.line_of("tolerance"), "tolerance")
        self.steps: list[tuple[float, int, Any]] = []
        for item in spec.get("input", []) or []:
            self._input(item)
        for s in spec.get("series", []) or []:
            self._series(s)
        last = max((t for t, _, _ in self.steps), default=0.0)
        until = parse_duration(spec["until"], spec.line_of("until"), "until") if "until" in spec else last
        if "tick_every" in spec:
            every = parse_duration(spec["tick_every"], spec.line_of("tick_every"), "tick_every")
            if every <= 0:
                raise RuleError(spec.line_of("tick_every"), "tick_every must be positive")
            n = int(until / every)
            for i in range(n + 1):
                self.steps.append((i * every, 1, None))
        self.steps.sort(key=lambda s: (s[0], s[1]))
        self.expect = []
        for e in spec.get("expect", []) or []:
            if not isinstance(e, dict) or "rule" not in e or "status" not in e:
                raise RuleError(spec.line_of("expect"), "each expectation needs rule and status (and at)")
            line = e.line if isinstance(e, LineDict) else spec.line
            self.expect.append((parse_duration(e.get("at", 0), line, "expect.at"), e, line))

    def _input(self, item: Any) -> None:
        if not isinstance(item, dict) or "at" not in item:
            raise RuleError(getattr(item, "line", 0), "each input needs 'at' and one of metrics/event/status/tick")
        line = item.line if isinstance(item, LineDict) else 0
        at = parse_duration(item["at"], line, "input.at")
        # `arrive`: when the message is received, if not at its timestamp (HJ 212 period records
        # carry their period's start and arrive at its end).
        arrive = parse_duration(item["arrive"], line, "input.arrive") if "arrive" in item else at
        device = str(item.get("device", self.device))
        kind = str(item.get("kind", self.kind))
        ts = self.start + timedelta(seconds=at)
        try:
            if "metrics" in item:
                tel = msgspec.convert({"ts": ts, "metrics": item["metrics"], "quality": item.get("quality"),
                                       "site": item.get("site")}, Telemetry)
                self.steps.append((arrive, 0, DeviceMessage(Kind(kind), device, Channel.TELEMETRY, tel)))
            elif "event" in item:
                ev = msgspec.convert({"ts": ts, **item["event"]}, DeviceEvent)
                self.steps.append((at, 0, DeviceMessage(Kind(kind), device, Channel.EVENT, ev)))
            elif "status" in item:
                st = msgspec.convert({"ts": ts, **item["status"]}, DeviceStatus)
                self.steps.append((at, 0, DeviceMessage(Kind(kind), device, Channel.STATUS, st)))
            elif item.get("tick"):
                self.steps.append((at, 1, None))
            else:
                raise RuleError(line, "an input needs metrics, event, status or tick: true")
        except (msgspec.ValidationError, ValueError) as exc:
            if isinstance(exc, RuleError):
                raise
            raise RuleError(line, f"bad input: {exc}") from None

    def _series(self, s: Any) -> None:
        line = s.line if isinstance(s, LineDict) else 0
        if not isinstance(s, dict) or "metric" not in s or "values" not in s:
            raise RuleError(line, "a series needs metric and values")
        start = parse_duration(s.get("start", 0), line, "series.start")
        interval = parse_duration(s.get("interval", "1s"), line, "series.interval")
        raw = s["values"]
        values = raw if isinstance(raw, list) else str(raw).split()
        flag = s.get("flag")
        device = str(s.get("device", self.device))
        for i, v in enumerate(values):
            if v == "_" or v is None:
                continue
            value: Any = v
            if isinstance(v, str):
                try:
                    value = float(v) if any(c in v for c in ".eE") else int(v)
                except ValueError:
                    value = {"true": True, "false": False}.get(v, v)
            at = start + i * interval
            ts = self.start + timedelta(seconds=at)
            quality = {str(s["metric"]).split(".", 1)[0]: str(flag)} if flag else None
            metrics = {**(s.get("extra") or {}), str(s["metric"]): value}
            tel = Telemetry(ts=ts, metrics=metrics, quality=quality)
            self.steps.append((at, 0, DeviceMessage(Kind(s.get("kind", self.kind)), device, Channel.TELEMETRY, tel)))

    def run(self, engine: RuleEngine) -> list[str]:
        base = self.start.timestamp()
        got: list[Transition] = []
        for at, _, msg in self.steps:
            now = base + at
            if msg is None:
                got.extend(engine.tick(now))
            else:
                dm = DeviceMessage(msg.kind, msg.device_id, msg.channel, msg.payload, now)
                got.extend(engine.process([dm], now))
        if self.only:
            got = [t for t in got if t.rule in self.only]
        return self._compare(got, base)

    def _compare(self, got: list[Transition], base: float) -> list[str]:
        problems = []
        for i in range(max(len(got), len(self.expect))):
            if i >= len(self.expect):
                t = got[i]
                problems.append(f"unexpected {t.status} of {t.rule} for {t.device_id} at "
                                f"{_fmt_offset(t.ts.timestamp() - base)}: {t.summary}")
                continue
            at, e, line = self.expect[i]
            if i >= len(got):
                problems.append(f"line {line}: expected {e['status']} of {e['rule']} at {_fmt_offset(at)}, "
                                "got nothing")
                continue
            t = got[i]
            t_at = t.ts.timestamp() - base
            bad = []
            if t.rule != e["rule"] or t.status != e["status"]:
                bad.append(f"got {t.status} of {t.rule}")
            if abs(t_at - at) > self.tolerance + 1e-6:
                bad.append(f"at {_fmt_offset(t_at)}")
            if "device" in e and t.device_id != str(e["device"]):
                bad.append(f"device {t.device_id}")
            if "severity" in e and t.severity != e["severity"]:
                bad.append(f"severity {t.severity}")
            for k, v in (e.get("values") or {}).items():
                gv = t.values.get(k)
                if isinstance(v, float) and isinstance(gv, int | float):
                    if abs(gv - v) > 1e-6 * max(1.0, abs(v)):
                        bad.append(f"values.{k}={gv}")
                elif gv != v:
                    bad.append(f"values.{k}={gv!r}")
            for key, got_text in (("summary_contains", t.summary), ("summary_en_contains", t.summary_en)):
                if key in e and str(e[key]) not in got_text:
                    bad.append(f"{key.removesuffix('_contains')} {got_text!r}")
            if bad:
                problems.append(f"line {line}: expected {e['status']} of {e['rule']} at {_fmt_offset(at)}: "
                                + ", ".join(bad))
        return problems


def run_test_file(path: str | Path) -> list[TestOutcome]:
    """Run every test in one rule test file."""
    path = Path(path)
    source = str(path)
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, Exception) as exc:
        return [TestOutcome(source, "<file>", False, [f"{source}: cannot load: {exc}"])]
    if not isinstance(doc, LineDict) or not isinstance(doc.get("tests"), list):
        return [TestOutcome(source, "<file>", False, [f"{source}:1: a rule test file needs a 'tests' list"])]
    files = [path.parent / str(f) for f in doc.get("rule_files", [])]
    if not files:
        return [TestOutcome(source, "<file>", False, [f"{source}:{doc.line}: 'rule_files' is empty"])]
    ruleset = load_rules(files, str(doc.get("timezone", "Asia/Shanghai")))
    if ruleset.errors:
        return [TestOutcome(source, "<rules>", False, ruleset.errors)]
    registry = None
    if doc.get("registry") is not None:
        try:
            registry = DeviceRegistry.from_data(_plain(doc["registry"]), f"{source}: registry")
        except RegistryError as exc:
            return [TestOutcome(source, "<registry>", False, [str(exc)])]
    try:
        RuleEngine(ruleset.rules, registry)  # a stack without a usable emission standard fails here
    except RegistryError as exc:
        return [TestOutcome(source, "<registry>", False, [str(exc)])]
    outcomes = []
    for spec in doc["tests"]:
        name = str(spec.get("name", "?")) if isinstance(spec, dict) else "?"
        try:
            if not isinstance(spec, LineDict):
                raise RuleError(doc.line_of("tests"), "each test must be a mapping")
            case = _Case(spec, registry, source)
            engine = RuleEngine(ruleset.rules, registry)
            problems = case.run(engine)
        except RuleError as exc:
            problems = [f"{source}:{exc.line}: {exc.message}"]
        outcomes.append(TestOutcome(source, name, not problems, problems))
    return outcomes


def _plain(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {str(k): _plain(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_plain(v) for v in raw]
    return raw
