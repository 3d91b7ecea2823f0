"""Runs a scenario: device adapters -> ingest -> rules engine -> alert lifecycle, on a scripted clock.

The platform path is the production code: ``DeviceIngest.on_batch`` validates the exact bytes
each adapter produced (as Mosquitto would hand them over), ``RuleEngine`` with the configured
packs and the scenario's registry evaluates them and is ticked like ``RulesService`` ticks it,
transitions are encoded and decoded as on ``vigil/v1/transitions/...``, and
``alerting.lifecycle.apply_transition`` turns them into alerts. Nothing sleeps: the clock is
the arrival time of each message and of each tick.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from alerting.config import AlertingConfig, Deadlines
from alerting.lifecycle import AlertRecord, apply_transition
from broker.contracts import Channel, DeviceMessage, Transition, decode_transition, encode
from broker.ingest import DeviceIngest
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry, RegistryError
from rules.config import SHIPPED_PACKS, RulesConfig
from rules.engine import RuleEngine
from rules.loader import load_rules
from rules.service import configured_files
from scenario.camera import camera_feed
from scenario.devices import Delivery, DeviceFeed, elevator_feed, json_feed
from scenario.gateways import hj212_feed, jt808_feed, scratch_dir, write_registry
from scenario.modbus_adapter import modbus_feed
from scenario.spec import ExpectedAlert, Scenario, ScenarioError, fmt_offset, load_scenario


@dataclass
class AlertOccurrence:
    """One alert as the lifecycle raised it (a reopened alert is a new occurrence)."""

    rule: str
    device: str
    severity: str
    at: float
    """Platform time (offset from the start) the alert was raised."""
    resolved_at: float | None = None
    summary: str = ""
    summary_en: str = ""

    def describe(self) -> str:
        """One line: rule, device, times, severity and summary."""
        end = f"resolved at {fmt_offset(self.resolved_at)}" if self.resolved_at is not None else "still open"
        return (f"{self.rule} @{self.device} at {fmt_offset(self.at)} ({self.severity}), {end}: "
                f"{self.summary_en or self.summary}")


@dataclass
class ScenarioResult:
    """The outcome of one scenario run."""

    path: str
    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    expected: tuple[ExpectedAlert, ...] = ()
    alerts: list[AlertOccurrence] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)
    evaluated: set[str] = field(default_factory=set)
    """Rules exercised by the run: they evaluated, or apply to, a device that sent data."""
    covers: dict[str, str] = field(default_factory=dict)
    """Verified coverage: rule -> ``fires`` or ``quiet`` (only when the scenario passed)."""
    claims: dict[str, str] = field(default_factory=dict)
    """Declared coverage (rule -> ``fires`` / ``quiet``)."""
    rules: set[str] = field(default_factory=set)
    """Every rule loaded for the run."""
    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _LocalBroker:
    """The two calls ``DeviceIngest`` makes on its MQTT client, in memory (dead letters are kept)."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[list[Message]], None]] = []
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, topic_filter: str, handler: Callable[[list[Message]], None], qos: int = 1) -> None:
        self.handlers.append(handler)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, **_: Any) -> None:
        self.published.append((topic, payload))


