"""Device adapters, part 1: the transport model, plain JSON devices and elevator monitoring boxes.

An adapter turns a device's scripted input into the exact MQTT publications the real edge code
would make (topic, payload bytes, retain) with the platform time each one arrives. Device-side
code runs for real: the elevator adapter feeds box readings to ``ElevatorMonitor`` and encodes
what it returns exactly as ``ElevatorAgent`` does through its ``EdgeLink``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from broker.contracts import Channel, DeviceEvent, DeviceStatus, Kind, Telemetry, device_topic, encode
from scenario.spec import ScenarioError, ValueGen, duration, gens, offset


@dataclass(frozen=True, slots=True)
class Delivery:
    """One MQTT publication as it reaches the platform."""

    arrive: float
    """Platform time (offset from the scenario start) the message arrives."""
    order: int
    """Production order (keeps a device's messages in order when they arrive together)."""
    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class DeviceFeed:
    """What one device adapter produced."""

    device_id: str
    deliveries: list[Delivery] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    """Refusals by the device-side gateway session (reason -> count)."""
    problems: list[str] = field(default_factory=list)
    """The device could not do what the scenario says, and no counted refusal explains it."""
    notes: list[str] = field(default_factory=list)
    """What happened to the device worth showing (a refused registration, counted in ``rejections``)."""


@dataclass(frozen=True, slots=True)
class Outage:
    """The device's link is down between ``start`` and ``end``."""

    start: float
    end: float
    mode: str = "buffer"
    status: bool = True
    backfill: bool = False
    will_after: float = 0.0
    """Edge agents: the broker publishes the last will this long after the link died (1.5 x keepalive)."""

    def covers(self, t: float) -> bool:
        """Whether ``t`` falls in the outage."""
        return self.start <= t < self.end


def parse_outages(raw: Any, where: str) -> list[Outage]:
    """The ``outages`` list of a device."""
    out = []
    for i, o in enumerate(raw or []):
        ow = f"{where}.outages[{i}]"
        if not isinstance(o, dict) or "from" not in o or "until" not in o:
            raise ScenarioError(f"{ow}: each outage needs from and until")
        unknown = set(o) - {"from", "until", "mode", "status", "backfill", "will_after"}
        if unknown:
            raise ScenarioError(f"{ow}: unknown keys {sorted(unknown)}")
        mode = str(o.get("mode", "buffer"))
        if mode not in ("buffer", "drop"):
            raise ScenarioError(f"{ow}.mode: buffer or drop")
        start, end = offset(o["from"], f"{ow}.from"), offset(o["until"], f"{ow}.until")
        if end <= start:
            raise ScenarioError(f"{ow}: until must be after from")
        out.append(Outage(start, end, mode, bool(o.get("status", True)), bool(o.get("backfill", False)),
                          duration(o.get("will_after", 0), f"{ow}.will_after")))
    return sorted(out, key=lambda o: o.start)


class Transport:
    """Delay, jitter, duplicates and (for edge agents) store-and-forward outages of one device's link."""

    def __init__(self, spec: dict[str, Any], where: str, rng: random.Random, feed: DeviceFeed, *,
                 edge_outages: bool) -> None:
        self.latency = duration(spec.get("latency", 0), f"{where}.latency")
        self.jitter = duration(spec.get("jitter", 0), f"{where}.jitter")
        try:
            self.duplicates = float(spec.get("duplicates", 0.0))
        except (TypeError, ValueError):
            raise ScenarioError(f"{where}.duplicates: a fraction between 0 and 1") from None
        self.outages = parse_outages(spec.get("outages"), where)
        self.edge_outages = edge_outages
        self.rng = rng
        self.feed = feed
        self._order = 0

    def _arrival(self, t: float) -> float:
        return t + self.latency + (self.rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    def outage_at(self, t: float) -> Outage | None:
        """The outage in force at ``t``, if any."""
        for o in self.outages:
            if o.covers(t):
                return o
        return None

    def send(self, t: float, topic: str, payload: bytes, retain: bool = False, *, may_duplicate: bool = True) -> None:
        """Publish at device time ``t`` (offset); arrival follows latency, jitter and edge outages."""
        arrive = self._arrival(t)
        if self.edge_outages:
            o = self.outage_at(t)
            if o is not None:
                if o.mode == "drop":
                    return
                # The agent's outbox keeps the message and delivers it, in order, after the reconnect.
                arrive = max(arrive, o.end + self.latency)
        self._push(arrive, topic, payload, retain)
        if may_duplicate and self.duplicates and self.rng.random() < self.duplicates:
            self._push(arrive + 0.001, topic, payload, retain)

    def raw(self, arrive: float, topic: str, payload: bytes, retain: bool = False) -> None:
        """A publication at a fixed arrival time (a broker's last will)."""
        self._push(arrive, topic, payload, retain)

    def _push(self, arrive: float, topic: str, payload: bytes, retain: bool) -> None:
        self._order += 1
        self.feed.deliveries.append(Delivery(arrive, self._order, topic, payload, retain))


def edge_link_status(transport: Transport, kind: Kind, device_id: str, agent: str, connect_at: float,
                     epoch: float) -> None:
    """Retained statuses an ``EdgeLink`` makes: online on connect, the broker's last will in outages."""
    topic = device_topic(kind, device_id, Channel.STATUS)
    transport.raw(connect_at + transport.latency, topic,
                  encode(DeviceStatus(ts=_dt(epoch + connect_at), online=True, reason="connected", agent=agent)), True)
    for o in transport.outages:
        if not o.status:
            continue
        # The will carries no timestamp (the broker publishes it); the link says online again on reconnect.
        if o.start + o.will_after < o.end:
            transport.raw(o.start + o.will_after, topic,
                          encode(DeviceStatus(online=False, reason="connection_lost", agent=agent)), True)
        transport.raw(o.end + transport.latency, topic,
                      encode(DeviceStatus(ts=_dt(epoch + o.end), online=True, reason="connected", agent=agent)), True)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def repeat_times(item: dict[str, Any], where: str) -> list[float]:
    """``at`` alone, or ``at``/``from`` with ``every`` and ``until``: the send times of an input item."""
    first = offset(item.get("at", item.get("from", 0)), f"{where}.at")
    if "every" not in item:
        return [first]
    every = duration(item["every"], f"{where}.every")
    if every <= 0 or "until" not in item:
        raise ScenarioError(f"{where}: every needs a positive period and until")
    until = offset(item["until"], f"{where}.until")
    n = int((until - first) / every + 1e-9)
    times = [first + k * every for k in range(n + 1)]
    return [t for t in times if t < until - 1e-9] or [first]


def _values(g: dict[str, ValueGen], index: int, fraction: float, rng: random.Random) -> dict[str, Any]:
    return {k: v.at(index, fraction, rng) for k, v in g.items()}


# ---------------------------------------------------------------------------- json

_JSON_KEYS = frozenset({"at", "from", "every", "until", "metrics", "quality", "site", "event", "status", "raw",
                        "channel", "seq"})


def json_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random) -> DeviceFeed:
    """Plain contract JSON (sensors, third-party agents): ``input`` items and ``series``."""
    device_id = spec["id"]
    feed = DeviceFeed(device_id)
    unknown = set(spec) - {"kind", "input", "series"} - {"id", "adapter", "latency", "jitter", "clock_offset",
                                                          "duplicates", "outages", "unregistered"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        kind = Kind(str(spec.get("kind")))
    except ValueError:
        raise ScenarioError(f"{where}.kind: one of {[k.value for k in Kind]}") from None
    transport = Transport(spec, where, rng, feed, edge_outages=True)
    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    for o in transport.outages:
        if o.status:
            topic = device_topic(kind, device_id, Channel.STATUS)
            if o.start + o.will_after < o.end:
                transport.raw(o.start + o.will_after, topic,
                              encode(DeviceStatus(online=False, reason="connection_lost")), True)
            transport.raw(o.end + transport.latency, topic,
                          encode(DeviceStatus(ts=_dt(epoch + o.end + skew), online=True, reason="connected")), True)
    items: list[tuple[float, int, str, bytes, bool]] = []
    for i, item in enumerate(spec.get("input") or []):
        iw = f"{where}.input[{i}]"
        if not isinstance(item, dict):
            raise ScenarioError(f"{iw}: a mapping is needed")
        unknown = set(item) - _JSON_KEYS
        if unknown:
            raise ScenarioError(f"{iw}: unknown keys {sorted(unknown)}")
        times = repeat_times(item, iw)
        metric_gens = gens(item.get("metrics"), f"{iw}.metrics")
        span = (times[-1] - times[0]) or 1.0
        for k, t in enumerate(times):
            ts = _dt(epoch + t + skew)
            try:
                if "raw" in item:
                    channel = Channel(str(item.get("channel", "telemetry")))
                    items.append((t, len(items), device_topic(kind, device_id, channel),
                                  str(item["raw"]).encode("utf-8"), channel is Channel.STATUS))
                elif "metrics" in item:
                    tel = msgspec.convert({"ts": ts, "metrics": _values(metric_gens, k, (t - times[0]) / span, rng),
                                           "quality": item.get("quality"), "site": item.get("site"),
                                           "seq": item.get("seq")}, Telemetry)
                    items.append((t, len(items), device_topic(kind, device_id, Channel.TELEMETRY), encode(tel), False))
                elif "event" in item:
                    ev = msgspec.convert({"ts": ts, **item["event"]}, DeviceEvent)
                    items.append((t, len(items), device_topic(kind, device_id, Channel.EVENT), encode(ev), False))
                elif "status" in item:
                    st = msgspec.convert({"ts": ts, **item["status"]}, DeviceStatus)
                    items.append((t, len(items), device_topic(kind, device_id, Channel.STATUS), encode(st), True))
                else:
                    raise ScenarioError(f"{iw}: an input needs metrics, event, status or raw")
            except (msgspec.ValidationError, TypeError, ValueError) as exc:
                raise ScenarioError(f"{iw}: bad input: {exc}") from None
    for i, s in enumerate(spec.get("series") or []):
        sw = f"{where}.series[{i}]"
        if not isinstance(s, dict) or "metric" not in s or "values" not in s:
            raise ScenarioError(f"{sw}: a series needs metric and values")
        start = offset(s.get("start", 0), f"{sw}.start")
        interval = duration(s.get("interval", 1), f"{sw}.interval")
        raw_values = s["values"] if isinstance(s["values"], list) else str(s["values"]).split()
        for k, v in enumerate(raw_values):
            if v == "_" or v is None:
                continue
            t = start + k * interval
            metrics = {**(s.get("extra") or {}), str(s["metric"]): _scalar(v)}
            quality = {str(s["metric"]).split(".", 1)[0]: str(s["flag"])} if s.get("flag") else None
            tel = Telemetry(ts=_dt(epoch + t + skew), metrics=metrics, quality=quality)
            items.append((t, len(items), device_topic(kind, device_id, Channel.TELEMETRY), encode(tel), False))
    for t, _, topic, payload, retain in sorted(items):
        transport.send(t, topic, payload, retain)
    return feed


def _scalar(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return float(v) if any(c in v for c in ".eE") else int(v)
    except ValueError:
        return {"true": True, "false": False}.get(v, v)


# ---------------------------------------------------------------------------- elevator

_SIGNAL_FIELDS = ("position_m", "speed_mps", "direction", "door", "door_zone", "floor", "occupancy", "load_kg",
                  "power", "mode", "safety_circuit_ok", "alarm_button")
_IDLE = {"position_m": 0.0, "speed_mps": 0.0, "direction": "stopped", "door": "closed", "door_zone": True,
         "floor": 1, "occupancy": 0, "load_kg": 0.0, "power": "mains", "mode": "normal", "safety_circuit_ok": True,
         "alarm_button": False}


def elevator_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random,
                  site: str | None) -> DeviceFeed:
    """Box readings (simulated car or explicit signals) through the real ``ElevatorMonitor``."""
    from edge.elevator.agent import AGENT_NAME, ElevatorMonitor
    from edge.elevator.detectors import DetectorThresholds
    from edge.elevator.signals import ElevatorGeometry, ElevatorSignals
    from edge.runtime.outbox import MemoryOpenEvents
    from simulators.elevator import ElevatorScenario, ElevatorSimulation, load_scenario
    from simulators.elevator import ScenarioError as SimError
    from simulators.elevator_box import signals_from_car

    device_id = spec["id"]
    feed = DeviceFeed(device_id)
    unknown = set(spec) - {"geometry", "thresholds", "sample_hz", "telemetry_interval_s", "simulate", "signals",
                           "box_lost", "box_lost_after", "restarts"} - {"id", "adapter", "latency", "jitter", "clock_offset",
                                                            "duplicates", "outages", "unregistered"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    transport = Transport(spec, where, rng, feed, edge_outages=True)
    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    hz = float(spec.get("sample_hz", 10))
    if hz <= 0:
        raise ScenarioError(f"{where}.sample_hz must be positive")
    sim_spec = spec.get("simulate")
    scenario: ElevatorScenario | None = None
    sim_from = sim_until = 0.0
    if sim_spec is not None:
        if not isinstance(sim_spec, dict):
            raise ScenarioError(f"{where}.simulate: a mapping is needed")
        sim_from = offset(sim_spec.get("from", 0), f"{where}.simulate.from")
        try:
            inline = {k: v for k, v in sim_spec.items() if k not in ("scenario", "from", "until")}
            if "scenario" in sim_spec:
                base = load_scenario(str(sim_spec["scenario"]))
                raw = msgspec.to_builtins(base)
                raw.update(inline)
                scenario = msgspec.convert(raw, ElevatorScenario)
            else:
                scenario = msgspec.convert({"name": device_id, **inline}, ElevatorScenario)
        except (SimError, msgspec.ValidationError) as exc:
            raise ScenarioError(f"{where}.simulate: {exc}") from None
        sim_until = (offset(sim_spec["until"], f"{where}.simulate.until") if "until" in sim_spec
                     else sim_from + scenario.duration_s)
    try:
        if "geometry" in spec:
            geometry = msgspec.convert(spec["geometry"], ElevatorGeometry)
        elif scenario is not None:
            e = scenario.elevator
            geometry = ElevatorGeometry(floors=e.floors, floor_height_m=e.floor_height_m,
                                        rated_speed_mps=e.rated_speed_mps)
        else:
            geometry = ElevatorGeometry()
        thresholds = msgspec.convert(spec.get("thresholds") or {}, DetectorThresholds)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    open_events = MemoryOpenEvents()
    """The agent's data folder: its open events outlive a restart (edge/runtime/outbox.py)."""

    def new_monitor() -> ElevatorMonitor:
        return ElevatorMonitor(device_id, geometry, thresholds,
                               telemetry_interval_s=float(spec.get("telemetry_interval_s", 1.0)), site=site,
                               open_events=open_events)

    monitor = new_monitor()
    # The agent process restarts (crash, upgrade, watchdog): the monitor's state is gone except its
    # open events (kept in its data folder, ended or continued after the restart), and the link
    # says online again when it reconnects.
    # `restarts: [2min]` is an instant restart; `{from: 3min, until: 5min}` keeps the agent down in
    # between (no readings; the broker's last will `will_after` past `from`), restarting at `until`.
    restarts: list[float] = []
    down: list[tuple[float, float]] = []
    for i, r in enumerate(spec.get("restarts") or []):
        rw = f"{where}.restarts[{i}]"
        if isinstance(r, dict):
            if set(r) - {"from", "until", "will_after"} or "from" not in r or "until" not in r:
                raise ScenarioError(f"{rw}: a duration, or {{from, until, will_after}}")
            d_from, d_until = offset(r["from"], f"{rw}.from"), offset(r["until"], f"{rw}.until")
            if d_until <= d_from:
                raise ScenarioError(f"{rw}: until must be after from")
            down.append((d_from, d_until))
            restarts.append(d_until)
            if d_from + duration(r.get("will_after", 0), f"{rw}.will_after") < d_until:
                transport.raw(d_from + duration(r.get("will_after", 0), f"{rw}.will_after"),
                              device_topic(Kind.ELEVATOR, device_id, Channel.STATUS),
                              encode(DeviceStatus(online=False, reason="connection_lost", agent=AGENT_NAME)), True)
        else:
            restarts.append(offset(r, rw))
    restarts.sort()
    readings: list[tuple[float, ElevatorSignals | None]] = []
    if scenario is not None:
        sim = ElevatorSimulation.from_scenario(scenario)
        n = int((sim_until - sim_from) * hz + 1e-9)
        for k in range(n):
            state = sim.state() if k == 0 else sim.step(1.0 / hz)
            readings.append((sim_from + k / hz, signals_from_car(state)))
    current = dict(_IDLE)
    for i, seg in enumerate(spec.get("signals") or []):
        sw = f"{where}.signals[{i}]"
        if not isinstance(seg, dict) or "from" not in seg or "until" not in seg:
            raise ScenarioError(f"{sw}: each segment needs from, until (and set)")
        g = gens(seg.get("set"), f"{sw}.set")
        bad = set(g) - set(_SIGNAL_FIELDS)
        if bad:
            raise ScenarioError(f"{sw}.set: unknown signals {sorted(bad)} (known: {list(_SIGNAL_FIELDS)})")
        start, end = offset(seg["from"], f"{sw}.from"), offset(seg["until"], f"{sw}.until")
        n = int((end - start) * hz + 1e-9)
        for k in range(n):
            current.update(_values(g, k, k / max(n - 1, 1), rng))
            try:
                readings.append((start + k / hz, ElevatorSignals(**current)))  # type: ignore[arg-type]
            except TypeError as exc:
                raise ScenarioError(f"{sw}: {exc}") from None
    readings.sort(key=lambda r: r[0])
    lost = parse_outages(spec.get("box_lost"), f"{where}.box_lost") if spec.get("box_lost") else []
    lost_after = int(spec.get("box_lost_after", 20))
    status_topic = device_topic(Kind.ELEVATOR, device_id, Channel.STATUS)
    if readings:
        edge_link_status(transport, Kind.ELEVATOR, device_id, AGENT_NAME, readings[0][0], epoch + skew)
    failures = 0
    for t, signals in readings:
        while restarts and restarts[0] <= t:
            monitor = new_monitor()
            transport.send(restarts[0], status_topic, encode(DeviceStatus(ts=_dt(epoch + restarts.pop(0) + skew),
                                                                          online=True, reason="connected",
                                                                          agent=AGENT_NAME)), True, may_duplicate=False)
        if any(d_from <= t < d_until for d_from, d_until in down):
            continue  # the agent is not running: nobody reads the box
        if any(o.covers(t) for o in lost):
            # The box does not answer: after `box_lost_after` failed reads the agent says so (ElevatorAgent).
            failures += 1
            if failures == lost_after:
                transport.send(t, status_topic, encode(DeviceStatus(ts=_dt(epoch + t + skew), online=False,
                                                                    reason="box_unreachable", agent=AGENT_NAME)),
                               True, may_duplicate=False)
            continue
        if failures >= lost_after:
            transport.send(t, status_topic, encode(DeviceStatus(ts=_dt(epoch + t + skew), online=True,
                                                                reason="box_recovered", agent=AGENT_NAME)),
                           True, may_duplicate=False)
        failures = 0
        assert signals is not None
        out = monitor.observe(signals, epoch + t + skew)
        if out.telemetry is not None:
            transport.send(t, device_topic(Kind.ELEVATOR, device_id, Channel.TELEMETRY), encode(out.telemetry))
        for event in out.events:
            transport.send(t, device_topic(Kind.ELEVATOR, device_id, Channel.EVENT), encode(event))
    return feed
