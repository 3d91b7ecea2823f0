"""A fleet of simulated elevators publishing contract telemetry over a few MQTT connections.

Used by the demo and by the end-to-end benchmark. Every elevator publishes exactly one
``Telemetry`` per tick (``rate_hz`` ticks per second, ``ts`` = now, ``seq`` counting from 1
per elevator), so a run of ``count`` elevators for ``duration_s`` publishes exactly
``count * round(duration_s * rate_hz)`` telemetry messages, plus the fault events when the
edge detectors run in the loop (``detect=True``). Without ``detect`` the telemetry comes
straight from the physics: the cheapest path, for load on the backbone.

Elevators are spread over the connections round-robin and over each tick in ``slices``
groups, so the load is smooth rather than one burst per tick. That publisher is a load
generator for the backbone (it stands in for many agents' output); the demo instead runs
``SimulatedBoxFleet``: simulated boxes read by edge's real elevator agents, so the demo's
telemetry and events come from ``ElevatorMonitor`` through ``EdgeLink`` as in the field.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.contracts import Channel, Kind, Telemetry, device_topic, encode
from broker.credentials import add_mqtt_arguments
from broker.mqtt import MqttClient
from simulators.elevator import ElevatorSimulation, ElevatorSpec, FaultSpec, FaultType
from simulators.elevator_box import SimulatedBoxDriver, signals_from_car

log = logging.getLogger(__name__)

# Faults handed out by ``fault_fraction``: the ones a control room sees most.
DEFAULT_FAULT_MENU: tuple[FaultType, ...] = (
    FaultType.TRAPPED_BETWEEN_FLOORS, FaultType.POWER_LOSS, FaultType.OVERSPEED, FaultType.DOOR_STUCK_OPEN,
    FaultType.DOOR_FAILS_TO_OPEN,
)

_FAULT_NEEDS: dict[FaultType, tuple[float, float]] = {FaultType.DOOR_STUCK_OPEN: (75.0, 180.0)}
"""(fault duration, shortest run) a fault needs to be detected: door_fail_close waits 60 s."""


@dataclass(frozen=True, slots=True)
class FleetFault:
    """A fault for one elevator of the fleet (``device`` index, or None for one picked by the seed)."""

    fault: FaultSpec
    device: int | None = None


@dataclass(slots=True)
class FleetStats:
    """What a run published."""

    published: int = 0
    telemetry: int = 0
    events: int = 0
    acknowledged: int = 0
    ticks: int = 0
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0
    """Longest delay behind the schedule (the publisher could not keep the rate)."""
    events_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Messages published per second over the run."""
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


def plan_faults(count: int, *, seed: int = 0, faults: Sequence[FleetFault | FaultSpec] = (),
                fault_fraction: float = 0.0, duration_s: float = 60.0) -> dict[int, list[FaultSpec]]:
    """Which elevator (index) gets which faults, deterministically from ``seed``; see ``ElevatorFleet``.

    Raises:
        ValueError: a fault names an elevator the fleet does not have.
    """
    rng = random.Random(seed)
    per_device: dict[int, list[FaultSpec]] = {}
    for item in faults:
        ff = item if isinstance(item, FleetFault) else FleetFault(item)
        index = ff.device if ff.device is not None else rng.randrange(count)
        if not 0 <= index < count:
            raise ValueError(f"fault for elevator {index} but the fleet has {count}")
        per_device.setdefault(index, []).append(ff.fault)
    menu = [k for k in DEFAULT_FAULT_MENU if duration_s >= _FAULT_NEEDS.get(k, (0.0, 0.0))[1]]
    for index in rng.sample(range(count), round(count * max(0.0, min(1.0, fault_fraction)))):
        kind = rng.choice(menu)
        at = rng.uniform(0.1, 0.5) * duration_s
        lasts = max(min(90.0, duration_s / 3), _FAULT_NEEDS.get(kind, (0.0, 0.0))[0])
        per_device.setdefault(index, []).append(FaultSpec(type=kind, at_s=at, duration_s=lasts))
    return per_device


