"""The pure rules engine: device messages and the current time in, alert transitions out.

No I/O here. ``process`` takes validated device messages, ``tick`` takes the wall time,
both return ``Transition`` objects; the service publishes them and persists the state.

Each (rule, device) pair is a small state machine::

    inactive --condition--> pending --held for `for`--> firing
    firing --clear signal--> clearing --held for `keep_firing_for`--> resolved (inactive)
    pending --condition false--> inactive;  clearing --clear signal gone--> firing

The clear signal is the rule's ``clear`` condition when given, else the condition's own
clear level (a threshold's ``clear_below``), else "the condition is false" -- so
hysteresis needs no extra rule. A pair is one alert: it fires once and resolves once
(deduplicated per device and rule), identified by ``Rule.fingerprint``.

Time: a device's own timestamps drive its rules. Data older than the device's newest
message ("late") still feeds sliding windows (if inside the window) but never moves a
state machine, so a replayed or redelivered message cannot fire or clear anything twice.
Period records (HJ 212 2051 minute, 2061 hourly, 2031 daily data, whose timestamp is the
*start* of the period and which arrive after its end) keep a clock of their own per
command: they are late only against older records of the same command, are filed in
windows under their period start, are judged at the period's end (or the device's newer
real-time clock) and never touch the real-time state (latest values, flags, clock).
Ticks estimate the device's time as its last timestamp plus the wall time since it was
heard, which promotes pending alerts and auto-resolves instant events while a device is
silent, and judges absence on wall time. A step of the platform's wall clock moves these wall-time
anchors with it (``shift_wall``), so silence and pending timers keep their length across the step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from broker.contracts import (
    DeviceEvent,
    DeviceMessage,
    DeviceStatus,
    Kind,
    Telemetry,
    Transition,
)
from broker.registry import DeviceRegistry, RegistryError
from rules.conditions.base import CLEAR, FIRE, HOLD, Condition, EvalContext, Signal, Steady
from rules.conditions.basic import AbsenceCondition
from rules.emission_limits import check_registry
from rules.model import Rule, missing_required_attributes
from rules.periods import PERIOD_METRIC, PERIOD_SECONDS, period_of
from rules.steady import NOTHING, STALE, TelemetryPlan, changed_keys, rule_steady, scalar_types

INACTIVE: Final = 0
PENDING: Final = 1
FIRING: Final = 2
CLEARING: Final = 3
PHASE_NAMES: Final = ("inactive", "pending", "firing", "clearing")
_NO_SLOTS: Final[list[Any]] = []
_NO_PARAMS: Final[dict[str, Any]] = {}
_NO_PERIODS: Final[dict[str, float]] = {}
"""Shared by devices that never sent a period record (most devices): keeps their state small."""
_ANY_FLAG: Final = "\x00flags"
"""``RuleEngine._readers`` key of the rules reading data flags (not a metric name a device can send)."""
TICK_SLICE_DEVICES: Final = 64
"""``tick_slices`` yields after this many devices."""


class RuleState:
    """One rule's state for one device."""

    __slots__ = ("clear_since", "digest", "flapping", "flaps", "memo", "params", "phase", "published", "published_ts",
                 "signal", "since", "slots", "started_at", "values")

    def __init__(self, rule: Rule, params: dict[str, Any]) -> None:
        self.phase = INACTIVE
        self.since = 0.0
        self.clear_since = 0.0
        self.started_at = 0.0
        self.signal: Signal = None
        # Shared empty containers keep a stateless rule's state small (most rules are stateless).
        self.slots: list[Any] = [None] * rule.slots if rule.slots else _NO_SLOTS
        self.params = params if params else _NO_PARAMS
        self.flaps: list[float] | tuple[()] = ()
        self.flapping = False
        self.published: str | None = None
        self.published_ts = 0.0
        """Device time of the last published transition (a later one never carries an older time)."""
        self.values: dict[str, Any] = _NO_PARAMS
        self.digest = rule.digest
        self.memo: Signal = STALE
        """The condition's last signal on in-order telemetry, reusable while its inputs stay (rules.steady)."""


class DeviceState:
    """What the engine knows about one device."""

    __slots__ = ("device_id", "event_ts", "kind", "last_plan", "last_rx", "last_ts", "last_types",
                 "metrics", "period_end", "periods", "plans", "quality", "rule_cache", "rules", "seen_rx", "settled",
                 "site", "status_ts")

    def __init__(self, device_id: str, kind: Kind, site: str | None) -> None:
        self.device_id = device_id
        self.kind = kind
        self.site = site
        self.last_ts = 0.0
        """Device time of the newest telemetry (older telemetry is late)."""
        self.event_ts = 0.0
        """Device time of the newest event (older events are late)."""
        self.status_ts = 0.0
        self.last_rx = 0.0
        """Wall time of the newest telemetry or event (absence is judged on it)."""
        self.seen_rx = 0.0
        """Wall time of the newest message of any channel (the tick's device-time estimate starts there)."""
        self.metrics: dict[str, Any] = {}
        self.quality: dict[str, Any] = {}
        self.periods: dict[str, float] = _NO_PERIODS
        """Period start of the newest record per period command (``"2061"`` ...): each has its own clock."""
        self.period_end = 0.0
        """End of the newest period record (the device's clock when it sends period data only)."""
        self.rules: dict[str, RuleState] = {}
        self.rule_cache: dict[Any, list[Rule]] = {}
        self.plans: dict[tuple[str, ...], TelemetryPlan] = {}
        self.last_plan: TelemetryPlan | None = None
        """The plan of the last in-order telemetry (its metrics, in order)."""
        self.last_types: tuple[type, ...] | None = None
        """The types of the values that telemetry stored, in order (None: not known, or not all scalars)."""
        self.settled: TelemetryPlan | None = None
        """The plan whose every rule reused or recorded its signal, untouched by the state machine, on the
        device's last telemetry: the same values again change nothing (any other evaluation resets it)."""

    def forget(self) -> None:
        """Drop the cached rule lists and reusable signals (rules, scope or state changed from outside)."""
        self.rule_cache.clear()
        self.plans.clear()
        self.settled = self.last_plan = self.last_types = None
        for rs in self.rules.values():
            rs.memo = STALE