class _Platform:
    """Ingest, engine and alert lifecycle wired as ``vigil run`` wires them, on a scripted clock."""

    def __init__(self, engine: RuleEngine, epoch: float) -> None:
        self.broker = _LocalBroker()
        self.ingest = DeviceIngest(cast(MqttClient, self.broker), stage="scenario")
        self.engine = engine
        self.epoch = epoch
        self.now = epoch
        self.alerts: list[AlertOccurrence] = []
        self._open: dict[str, tuple[AlertRecord, AlertOccurrence]] = {}
        self._recent: dict[str, AlertRecord] = {}
        defaults = AlertingConfig()
        self._deadlines: Deadlines = defaults.deadlines
        self._reopen_s = defaults.reopen_window_s
        self._ids = 0
        self.ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, self._on_messages)

    def deliver(self, d: Delivery) -> None:
        self.now = self.epoch + d.arrive
        msg = Message(d.topic, d.payload, 1, d.retain, self.now)
        for handler in self.broker.handlers:
            handler([msg])

    def tick(self, at: float) -> None:
        self.now = self.epoch + at
        self._transitions(self.engine.tick(self.now))

    def _on_messages(self, messages: list[DeviceMessage]) -> None:
        self._transitions(self.engine.process(messages, self.now))

    def _transitions(self, transitions: list[Transition]) -> None:
        for tr in transitions:
            # The same bytes alerting would read from vigil/v1/transitions/...
            t = decode_transition(encode(tr))
            current = self._open.get(t.fingerprint)
            self._ids += 1
            out = apply_transition(current[0] if current else None, self._recent.get(t.fingerprint), t, self.now,
                                   new_id=f"scenario-{self._ids}", deadlines=self._deadlines,
                                   reopen_window_s=self._reopen_s)
            rec = out.record
            if rec is None or out.change in ("stale", "ignored"):
                continue
            at = self.now - self.epoch
            if out.change in ("new", "reopened"):
                occ = AlertOccurrence(rec.rule, rec.device_id, rec.severity.value, at, None, rec.summary,
                                      rec.summary_en)
                self.alerts.append(occ)
                self._open[t.fingerprint] = (rec, occ)
            elif out.change == "resolved" and current is not None:
                current[1].resolved_at = at
                del self._open[t.fingerprint]
                self._recent[t.fingerprint] = rec
            elif current is not None:
                occ = current[1]
                occ.severity = rec.severity.value
                self._open[t.fingerprint] = (rec, occ)


def _feeds(scenario: Scenario, registry: DeviceRegistry, registry_file: Path, epoch: float) -> list[DeviceFeed]:
    feeds = []
    for i, spec in enumerate(scenario.devices):
        where = f"{scenario.path}: devices[{i}]"
        device_id = spec["id"]
        # A modbus entry is a gateway (its id a label); its tag map's assets are the registry devices.
        if spec["adapter"] != "modbus" and registry.device(device_id) is None and not spec.get("unregistered"):
            raise ScenarioError(f"{where}: device {device_id!r} is not in the scenario's registry")
        rng = random.Random(f"{scenario.seed}:{device_id}")
        adapter = spec["adapter"]
        dev = registry.device(device_id)
        if adapter == "hj212":
            feeds.append(hj212_feed(spec, where, epoch, rng, registry))
        elif adapter == "jt808":
            feeds.append(jt808_feed(spec, where, epoch, rng, registry, registry_file))
        elif adapter == "elevator":
            feeds.append(elevator_feed(spec, where, epoch, rng, dev.site if dev is not None else None))
        elif adapter == "camera":
            feeds.append(camera_feed(spec, where, epoch, rng, scenario.path.parent))
        elif adapter == "modbus":
            feeds.append(modbus_feed(spec, where, epoch, rng, registry, scenario.path.parent))
        else:
            feeds.append(json_feed(spec, where, epoch, rng))
    return feeds