class SimulatedBoxFleet:
    """Simulated monitoring boxes for real elevator agents, with a fresh set of faults every cycle (the demo).

    Only cars and boxes are simulated here: whoever runs the fleet reads each box with edge's
    ``ElevatorAgent`` (``edge.elevator.cli.open_agent``), which detects and publishes. Cycle 0's
    faults and cars are those of ``ElevatorFleet(count, seed=seed, fault_fraction=..., duration_s=cycle_s)``;
    each later cycle arms the faults of seed ``seed + cycle`` in the running cars, so nothing jumps.
    """

    def __init__(self, device_ids: Sequence[str], *, seed: int = 0, spec: ElevatorSpec | None = None,
                 passengers_per_min: float = 2.0, fault_fraction: float = 0.0, cycle_s: float = 120.0,
                 time_scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Build one box per device id; ``time_scale`` and ``clock`` drive each box's simulated time."""
        if not device_ids:
            raise ValueError("a fleet needs at least one elevator")
        if cycle_s <= 0 or time_scale <= 0:
            raise ValueError("cycle_s and time_scale must be positive")
        self.spec = spec or ElevatorSpec()
        self.cycle = 0
        self.cycle_s = cycle_s
        self._seed = seed
        self._fraction = fault_fraction
        self._scale = time_scale
        planned = self._plan(len(device_ids))
        self.boxes: dict[str, SimulatedBoxDriver] = {}
        for i, device_id in enumerate(device_ids):
            sim = ElevatorSimulation(self.spec, seed=seed * 1_000_003 + i, passengers_per_min=passengers_per_min,
                                     faults=planned.get(i, ()),
                                     start_floor=self.spec.lowest_floor + i % self.spec.floors)
            self.boxes[device_id] = SimulatedBoxDriver(sim, time_scale=time_scale, clock=clock)
        self.faulted = [device_ids[i] for i in sorted(planned)]

    def _plan(self, count: int) -> dict[int, list[FaultSpec]]:
        return plan_faults(count, seed=self._seed + self.cycle, fault_fraction=self._fraction,
                           duration_s=self.cycle_s)

    def renew_faults(self) -> list[str]:
        """Start the next cycle: arm its faults from each car's present time; returns the faulted device ids."""
        self.cycle += 1
        planned = self._plan(len(self.boxes))
        for i, box in enumerate(self.boxes.values()):
            box.simulation.renew_faults(planned.get(i, ()))
        ids = list(self.boxes)
        self.faulted = [ids[i] for i in sorted(planned)]
        return self.faulted

    async def run_cycles(self) -> None:
        """Renew the faults every ``cycle_s`` simulated seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.cycle_s / self._scale)
            faulted = self.renew_faults()
            log.info("elevator boxes: cycle %d, faults for %s", self.cycle, ", ".join(faulted) or "none")


class _Member:
    __slots__ = ("device_id", "events_topic", "monitor", "seq", "sim", "topic")

    def __init__(self, device_id: str, sim: ElevatorSimulation, monitor: Any) -> None:
        self.device_id = device_id
        self.sim = sim
        self.monitor = monitor
        self.seq = 0
        self.topic = device_topic(Kind.ELEVATOR, device_id, Channel.TELEMETRY)
        self.events_topic = device_topic(Kind.ELEVATOR, device_id, Channel.EVENT)


class ElevatorFleet:
    """N simulated elevators; ``messages`` steps one of them and returns what it publishes (pure)."""

    def __init__(self, count: int, *, seed: int = 0, spec: ElevatorSpec | None = None,
                 passengers_per_min: float = 2.0, faults: Sequence[FleetFault | FaultSpec] = (),
                 fault_fraction: float = 0.0, duration_s: float = 60.0, detect: bool = False,
                 id_prefix: str = "sim-elev-", site: str | None = None) -> None:
        """Build the fleet; faults are placed deterministically from ``seed``.

        Args:
            count: number of elevators.
            seed: seeds passengers (elevator i uses ``seed * 1_000_003 + i``) and fault placement.
            spec: the installation every elevator shares.
            passengers_per_min: passenger arrivals per elevator.
            faults: explicit faults (a bare ``FaultSpec`` goes to an elevator picked by the seed).
            fault_fraction: share of elevators given one fault from ``DEFAULT_FAULT_MENU`` at a random time.
            duration_s: run length, for placing ``fault_fraction`` faults.
            detect: run the edge fault detectors and publish their events too.
            id_prefix: device ids are ``{id_prefix}{index:05d}`` (index from 1).
            site: copied into telemetry.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        self.spec = spec or ElevatorSpec()
        self.site = site
        per_device = plan_faults(count, seed=seed, faults=faults, fault_fraction=fault_fraction, duration_s=duration_s)
        monitor_factory = _monitor_factory(self.spec) if detect else None
        self.members: list[_Member] = []
        for i in range(count):
            device_id = f"{id_prefix}{i + 1:05d}"
            sim = ElevatorSimulation(self.spec, seed=seed * 1_000_003 + i, passengers_per_min=passengers_per_min,
                                     faults=per_device.get(i, ()),
                                     start_floor=self.spec.lowest_floor + i % self.spec.floors)
            self.members.append(_Member(device_id, sim, monitor_factory(device_id) if monitor_factory else None))
        self.faulted = sorted(per_device)
        self._epoch: float | None = None

    def closing_events(self, now: float) -> list[tuple[int, str, bytes, str]]:
        """(elevator index, topic, payload, type) ending the events still in progress, so no alert hangs."""
        out = []
        for i, m in enumerate(self.members):
            if m.monitor is not None:
                at = (self._epoch + m.sim.t) if self._epoch is not None else now
                out += [(i, m.events_topic, encode(e), e.type) for e in m.monitor.close_all(at, "simulation_end")]
        return out

    def messages(self, index: int, dt: float, now: float, ts: datetime) -> list[tuple[str, bytes, str | None]]:
        """Advance elevator ``index`` by ``dt``; returns (topic, payload, event type or None) to publish."""
        m = self.members[index]
        car = m.sim.step(dt)
        m.seq += 1
        out: list[tuple[str, bytes, str | None]] = [
            (m.topic, encode(Telemetry(ts=ts, metrics=car.metrics(), seq=m.seq, site=self.site)), None)]
        if m.monitor is not None:
            if self._epoch is None:
                self._epoch = now - car.t
            # Detector timings follow simulated time, so unpaced runs detect what paced runs do.
            for event in m.monitor.observe(signals_from_car(car), self._epoch + car.t).events:
                out.append((m.events_topic, encode(event), event.type))
        return out


def _monitor_factory(spec: ElevatorSpec) -> Callable[[str], Any]:
    # The detectors live in the edge package; only fleets that detect need it.
    from edge.elevator.agent import ElevatorMonitor
    from edge.elevator.signals import ElevatorGeometry

    geometry = ElevatorGeometry(floors=spec.floors, floor_height_m=spec.floor_height_m,
                                rated_speed_mps=spec.rated_speed_mps)
    return lambda device_id: ElevatorMonitor(device_id, geometry)


async def publish_fleet(fleet: ElevatorFleet, mqtt_url: str, rate_hz: float, duration_s: float, *,
                        connections: int = 2, qos: int = 1, paced: bool = True, slices: int = 10,
                        window: int = 200, flush_timeout: float = 60.0,
                        client_prefix: str = "vigil-fleet") -> FleetStats:
    """Run ``fleet`` over MQTT for ``round(duration_s * rate_hz)`` ticks and return the figures.

    ``window`` is the QoS 1 in-flight limit per connection: paho scans its whole in-flight
    table on every PUBACK, so a window of thousands costs tens of microseconds per message.

    Raises:
        MqttError: the broker cannot be reached at the start.
    """
    if rate_hz <= 0:
        raise ValueError("rate_hz must be positive")
    ticks = max(1, round(duration_s * rate_hz))
    n = len(fleet.members)
    slices = max(1, min(slices, n))
    bounds = [n * j // slices for j in range(slices + 1)]
    tag = uuid.uuid4().hex[:6]
    clients = [MqttClient(mqtt_url, f"{client_prefix}-{tag}-{c}", clean_start=True, max_pending=window)
               for c in range(max(1, min(connections, n)))]
    stats = FleetStats()
    for client in clients:
        await client.start()
    acked_before = [c.counters["acked_out"] for c in clients]
    dt = 1.0 / rate_hz
    started = time.monotonic()
    try:
        for k in range(ticks):
            for j in range(slices):
                due = started + (k + j / slices) * dt
                lag = time.monotonic() - due
                if paced and lag < 0:
                    await asyncio.sleep(-lag)
                else:
                    stats.max_lag_s = max(stats.max_lag_s, lag)
                now = time.time()
                ts = datetime.fromtimestamp(now, UTC)
                for i in range(bounds[j], bounds[j + 1]):
                    client = clients[i % len(clients)]
                    for topic, payload, event_type in fleet.messages(i, dt, now, ts):
                        if client.pending >= window:
                            await client.publish(topic, payload, qos)
                        else:
                            client.publish_nowait(topic, payload, qos)
                        stats.published += 1
                        if event_type is None:
                            stats.telemetry += 1
                        else:
                            stats.events += 1
                            stats.events_by_type[event_type] = stats.events_by_type.get(event_type, 0) + 1
                if not paced:
                    await asyncio.sleep(0)
            stats.ticks += 1
        for i, topic, payload, event_type in fleet.closing_events(time.time()):
            await clients[i % len(clients)].publish(topic, payload, qos)  # the elevator's own connection: in order
            stats.published += 1
            stats.events += 1
            stats.events_by_type[event_type] = stats.events_by_type.get(event_type, 0) + 1
        for client in clients:
            try:
                async with asyncio.timeout(flush_timeout):
                    await client.flush()
            except TimeoutError:
                log.warning("fleet: %s still has %d unacknowledged messages", client.client_id, client.pending)
    finally:
        stats.elapsed_s = time.monotonic() - started
        stats.acknowledged = sum(c.counters["acked_out"] - b for c, b in zip(clients, acked_before, strict=True))
        for client in clients:
            await client.stop()
    return stats


async def run_fleet(mqtt_url: str, count: int, rate_hz: float, duration_s: float, *,
                    faults: Sequence[FleetFault | FaultSpec] = (), fault_fraction: float = 0.0, seed: int = 0,
                    connections: int = 2, qos: int = 1, detect: bool = False, paced: bool = True,
                    spec: ElevatorSpec | None = None, passengers_per_min: float = 2.0,
                    id_prefix: str = "sim-elev-", site: str | None = None) -> int:
    """Run ``count`` simulated elevators for ``duration_s`` at ``rate_hz`` each; returns messages published.

    Telemetry count is exactly ``count * round(duration_s * rate_hz)``; with ``detect`` the
    fault events are added (events still in progress at the end are ended with
    ``data.reason = "simulation_end"``). All QoS 1 messages are acknowledged by the broker before it returns
    (waits up to 60 s). See ``ElevatorFleet`` for the arguments.
    """
    fleet = ElevatorFleet(count, seed=seed, spec=spec, passengers_per_min=passengers_per_min, faults=faults,
                          fault_fraction=fault_fraction, duration_s=duration_s, detect=detect,
                          id_prefix=id_prefix, site=site)
    stats = await publish_fleet(fleet, mqtt_url, rate_hz, duration_s, connections=connections, qos=qos, paced=paced)
    return stats.published


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``vigil sim elevator-fleet`` (added to ``parser`` or a new one)."""
    p = parser or argparse.ArgumentParser(prog="vigil sim elevator-fleet", description=__doc__)
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--count", type=int, default=100, help="number of elevators")
    p.add_argument("--rate", type=float, default=1.0, help="telemetry messages per elevator per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    p.add_argument("--connections", type=int, default=2, help="MQTT connections shared by the fleet")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-fraction", type=float, default=0.0, help="share of elevators given one random fault")
    p.add_argument("--detect", action="store_true", help="run the edge detectors and publish their events")
    p.add_argument("--unpaced", action="store_true", help="publish as fast as possible")
    p.add_argument("--id-prefix", default="sim-elev-")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``vigil sim elevator-fleet --mqtt URL --count N --rate HZ --duration S``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fleet = ElevatorFleet(args.count, seed=args.seed, fault_fraction=args.fault_fraction, duration_s=args.duration,
                          detect=args.detect, id_prefix=args.id_prefix)
    stats = asyncio.run(publish_fleet(fleet, args.mqtt, args.rate, args.duration, connections=args.connections,
                                      qos=args.qos, paced=not args.unpaced))
    print(f"published {stats.published} ({stats.telemetry} telemetry, {stats.events} events) in "
          f"{stats.elapsed_s:.1f} s = {stats.rate:.0f} msg/s; acknowledged {stats.acknowledged}; "
          f"max lag {stats.max_lag_s:.3f} s; faulted elevators {len(fleet.faulted)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