@dataclass
class EngineCounters:
    """What the engine has done (exposed through the service's ``stats``)."""

    messages: int = 0
    evaluations: int = 0
    late: int = 0
    transitions: int = 0
    suppressed_flapping: int = 0
    ticks: int = 0
    errors: int = 0
    """Messages or tick evaluations that raised (a bug in a condition); counted, the stream goes on."""
    reused: int = 0
    """Evaluations saved: nothing the rule reads changed since its last signal, which was reused (rules.steady)."""


@dataclass
class _Index:
    """Rules by kind and trigger, so a message meets only the rules that can apply to it."""

    by_metric: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    any_telemetry: dict[str, list[Rule]] = field(default_factory=dict)
    by_event: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    on_status: dict[str, list[Rule]] = field(default_factory=dict)
    on_tick: list[Rule] = field(default_factory=list)
    silence: list[Rule] = field(default_factory=list)

    @classmethod
    def build(cls, rules: Iterable[Rule]) -> _Index:
        idx = cls()
        for rule in rules:
            for kind in sorted(rule.kinds):
                for metric in rule.metrics:
                    idx.by_metric.setdefault(kind, {}).setdefault(metric, []).append(rule)
                if rule.any_telemetry:
                    idx.any_telemetry.setdefault(kind, []).append(rule)
                for ev in rule.events:
                    idx.by_event.setdefault(kind, {}).setdefault(ev, []).append(rule)
                if rule.on_status:
                    idx.on_status.setdefault(kind, []).append(rule)
            if rule.needs_tick:
                idx.on_tick.append(rule)
            if rule.watches_silence:
                idx.silence.append(rule)
        return idx


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class RuleEngine:
    """Evaluates rules over device messages; keeps per-device, per-rule state."""

    def __init__(self, rules: Iterable[Rule], registry: DeviceRegistry | None = None, reuse: bool = True) -> None:
        self.registry = registry
        self.reuse = reuse
        """Reuse a steady rule's last signal on telemetry that changed nothing it reads (rules.steady); False
        evaluates every candidate rule on every message (the tests compare the two)."""
        self.rules: dict[str, Rule] = {}
        self.devices: dict[str, DeviceState] = {}
        self.counters = EngineCounters()
        self.wall_offset = 0.0
        """Sum of the wall-clock steps applied by ``shift_wall`` (a sliced tick follows a step between pieces)."""
        self.watch_start: float | None = None
        """Wall time the engine began watching (absence of never-seen devices counts from here)."""
        self.changes: list[tuple[str, str]] = []
        """(device, rule) pairs whose state machine changed since ``drain_changes`` (for the journal)."""
        self.last_error: Exception | None = None
        self.orphans: list[Transition] = []
        """Resolutions for alerts of rules removed while the engine was down (filled by a restore)."""
        self._timed: set[tuple[str, str]] = set()
        self._by_kind: dict[Kind, list[DeviceState]] = {}
        """Devices by kind, so the tick visits only devices a time-driven rule can apply to."""
        self._index = _Index()
        self._steady: dict[str, tuple[Condition, Condition | None, Steady | None]] = {}
        """What each rule's signal on in-order telemetry depends on, by the condition objects it was computed for."""
        self._plans: dict[tuple[Any, ...], TelemetryPlan] = {}
        self._readers: dict[str, dict[str, list[Rule]]] = {}
        """Steady rules by kind and the metric they read (``_ANY_FLAG``: they read data flags), triggers or not."""
        """Telemetry plans by kind, metrics and the rules that apply (shared by the devices that meet them)."""
        self.owns: Callable[[str], bool] | None = None
        """With partitions: whether this process handles a device (absence is watched only for its own)."""
        rules = list(rules)
        if registry is not None and any(p.standard is not None for r in rules for p in r.params.values()):
            problems = check_registry(registry)
            if problems:
                # A stack judged against no limit would be silently unsupervised: refuse to start.
                raise RegistryError("emission devices without a usable standard:\n  " + "\n  ".join(problems))
        if registry is not None:
            missing = missing_required_attributes(rules, registry)
            if missing:
                raise RegistryError("devices without attributes their rules require:\n  " + "\n  ".join(missing))
        self.set_rules(rules)

    # ------------------------------------------------------------------ rules

    def set_rules(self, rules: list[Rule], now: float | None = None) -> list[Transition]:
        """Replace the rule set; unchanged rules keep their state, removed ones resolve their alerts."""
        new = {r.name: r for r in rules}
        out: list[Transition] = []
        for dev in self.devices.values():
            dev.forget()
            for name in list(dev.rules):
                rs = dev.rules[name]
                rule = new.get(name)
                if rule is None:
                    old = self.rules.get(name)
                    if old is not None and rs.phase in (FIRING, CLEARING) and rs.published == "firing":
                        ts = now if now is not None else dev.last_ts
                        out.append(self._transition(old, dev, rs, "resolved", ts, None, None))
                    del dev.rules[name]
                    self._timed.discard((dev.device_id, name))
                    self.changes.append((dev.device_id, name))
                elif rule.digest != rs.digest:
                    self._reset_changed(rule, dev, rs)
        self.rules = new
        self._index = _Index.build(rules)
        self._steady.clear()
        self._plans.clear()
        self._readers.clear()
        for r in rules:
            steady = self._steady_of(r)
            if steady is None:
                continue
            for kind in sorted(r.kinds):
                readers = self._readers.setdefault(kind, {})
                for metric in steady.metrics:
                    readers.setdefault(metric, []).append(r)
                if steady.flags:
                    readers.setdefault(_ANY_FLAG, []).append(r)
        return out

    def _reset_changed(self, rule: Rule, dev: DeviceState, rs: RuleState) -> None:
        """A changed rule starts its conditions afresh but keeps a firing alert (no duplicate)."""
        rs.slots = [None] * rule.slots
        rs.digest = rule.digest
        rs.params = self._params(rule, dev.device_id)
        rs.memo = STALE
        if rs.phase == PENDING:
            rs.phase = INACTIVE
        elif rs.phase == CLEARING:
            rs.phase = FIRING
        self._timed.discard((dev.device_id, rule.name))
        self.changes.append((dev.device_id, rule.name))

    def _params(self, rule: Rule, device_id: str) -> dict[str, Any]:
        return {name: p.resolve(self.registry, device_id) for name, p in rule.params.items()}

    def _rules_for(self, dev: DeviceState, key: Any, candidates: list[Rule]) -> list[Rule]:
        cached = dev.rule_cache.get(key)
        if cached is None:
            device = self.registry.device(dev.device_id) if self.registry is not None else None
            cached = [r for r in candidates if r.applies_to(dev.device_id, dev.kind, dev.site, device)]
            dev.rule_cache[key] = cached
        return cached

    def _device(self, device_id: str, kind: Kind | str, site: str | None) -> DeviceState:
        dev = self.devices.get(device_id)
        if dev is None:
            if site is None and self.registry is not None:
                reg = self.registry.device(device_id)
                site = reg.site if reg is not None else None
            dev = self.devices[device_id] = DeviceState(device_id, Kind(kind), site)
            self._by_kind.setdefault(dev.kind, []).append(dev)
        elif site is not None and dev.site is None:
            dev.site = site
            dev.forget()
        return dev

    # ------------------------------------------------------------------ messages

    def process(self, messages: Iterable[DeviceMessage], now: float) -> list[Transition]:
        """Evaluate the rules each message can trigger; ``now`` is wall time (used for absence)."""
        out: list[Transition] = []
        if self.watch_start is None:
            self.watch_start = now
        for msg in messages:
            self.counters.messages += 1
            try:
                self._process_one(msg, now, out)
            except Exception as exc:  # a rule bug must not stop the stream; the service logs it
                self.counters.errors += 1
                self.last_error = exc
        return out

    def _process_one(self, msg: DeviceMessage, now: float, out: list[Transition]) -> None:
        payload = msg.payload
        kind = msg.kind if isinstance(msg.kind, Kind) else Kind(msg.kind)
        # Never later than now: a message stamped before a backward step of the wall clock would otherwise
        # pull last-heard back into the pre-step time and blind absence for the length of the step.
        received = msg.received_at or now
        if received > now:
            received = now
        if isinstance(payload, Telemetry):
            dev = self.devices.get(msg.device_id)
            if dev is None or (payload.site is not None and dev.site is None):
                dev = self._device(msg.device_id, kind, payload.site)
            if received > dev.seen_rx:
                dev.seen_rx = received
            ts = payload.ts.timestamp()
            metrics = payload.metrics
            # (most telemetry is not a period record: look for its marker before calling out)
            cn = period_of(metrics) if PERIOD_METRIC in metrics else None
            if cn is not None:
                self._process_period(dev, cn, payload, kind, ts, now, received, out)
                return
            if ts < dev.last_ts:
                self.counters.late += 1
                dev.last_rx = max(dev.last_rx, received)
                plan = dev.plans.get(tuple(metrics)) or self._plan(dev, kind, metrics)
                if plan.rules:
                    ctx = EvalContext(msg.device_id, kind, ts, {**dev.metrics, **metrics},
                                      {**dev.quality, **(payload.quality or {})}, {}, now, dev.last_rx,
                                      sample=False, late=True, message_metrics=metrics)
                    self._run(plan.rules, dev, ctx, received, out)
                return
            plan = dev.plans.get(tuple(metrics)) or self._plan(dev, kind, metrics)
            changed: Collection[str]
            if plan is dev.last_plan and metrics.items() <= dev.metrics.items():
                # The same metrics as the last message, with values equal to the known ones (at C speed): unchanged
                # if their types are those the last message stored too.
                types = tuple(map(type, metrics.values()))
                if types == dev.last_types:
                    changed = NOTHING
                else:
                    changed = changed_keys(dev.metrics, metrics)
                    dev.last_types = scalar_types(types)
            else:
                changed = changed_keys(dev.metrics, metrics)
                dev.last_plan = plan
                dev.last_types = None
            dev.metrics.update(metrics)  # (always: an equal value still replaces the old one, as -0.0 renders)
            flags: Collection[str] = NOTHING
            if payload.quality:
                flags = changed_keys(dev.quality, payload.quality)
                dev.quality.update(payload.quality)
            dev.last_ts = ts
            if received > dev.last_rx:
                dev.last_rx = received
            last_rx = dev.last_rx
            if changed or flags:
                for name, steady in plan.bystanders:
                    if not (steady.metrics.isdisjoint(changed) and steady.flags.isdisjoint(flags)):
                        rs = dev.rules.get(name)
                        if rs is not None:
                            rs.memo = STALE
                        dev.settled = None
            elif dev.settled is plan and now - last_rx < plan.heard_within:
                # Nothing changed and every rule reused its signal without a step last time: nothing to do.
                self.counters.reused += len(plan.entries)
                return
            if plan.entries:
                ctx = EvalContext(msg.device_id, kind, ts, dev.metrics, dev.quality, {}, now, last_rx,
                                  message_metrics=metrics)
                self._run_telemetry(plan, dev, ctx, changed, flags, received, out)
        elif isinstance(payload, DeviceEvent):
            # Events keep their own clock: an edge agent's detection may carry a timestamp a little
            # older than the telemetry already received, and must not be dropped as late for it.
            dev = self._device(msg.device_id, kind, None)
            dev.seen_rx = max(dev.seen_rx, received)
            ts = _ts(payload.ts)
            late = ts < dev.event_ts
            if not late:
                dev.event_ts = ts
            else:
                self.counters.late += 1
            dev.last_rx = max(dev.last_rx, received)
            by_event = self._index.by_event.get(kind, {})
            cands_e = [*by_event.get(payload.type, ()), *by_event.get("*", ())]
            rules = self._rules_for(dev, ("event", payload.type), cands_e)
            if rules:
                ctx = EvalContext(msg.device_id, kind, ts, dev.metrics, dev.quality, {}, now, dev.last_rx,
                                  sample=False, late=late, event=payload)
                self._run(rules, dev, ctx, received, out)
        elif isinstance(payload, DeviceStatus):
            dev = self._device(msg.device_id, kind, None)
            # A status without a timestamp (the broker's last will) goes on the device's own clock: at
            # receive time, a device whose clock runs slow would have its next online status judged
            # older than the will and ignored, leaving it "offline" while it sends data.
            ts = _ts(payload.ts) if payload.ts is not None else self.device_time(dev, received)
            dev.seen_rx = max(dev.seen_rx, received)
            late = ts < dev.status_ts
            if not late:
                dev.status_ts = ts
            rules = self._rules_for(dev, ("status",), self._index.on_status.get(kind, []))
            if rules:
                ctx = EvalContext(msg.device_id, kind, ts, dev.metrics, dev.quality, {}, now,
                                  dev.last_rx, sample=False, late=late, status=payload)
                self._run(rules, dev, ctx, received, out)

    def _process_period(self, dev: DeviceState, cn: str, payload: Telemetry, kind: Kind, start: float, now: float,
                        received: float, out: list[Transition]) -> None:
        """A period record: its own clock per command, judged at the period's end, real-time state untouched."""
        newest = dev.periods.get(cn)
        late = newest is not None and start < newest
        end = start + PERIOD_SECONDS[cn]
        if late:
            self.counters.late += 1
        else:
            if dev.periods is _NO_PERIODS:
                dev.periods = {}
            dev.periods[cn] = start
            dev.period_end = max(dev.period_end, end)
        dev.last_rx = max(dev.last_rx, received)
        key = ("period", *payload.metrics)
        rules = dev.rule_cache.get(key)
        if rules is None:
            # Only rules that read a metric of the record: flags-only expressions watch the real-time flags.
            by_metric = self._index.by_metric.get(kind, {})
            cands: dict[str, Rule] = {}
            for metric in payload.metrics:
                for r in by_metric.get(metric, ()):
                    cands[r.name] = r
            rules = self._rules_for(dev, key, list(cands.values()))
        if not rules:
            return
        # Judged when it arrives: at the period's end, or later if the real-time clock is already past it,
        # so the decision never goes back in time; the record is seen on its own (its values and flags only).
        decision = max(end, dev.last_ts)
        ctx = EvalContext(dev.device_id, kind, decision, payload.metrics, payload.quality or {}, {}, now,
                          dev.last_rx, sample=not late, late=late, message_metrics=payload.metrics,
                          sample_ts=start)
        self._run(rules, dev, ctx, received, out)

    def _plan(self, dev: DeviceState, kind: Kind, metrics: dict[str, Any]) -> TelemetryPlan:
        """The rules telemetry with these metrics meets on this device (once per device and set of metrics)."""
        key = tuple(metrics)
        by_metric = self._index.by_metric.get(kind, {})
        cands: dict[str, Rule] = {}
        for metric in metrics:
            for r in by_metric.get(metric, ()):
                cands[r.name] = r
        for r in self._index.any_telemetry.get(kind, ()):
            cands[r.name] = r
        # Rules this message does not trigger that still read one of its metrics, or any data flag (bystanders).
        readers = self._readers.get(kind, {})
        maybe: dict[str, Rule] = {}
        for metric in (*metrics, _ANY_FLAG):
            for r in readers.get(metric, ()):
                if r.name not in cands:
                    maybe[r.name] = r
        device = self.registry.device(dev.device_id) if self.registry is not None else None
        rules = [r for r in cands.values() if r.applies_to(dev.device_id, dev.kind, dev.site, device)]
        others = [r for r in maybe.values() if r.applies_to(dev.device_id, dev.kind, dev.site, device)]
        # Devices of one kind and scope meet the same plan: share it (built once, not once per device).
        shared = (kind, key, tuple(r.name for r in rules), tuple(r.name for r in others))
        plan = self._plans.get(shared)
        if plan is None:
            if len(self._plans) >= 10_000:
                self._plans.clear()  # (devices inventing metric names: bounded, rebuilt on demand)
            steady = {r.name: self._steady_of(r) for r in (*rules, *others)}
            plan = self._plans[shared] = TelemetryPlan(rules, steady, others, key)
        dev.plans[key] = plan
        return plan

    def _steady_of(self, rule: Rule) -> Steady | None:
        """What the rule's signal on in-order telemetry depends on (cached per condition object)."""
        if not self.reuse:
            return None
        cached = self._steady.get(rule.name)
        if cached is None or cached[0] is not rule.condition or cached[1] is not rule.clear:
            cached = self._steady[rule.name] = (rule.condition, rule.clear, rule_steady(rule))
        return cached[2]

    def _run_telemetry(self, plan: TelemetryPlan, dev: DeviceState, ctx: EvalContext, changed: Collection[str],
                       flags: Collection[str], received: float, out: list[Transition]) -> None:
        """``_run`` for in-order telemetry: a steady rule whose inputs did not change reuses its last signal."""
        states = dev.rules
        dev.settled = None  # (stays so if a step raises)
        settled = True
        since_heard = ctx.now_wall - ctx.last_rx
        evaluated = 0
        # (a rule that is not steady has heard_within -inf: always evaluated, never recorded)
        for rule, name, evaluate, clear, reads, flag_reads, guards, heard_within in plan.entries:
            rs = states.get(name)
            if rs is None:
                rs = states[name] = RuleState(rule, self._params(rule, dev.device_id))
            ctx.params = rs.params
            if ctx.computed:
                ctx.computed = {}
            sig = rs.memo
            if (sig == STALE or since_heard >= heard_within or (changed and not reads.isdisjoint(changed))
                    or (flags and not flag_reads.isdisjoint(flags))):
                evaluated += 1
                slots = rs.slots
                try:
                    sig = evaluate(ctx, slots)
                    if clear is not None:
                        sig = _with_clear(sig, clear(ctx, slots))
                except Exception as exc:  # one broken rule must not starve the others
                    rs.memo = STALE
                    settled = False
                    self.counters.errors += 1
                    self.last_error = exc
                    continue
                if since_heard < heard_within and (not guards or all(g(slots) for g in guards)):
                    rs.memo = sig
                else:
                    rs.memo = STALE
                    settled = False
            if sig is None:
                continue
            phase = rs.phase
            if ((phase == 0 and sig != 1) or (phase == 2 and sig != -1)) and not rs.flapping:
                continue
            settled = False
            self._step(rule, dev, rs, sig, ctx, received, out)
        self.counters.evaluations += evaluated
        self.counters.reused += len(plan.entries) - evaluated
        if settled:
            dev.settled = plan

    def _run(self, rules: list[Rule], dev: DeviceState, ctx: EvalContext, received: float | None,
             out: list[Transition]) -> None:
        states = dev.rules
        late = ctx.late
        self.counters.evaluations += len(rules)
        dev.settled = None  # (an event, a status, a period record or late data: the state may move)
        for rule in rules:
            rs = states.get(rule.name)
            if rs is None:
                rs = states[rule.name] = RuleState(rule, self._params(rule, dev.device_id))
            rs.memo = STALE
            ctx.params = rs.params
            if ctx.computed:
                ctx.computed = {}
            try:
                sig = rule.condition.evaluate(ctx, rs.slots)
                if rule.clear is not None:
                    sig = _with_clear(sig, rule.clear.evaluate(ctx, rs.slots))
            except Exception as exc:  # one broken rule must not starve the others
                self.counters.errors += 1
                self.last_error = exc
                continue
            if late or sig is None:
                continue
            # Fast path (most evaluations): an inactive rule that does not fire, a firing one that does not clear.
            phase = rs.phase
            # (literals, not the named constants: this loop runs for every evaluation)
            if ((phase == 0 and sig != 1) or (phase == 2 and sig != -1)) and not rs.flapping:
                continue
            self._step(rule, dev, rs, sig, ctx, received, out)

    # ------------------------------------------------------------------ state machine

    def _step(self, rule: Rule, dev: DeviceState, rs: RuleState, sig: Signal, ctx: EvalContext,
              received: float | None, out: list[Transition]) -> None:
        if rs.flapping:
            self._flap_exit(rule, dev, rs, ctx.ts, ctx, received, out)
        if sig is None:
            return
        rs.signal = sig
        ts = ctx.ts
        phase = rs.phase
        key = (dev.device_id, rule.name)
        if phase == INACTIVE:
            if sig == FIRE:
                rs.since = ts
                if rule.for_s <= 0:
                    self._fire(rule, dev, rs, ctx, received, out)
                else:
                    rs.phase = PENDING
                    self._timed.add(key)
                    self.changes.append(key)
        elif phase == PENDING:
            if sig == FIRE:
                if ts - rs.since >= rule.for_s:
                    self._fire(rule, dev, rs, ctx, received, out)
            else:
                rs.phase = INACTIVE
                self._timed.discard(key)
                self.changes.append(key)
        elif phase == FIRING:
            if sig == CLEAR:
                rs.clear_since = ts
                if rule.keep_firing_for_s <= 0:
                    self._resolve(rule, dev, rs, ts, ctx, received, out)
                else:
                    rs.phase = CLEARING
                    self._timed.add(key)
                    self.changes.append(key)
        elif phase == CLEARING:
            if sig == CLEAR:
                if ts - rs.clear_since >= rule.keep_firing_for_s:
                    self._resolve(rule, dev, rs, ts, ctx, received, out)
            else:
                rs.phase = FIRING
                self._timed.discard(key)
                self.changes.append(key)

    def _fire(self, rule: Rule, dev: DeviceState, rs: RuleState, ctx: EvalContext, received: float | None,
              out: list[Transition]) -> None:
        key = (dev.device_id, rule.name)
        rs.phase = FIRING
        rs.started_at = rs.since
        self._timed.discard(key)
        self.changes.append(key)
        rs.values = self._values(rule, dev, rs, ctx)
        self._emit(rule, dev, rs, "firing", ctx.ts, ctx, received, out)

    def _resolve(self, rule: Rule, dev: DeviceState, rs: RuleState, ts: float, ctx: EvalContext | None,
                 received: float | None, out: list[Transition]) -> None:
        key = (dev.device_id, rule.name)
        rs.phase = INACTIVE
        self._timed.discard(key)
        self.changes.append(key)
        if ctx is not None:
            rs.values = self._values(rule, dev, rs, ctx)
        self._emit(rule, dev, rs, "resolved", ts, ctx, received, out)

    def _emit(self, rule: Rule, dev: DeviceState, rs: RuleState, status: str, ts: float, ctx: EvalContext | None,
              received: float | None, out: list[Transition]) -> None:
        fl = rule.flapping
        if fl is not None:
            rs.flaps = [t for t in rs.flaps if t > ts - fl.window]
            rs.flaps.append(ts)
            if rs.flapping:
                self.counters.suppressed_flapping += 1
                self._timed.add((dev.device_id, rule.name))  # the tick ends flapping once calm
                return
            if len(rs.flaps) >= fl.max_changes:
                rs.flapping = True
                self._timed.add((dev.device_id, rule.name))
                if rs.published == "firing" and status == "resolved":
                    # Keep the alert open and say it flaps, instead of resolving it.
                    out.append(self._transition(rule, dev, rs, "firing", ts, ctx, received))
                    return
        if rs.published == status:
            return
        out.append(self._transition(rule, dev, rs, status, ts, ctx, received))

    def _flap_exit(self, rule: Rule, dev: DeviceState, rs: RuleState, ts: float, ctx: EvalContext | None,
                   received: float | None, out: list[Transition]) -> None:
        fl = rule.flapping
        if fl is None:
            rs.flapping = False
            return
        rs.flaps = [t for t in rs.flaps if t > ts - fl.window]
        if len(rs.flaps) > fl.max_changes // 2:
            return
        rs.flapping = False
        self.changes.append((dev.device_id, rule.name))
        status = "firing" if rs.phase in (FIRING, CLEARING) else "resolved"
        if status != rs.published or status == "firing":
            out.append(self._transition(rule, dev, rs, status, ts, ctx, received))

    def _values(self, rule: Rule, dev: DeviceState, rs: RuleState, ctx: EvalContext) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in rule.value_names:
            v = ctx.metrics.get(name)
            if isinstance(v, bool | int | float | str):
                values[name] = v
        for name, v in rs.params.items():
            if isinstance(v, bool | int | float | str):
                values[name] = v
        for name, v in ctx.computed.items():
            if isinstance(v, bool | int | float | str):
                values[name] = round(v, 6) if isinstance(v, float) else v
        return values

    def _transition(self, rule: Rule, dev: DeviceState, rs: RuleState, status: str, ts: float,
                    ctx: EvalContext | None, received: float | None) -> Transition:
        self.counters.transitions += 1
        # A store-and-forward backlog can resolve, with its old device timestamps, an alert the tick
        # fired on estimated device time; alerting drops a transition older than the alert's last
        # one as stale, so the alert would never close. Keep each alert's transitions in time order.
        ts = max(ts, rs.published_ts)
        rs.published_ts = ts
        rs.published = status
        self.changes.append((dev.device_id, rule.name))
        values = dict(rs.values)
        if rs.flapping:
            values["flapping"] = True
        # ``device_id`` and ``kind`` as alerting's templates name them, so a summary written with
        # either vocabulary renders (``探针 {device_id}`` once rendered as ``探针 ?``).
        fields: dict[str, Any] = {**rs.params, **dev.metrics, **values, "device": dev.device_id,
                                  "device_id": dev.device_id, "kind": str(dev.kind),
                                  "site": dev.site or "", "rule": rule.name, "device_name": dev.device_id,
                                  "site_name": dev.site or ""}
        if self.registry is not None:
            reg = self.registry.device(dev.device_id)
            fields["device_name"] = reg.name if reg is not None and reg.name else dev.device_id
            site = self.registry.sites.get(dev.site) if dev.site else None
            fields["site_name"] = site.name if site is not None and site.name else (dev.site or "")
        summary = rule.summary.render(fields)
        summary_en = rule.summary_en.render(fields)
        if rs.flapping:
            summary = f"[频繁抖动, 已抑制] {summary}"
            summary_en = f"[flapping, suppressed] {summary_en}"
        event = ctx.event if ctx is not None else None
        from_data = ctx is not None and (ctx.sample or event is not None or ctx.status is not None)
        source_ts = ctx.data_ts if from_data and ctx is not None else max(dev.last_ts, dev.event_ts)
        if not from_data:
            received = None
        return Transition(
            ts=_dt(ts), fingerprint=rule.fingerprint(dev.device_id), rule=rule.name, status=status,  # type: ignore[arg-type]
            severity=rule.severity, kind=dev.kind, device_id=dev.device_id, site=dev.site,
            labels=dict(rule.labels), summary=summary, summary_en=summary_en,
            description=rule.description.render(fields), values=values, started_at=_dt(rs.started_at),
            source_ts=_dt(source_ts) if source_ts > 0 else None,
            received_at=received,
            snapshot_url=event.snapshot_url if event is not None else None,
        )

    # ------------------------------------------------------------------ time

    def shift_wall(self, delta: float) -> int:
        """The wall clock stepped ``delta`` s: move every wall-time anchor (last heard, absence of one metric,
        the start of watching) so silence and pending timers keep their length. Returns the devices moved."""
        self.wall_offset += delta
        if self.watch_start is not None:
            self.watch_start += delta
        absence = [(r.name, slot) for r in self.rules.values() for slot in _absence_slots(r)]
        for dev in self.devices.values():
            dev.forget()
            if dev.last_rx:
                dev.last_rx += delta
            if dev.seen_rx:
                dev.seen_rx += delta
            for name, slot in absence:
                rs = dev.rules.get(name)
                if rs is not None and rs.slots and rs.slots[slot] is not None:
                    rs.slots[slot] += delta
        return len(self.devices)

    def device_time(self, dev: DeviceState, now: float) -> float:
        """Estimated device time: its last timestamp plus the wall time since it was last heard."""
        newest = max(dev.last_ts, dev.event_ts, dev.status_ts, dev.period_end)
        if newest <= 0:
            return now
        return newest + max(0.0, now - max(dev.seen_rx, dev.last_rx))

    def tick(self, now: float) -> list[Transition]:
        """Advance time-driven rules (absence, pending timers, event expiry, flapping) to wall time ``now``."""
        out: list[Transition] = []
        for part in self.tick_slices(now):
            out.extend(part)
        return out

    def tick_slices(self, now: float, every: int = TICK_SLICE_DEVICES) -> Iterator[list[Transition]]:
        """``tick`` in pieces: yields the transitions found so far after every ``every`` devices.

        The caller may handle messages between pieces (the rules service yields to the event
        loop when a piece ran past its time budget), so a tick over many devices never holds up
        message handling for long. Devices are independent, so the order of work does not matter.
        """
        self.counters.ticks += 1
        if self.watch_start is None:
            self.watch_start = now
        out: list[Transition] = []
        seen = 0
        base = self.wall_offset
        if self.registry is not None and self._index.silence:
            owns = self.owns
            known = self.devices
            # Registered devices never heard yet (once per tick, not once per rule: most have been heard).
            unseen = [d for d in list(self.registry.devices.values())
                      if d.id not in known and (owns is None or owns(d.id))]  # other partitions watch theirs
            for rule in self._index.silence:
                for device in unseen:
                    seen += 1
                    if seen % every == 0:
                        yield out
                        out = []
                        now, base = now + self.wall_offset - base, self.wall_offset  # a step between pieces
                    if device.id not in self.devices and rule.applies_to(device.id, device.kind.value, device.site,
                                                                         device):
                        dev = self._device(device.id, device.kind.value, device.site)
                        dev.last_rx = self.watch_start
        for rule in self._index.on_tick:
            if self.rules.get(rule.name) is not rule:
                continue  # replaced by a reload between pieces
            silence = rule.watches_silence
            name = rule.name
            checks = _tick_checks(rule)
            for kind in rule.kinds:  # (plain loops over the live lists: no generator per device)
                for dev in self._by_kind.get(Kind(kind), ()):
                    seen += 1
                    if seen % every == 0:
                        yield out
                        out = []
                        now, base = now + self.wall_offset - base, self.wall_offset  # a step between pieces
                    rs = dev.rules.get(name)
                    if rs is None:
                        if not silence:
                            continue
                        reg = self.registry.device(dev.device_id) if self.registry is not None else None
                        if not rule.applies_to(dev.device_id, dev.kind, dev.site, reg):
                            continue
                        rs = dev.rules[name] = RuleState(rule, self._params(rule, dev.device_id))
                    phase = rs.phase
                    if not (phase in (PENDING, CLEARING) or rs.flapping):
                        slots = rs.slots
                        for check in checks:
                            if check(slots):
                                break
                        else:
                            continue  # nothing here changes with time alone
                    try:
                        self._tick_one(rule, dev, rs, now, out)
                    except Exception as exc:
                        self.counters.errors += 1
                        self.last_error = exc
        for key in list(self._timed):
            seen += 1
            if seen % every == 0:
                yield out
                out = []
                now, base = now + self.wall_offset - base, self.wall_offset  # a step between pieces
            self._tick_timer(key, now, out)
        yield out

    def _tick_timer(self, key: tuple[str, str], now: float, out: list[Transition]) -> None:
        """Promote a pending alert, resolve a clearing one, or end flapping, by the passage of time."""
        dev_id, name = key
        dev = self.devices.get(dev_id)
        rule = self.rules.get(name)
        rs = dev.rules.get(name) if dev is not None else None
        if dev is None or rule is None or rs is None:
            self._timed.discard(key)
            return
        if rule.needs_tick:
            return  # already evaluated by the tick
        dev.settled = None  # the state machine may step
        ts = self.device_time(dev, now)
        ctx = EvalContext(dev_id, dev.kind, ts, dev.metrics, dev.quality, rs.params, now, dev.last_rx, sample=False)
        if rs.flapping:
            self._flap_exit(rule, dev, rs, ts, ctx, None, out)
        if rs.phase in (PENDING, CLEARING) and rs.signal is not None:
            self._step(rule, dev, rs, rs.signal, ctx, None, out)
        elif rs.phase not in (PENDING, CLEARING) and not rs.flapping:
            self._timed.discard(key)

    def _tick_one(self, rule: Rule, dev: DeviceState, rs: RuleState, now: float, out: list[Transition]) -> None:
        rs.memo = STALE
        dev.settled = None
        ts = self.device_time(dev, now)
        ctx = EvalContext(dev.device_id, dev.kind, ts, dev.metrics, dev.quality, rs.params, now, dev.last_rx,
                          sample=False)
        self.counters.evaluations += 1
        sig = rule.condition.evaluate(ctx, rs.slots)
        if rule.clear is not None:
            sig = _with_clear(sig, rule.clear.evaluate(ctx, rs.slots))
        if sig is None and rs.phase in (PENDING, CLEARING):
            sig = rs.signal
        self._step(rule, dev, rs, sig, ctx, None, out)

    def drain_changes(self) -> list[tuple[str, str]]:
        """(device, rule) pairs changed since the last call (deduplicated, in order)."""
        changes, self.changes = self.changes, []
        return list(dict.fromkeys(changes))

    def firing(self) -> list[tuple[str, str]]:
        """(device, rule) pairs whose alert is firing now."""
        return [(d.device_id, name) for d in self.devices.values() for name, rs in d.rules.items()
                if rs.phase in (FIRING, CLEARING)]