def run_scenario(scenario: Scenario, record: list[tuple[float, str, bytes]] | None = None) -> ScenarioResult:
    """Run a parsed scenario and compare the alerts with its expectations.

    Args:
        scenario: the parsed file.
        record: if given, every delivered message is appended as (arrival epoch, topic, payload).
    """
    started = time.perf_counter()
    result = ScenarioResult(str(scenario.path), scenario.name, False, expected=scenario.expect.alerts)
    result.claims = {**{r: "quiet" for r in scenario.quiet}, **{r: "fires" for r in scenario.fires}}
    packs = list(scenario.packs) if scenario.packs is not None else list(SHIPPED_PACKS)
    files = configured_files(RulesConfig(packs=packs, paths=[str(f) for f in scenario.rule_files]))
    ruleset = load_rules(files, scenario.timezone)
    if ruleset.errors:
        result.problems.extend(ruleset.errors)
        return result
    result.rules = {r.name for r in ruleset.rules}
    try:
        registry = DeviceRegistry.from_data(scenario.registry, f"{scenario.path}: registry")
    except RegistryError as exc:
        result.problems.append(str(exc))
        return result
    try:
        engine = RuleEngine(ruleset.rules, registry)
    except (RegistryError, ValueError) as exc:
        result.problems.append(f"{scenario.path}: the rules engine refuses the registry: {exc}")
        return result
    epoch = scenario.start.timestamp()
    with scratch_dir() as scratch:
        registry_file = write_registry(scenario.registry, Path(scratch))
        try:
            feeds = _feeds(scenario, registry, registry_file, epoch)
        except ScenarioError as exc:
            result.problems.append(str(exc))
            return result
    deliveries = sorted(((d.arrive, i, d.order, d) for i, f in enumerate(feeds) for d in f.deliveries),
                        key=lambda x: x[:3])
    until = scenario.until if scenario.until is not None else (
        (deliveries[-1][0] if deliveries else 0.0) + 60.0)
    platform = _Platform(engine, epoch)
    next_tick = 0.0
    for arrive, _, _, d in deliveries:
        if arrive > until:
            break
        while next_tick < arrive:
            platform.tick(next_tick)
            next_tick += scenario.tick_every
        platform.deliver(d)
        if record is not None:
            record.append((epoch + arrive, d.topic, d.payload))
        result.messages += 1
    while next_tick <= until + 1e-9:
        platform.tick(next_tick)
        next_tick += scenario.tick_every
    result.alerts = platform.alerts
    result.fired = {a.rule for a in platform.alerts}
    # A rule is exercised when it evaluated a device's data, or applies to a device that sent data
    # (an event rule stays silent unless its event comes: the device-side detector is what is tested).
    result.evaluated = {name for dev in engine.devices.values() for name in dev.rules}
    for dev in engine.devices.values():
        reg = registry.device(dev.device_id)
        result.evaluated.update(r.name for r in ruleset.rules if r.applies_to(dev.device_id, dev.kind, dev.site, reg))
    for f in feeds:
        result.rejected.update(f.rejections)
        result.problems.extend(f.problems)
        result.notes.extend(f.notes)
    result.rejected.update({k.value: v for k, v in platform.ingest.rejected.items()})
    if engine.counters.errors:
        result.problems.append(f"rule evaluations raised {engine.counters.errors} times: {engine.last_error!r}")
    _compare(scenario, result)
    _verify_claims(scenario, result)
    result.passed = not result.problems
    if result.passed:
        result.covers = dict(result.claims)
    result.seconds = time.perf_counter() - started
    return result