_TICK_CHECKS: dict[int, tuple[Rule, tuple[Callable[[list[Any]], bool], ...]]] = {}


def _tick_checks(rule: Rule) -> tuple[Callable[[list[Any]], bool], ...]:
    """The ``wants_tick`` methods that decide whether time alone can change a rule's signal, flattened.

    A composite condition's ``wants_tick`` is "any of my children's"; calling the leaves (and the
    conditions that decide for their own children) directly gives the same answer without a generator
    per composite per device per tick (the tick walks every device of every ticked rule each second).
    """
    cached = _TICK_CHECKS.get(id(rule))
    if cached is not None and cached[0] is rule:
        return cached[1]
    out: list[Callable[[list[Any]], bool]] = []

    def flatten(cond: Condition) -> None:
        if type(cond).wants_tick is Condition.wants_tick:
            for child in cond.children():
                flatten(child)
        else:
            out.append(cond.wants_tick)

    flatten(rule.condition)
    if rule.clear is not None:
        flatten(rule.clear)
    if len(_TICK_CHECKS) > 10_000:
        _TICK_CHECKS.clear()
    _TICK_CHECKS[id(rule)] = (rule, tuple(out))
    return tuple(out)


def _absence_slots(rule: Rule) -> list[int]:
    """Slots of the rule's absence conditions on one metric (they hold the wall time it was last seen)."""
    conds = [rule.condition, *([rule.clear] if rule.clear is not None else [])]
    return [c.slot for top in conds for c in top.walk() if isinstance(c, AbsenceCondition) and c.metric is not None]


def _with_clear(fire: Signal, clear: Signal) -> Signal:
    """Combine the condition with a separate ``clear`` condition (hysteresis)."""
    if fire == FIRE:
        return FIRE
    if clear == FIRE:
        return CLEAR
    if fire is None and clear is None:
        return None
    return HOLD