def _compare(scenario: Scenario, result: ScenarioResult) -> None:
    expect = scenario.expect
    unmatched = list(result.alerts)
    for e in expect.alerts:
        candidates = [a for a in unmatched if a.rule == e.rule and a.device == e.device]
        near = [a for a in candidates if abs(a.at - e.at) <= e.tolerance + 1e-6]
        want = (f"{e.where}: expected {e.rule} @{e.device} at {fmt_offset(e.at)}±{fmt_offset(e.tolerance)}")
        if not near:
            got = "; ".join(f"at {fmt_offset(a.at)}" for a in candidates) or "no such alert"
            result.problems.append(f"{want} -> got {got}")
            continue
        a = min(near, key=lambda x: abs(x.at - e.at))
        unmatched.remove(a)
        bad = []
        if e.severity is not None and a.severity != e.severity:
            bad.append(f"severity {a.severity} (expected {e.severity})")
        if e.resolved_at is None and a.resolved_at is not None:
            bad.append(f"resolved at {fmt_offset(a.resolved_at)} (expected still open)")
        elif e.resolved_at is not None and a.resolved_at is None:
            bad.append(f"still open (expected resolved at {fmt_offset(e.resolved_at)})")
        elif e.resolved_at is not None and a.resolved_at is not None and \
                abs(a.resolved_at - e.resolved_at) > e.tolerance + 1e-6:
            bad.append(f"resolved at {fmt_offset(a.resolved_at)} (expected {fmt_offset(e.resolved_at)}"
                       f"±{fmt_offset(e.tolerance)})")
        if e.summary_contains is not None and e.summary_contains not in a.summary and \
                e.summary_contains not in a.summary_en:
            bad.append(f"summary {a.summary!r} lacks {e.summary_contains!r}")
        if bad:
            result.problems.append(f"{want}: " + ", ".join(bad))
    if expect.mode == "exact":
        for a in unmatched:
            result.problems.append(f"unexpected alert: {a.describe()}")
    for a in result.alerts:
        if a.rule in expect.never:
            result.problems.append(f"expect.never: {a.rule} raised an alert: {a.describe()}")
    got_rejected = {k: v for k, v in result.rejected.items() if v}
    if expect.rejected is None:
        if got_rejected:
            result.problems.append(f"messages were refused {dict(sorted(got_rejected.items()))}; "
                                   "declare them in expect.rejected if the scenario means it")
    elif got_rejected != {k: v for k, v in expect.rejected.items() if v}:
        result.problems.append(f"expect.rejected: expected {dict(sorted(expect.rejected.items()))}, "
                               f"got {dict(sorted(got_rejected.items()))}")


def _verify_claims(scenario: Scenario, result: ScenarioResult) -> None:
    for rule in scenario.fires:
        if rule not in result.rules:
            result.problems.append(f"covers.fires: no rule {rule!r} is loaded")
        elif rule not in result.fired:
            result.problems.append(f"covers.fires: {rule} raised no alert in this run")
    for rule in scenario.quiet:
        if rule not in result.rules:
            result.problems.append(f"covers.quiet: no rule {rule!r} is loaded")
        elif rule in result.fired:
            result.problems.append(f"covers.quiet: {rule} raised an alert in this run")
        elif rule not in result.evaluated:
            result.problems.append(f"covers.quiet: {rule} applies to no device that sent data in this run "
                                   "(a quiet claim needs the rule to see realistic input)")
        if rule in scenario.fires:
            result.problems.append(f"covers: {rule} is claimed both fires and quiet")


def run_scenario_file(path: str | Path, record: list[tuple[float, str, bytes]] | None = None) -> ScenarioResult:
    """Load and run one scenario file (a file that does not load is a failed result)."""
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        return ScenarioResult(str(path), "<file>", False, [str(exc)])
    return run_scenario(scenario, record)


def format_result(result: ScenarioResult, verbose: bool = False) -> list[str]:
    """Lines for the terminal: PASS/FAIL, and on failure (or verbose) expected vs actual alerts."""
    head = f"{'PASS' if result.passed else 'FAIL'} {result.path}: {result.name} "
    head += f"({result.messages} messages, {len(result.alerts)} alerts, {result.seconds:.1f} s)"
    lines = [head]
    if result.passed and not verbose:
        return lines
    lines.append("  expected alerts:")
    for e in result.expected:
        end = (f"resolved at {fmt_offset(e.resolved_at)}" if e.resolved_at is not None else "still open")
        lines.append(f"    {e.rule} @{e.device} at {fmt_offset(e.at)}±{fmt_offset(e.tolerance)}"
                     f"{f' ({e.severity})' if e.severity else ''}, {end}")
    if not result.expected:
        lines.append("    (none)")
    lines.append("  actual alerts:")
    for a in result.alerts:
        lines.append(f"    {a.describe()}")
    if not result.alerts:
        lines.append("    (none)")
    if result.rejected:
        lines.append(f"  refused: {dict(sorted(result.rejected.items()))}")
    lines.extend(f"  note: {n}" for n in result.notes)
    if result.problems:
        lines.append("  problems:")
        lines.extend(f"    - {p}" for p in result.problems)
    return lines
