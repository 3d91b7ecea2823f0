"""A simulated elevator: car physics, door cycle, passengers and injected faults.

Pure and deterministic: the simulation advances only when ``step(dt)`` is called and draws
every random number from its own seeded generator, so a scenario with a seed replays
identically. The car follows a speed profile limited by rated speed, acceleration and the
distance left (``v <= sqrt(2 a d)``), levels at the landing, and serves calls with a simple
up/down sweep. Faults are armed at a scenario time, wait for the situation they need (a
moving, occupied car; an open door; a trip to the top) and then act for a while.

The fleet runner that publishes many of these over MQTT is ``simulators.elevator_fleet``; the
monitoring box that edge's elevator agent reads is ``simulators.elevator_box``.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml

from simulators.errors import SimulatorError

SCENARIO_DIR: Final = Path(__file__).parent / "scenarios"
_SUBSTEP_S: Final = 0.05
_EMERGENCY_DECEL_MPS2: Final = 3.0


class FaultType(enum.StrEnum):
    """Faults a scenario can inject."""

    OVERSPEED = "overspeed"
    DOOR_STUCK_OPEN = "door_stuck_open"
    MOVING_WITH_DOOR_OPEN = "moving_with_door_open"
    DOOR_FAILS_TO_OPEN = "door_fails_to_open"
    TRAPPED_BETWEEN_FLOORS = "trapped_between_floors"
    POWER_LOSS = "power_loss"
    OVERTRAVEL_TOP = "overtravel_top"
    OVERTRAVEL_BOTTOM = "overtravel_bottom"
    SAFETY_CIRCUIT_OPEN = "safety_circuit_open"
    FLOOR_POSITION_LOST = "floor_position_lost"


class ElevatorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The installation: floors, heights, speeds and door timings."""

    floors: int = 12
    floor_height_m: float = 3.0
    lowest_floor: int = 1
    rated_speed_mps: float = 1.75
    accel_mps2: float = 0.8
    leveling_speed_mps: float = 0.08
    door_zone_m: float = 0.1
    """Half-height of the leveling (door) zone around each landing."""
    door_open_s: float = 2.0
    door_dwell_s: float = 3.0
    door_close_s: float = 2.5
    capacity: int = 13

    @property
    def top_m(self) -> float:
        """Height of the top landing above the bottom landing."""
        return (self.floors - 1) * self.floor_height_m


class FaultSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One injected fault: armed at ``at_s``, active for ``duration_s`` once its situation arises."""

    type: FaultType
    at_s: float
    duration_s: float = 30.0
    factor: float = 1.3
    """Overspeed: speed as a multiple of the rated speed."""
    overtravel_m: float = 0.5
    """Overtravel: how far past the terminal landing the car runs."""
    power: Literal["battery", "lost"] = "battery"
    """Power loss: what the box reports (on its battery, or nothing but a last gasp)."""


class ElevatorScenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scenario file: installation, traffic, faults and the events a monitor should raise."""

    name: str
    description: str = ""
    seed: int = 0
    duration_s: float = 120.0
    elevator: ElevatorSpec = ElevatorSpec()
    passengers_per_min: float = 2.0
    faults: list[FaultSpec] = []
    expect_events: list[str] = []
    """Event types the elevator monitor must raise on this scenario (checked by the tests)."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario file is missing or invalid; the message names the file and the key."""


def scenario_names() -> list[str]:
    """Names of the bundled elevator scenarios (``simulators/scenarios/elevator_{name}.yaml``)."""
    return sorted(p.stem.removeprefix("elevator_") for p in SCENARIO_DIR.glob("elevator_*.yaml"))


def load_scenario(name_or_path: str | Path) -> ElevatorScenario:
    """Load a bundled scenario by name or a scenario file by path.

    Raises:
        ScenarioError: no such scenario, bad YAML, or a key with a wrong value.
    """
    path = Path(name_or_path)
    if not path.exists():
        path = SCENARIO_DIR / f"elevator_{name_or_path}.yaml"
    if not path.exists():
        raise ScenarioError(f"no elevator scenario {str(name_or_path)!r}; bundled: {', '.join(scenario_names())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        return msgspec.convert(raw, ElevatorScenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class CarState:
    """What a monitoring box would read from the car at one instant."""

    t: float
    position_m: float
    velocity_mps: float
    door: str
    door_zone: bool
    floor: int | None
    occupancy: int
    load_kg: float
    power: str
    mode: str
    safety_circuit_ok: bool

    @property
    def speed_mps(self) -> float:
        """Speed, always positive."""
        return abs(self.velocity_mps)

    @property
    def direction(self) -> str:
        """``up``, ``down`` or ``stopped``."""
        if self.velocity_mps > 0.01:
            return "up"
        if self.velocity_mps < -0.01:
            return "down"
        return "stopped"

    def metrics(self) -> dict[str, float | int | bool | str]:
        """The contract's elevator telemetry metrics for this instant."""
        out: dict[str, float | int | bool | str] = {
            "speed_mps": round(self.speed_mps, 3),
            "position_m": round(self.position_m, 3),
            "direction": self.direction,
            "door": self.door,
            "door_zone": self.door_zone,
            "occupancy": self.occupancy,
            "load_kg": round(self.load_kg, 1),
            "power": self.power,
            "mode": self.mode,
            "safety_circuit_ok": self.safety_circuit_ok,
        }
        if self.floor is not None:
            out["floor"] = self.floor
        return out


class _Fault:
    """A fault's life: armed -> waiting for its situation -> active -> done."""

    __slots__ = ("spec", "state", "until")

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.state = "armed"
        self.until = math.inf


# Faults that need passengers and a trip to happen; arming one calls a passenger.
_NEEDS_TRIP: Final = {
    FaultType.OVERSPEED, FaultType.DOOR_STUCK_OPEN, FaultType.MOVING_WITH_DOOR_OPEN,
    FaultType.DOOR_FAILS_TO_OPEN, FaultType.TRAPPED_BETWEEN_FLOORS, FaultType.OVERTRAVEL_TOP,
    FaultType.OVERTRAVEL_BOTTOM,
}


class ElevatorSimulation:
    """One elevator car with passengers and faults, advanced by ``step``."""

    def __init__(self, spec: ElevatorSpec | None = None, *, seed: int = 0, passengers_per_min: float = 2.0,
                 faults: Sequence[FaultSpec] = (), start_floor: int | None = None) -> None:
        self.spec = spec or ElevatorSpec()
        if self.spec.floors < 2:
            raise ValueError("an elevator needs at least 2 floors")
        self._rng = random.Random(seed)
        self._rate_per_s = max(0.0, passengers_per_min) / 60.0
        self.t = 0.0
        index = (start_floor - self.spec.lowest_floor) if start_floor is not None else 0
        self._pos = min(max(index, 0), self.spec.floors - 1) * self.spec.floor_height_m
        self._vel = 0.0
        self._door = "closed"
        self._door_timer = 0.0
        self._target: int | None = None
        self._dir = 0
        self._car_calls: set[int] = set()
        self._waiting: dict[int, list[int]] = {}
        self._riders: list[tuple[int, float]] = []
        self._need_door_cycle = False
        self._arrived = False
        self._overrun_stopped = False
        self._faults = [_Fault(f) for f in faults]
        self._next_arrival = self._draw_arrival()
        self.passengers_served = 0

    @classmethod
    def from_scenario(cls, scenario: ElevatorScenario, *, seed: int | None = None) -> ElevatorSimulation:
        """A simulation set up as the scenario says (``seed`` overrides the scenario's)."""
        return cls(scenario.elevator, seed=scenario.seed if seed is None else seed,
                   passengers_per_min=scenario.passengers_per_min, faults=scenario.faults)

    # ------------------------------------------------------------------ public

    def step(self, dt: float) -> CarState:
        """Advance the simulation by ``dt`` seconds (in sub-steps of at most 50 ms); returns the new state."""
        remaining = dt
        while remaining > 1e-9:
            if self._idle():
                # Nothing moves until the next passenger or fault: jump there instead of ticking.
                wake = min([self._next_arrival, *(f.spec.at_s for f in self._faults if f.state == "armed")])
                jump = min(remaining, wake - self.t)
                if jump > 2 * _SUBSTEP_S:
                    self.t += jump - _SUBSTEP_S
                    remaining -= jump - _SUBSTEP_S
                    continue
            h = min(_SUBSTEP_S, remaining)
            self._tick(h)
            remaining -= h
        return self.state()

    def _idle(self) -> bool:
        return (self._vel == 0.0 and self._door == "closed" and self._target is None and not self._car_calls
                and not self._need_door_cycle and not self._overrun_stopped
                and not any(self._waiting.values())
                and all(f.state in ("armed", "done") for f in self._faults))

    def state(self) -> CarState:
        """The car as a monitoring box reads it now."""
        h = self.spec.floor_height_m
        nearest = min(max(round(self._pos / h), 0), self.spec.floors - 1)
        in_zone = abs(self._pos - nearest * h) <= self.spec.door_zone_m
        floor = None if self._active(FaultType.FLOOR_POSITION_LOST) else self.spec.lowest_floor + nearest
        power_fault = self._active(FaultType.POWER_LOSS)
        return CarState(
            t=self.t, position_m=self._pos, velocity_mps=self._vel, door=self._door, door_zone=in_zone,
            floor=floor, occupancy=len(self._riders), load_kg=sum(w for _, w in self._riders),
            power=power_fault.spec.power if power_fault else "mains", mode="normal",
            safety_circuit_ok=not (self._active(FaultType.SAFETY_CIRCUIT_OPEN) or self._overrun_stopped),
        )

    def call(self, origin_floor: int, destination_floor: int) -> None:
        """A passenger arrives at ``origin_floor`` wanting ``destination_floor`` (building floor numbers)."""
        o = origin_floor - self.spec.lowest_floor
        d = destination_floor - self.spec.lowest_floor
        if not (0 <= o < self.spec.floors and 0 <= d < self.spec.floors) or o == d:
            raise ValueError(f"no trip from floor {origin_floor} to {destination_floor}")
        self._waiting.setdefault(o, []).append(d)

    @property
    def active_faults(self) -> list[FaultType]:
        """Faults acting now."""
        return [f.spec.type for f in self._faults if f.state == "active"]

    def renew_faults(self, faults: Sequence[FaultSpec]) -> None:
        """Replace the faults not yet acting with ``faults``, their ``at_s`` counted from now.

        A fault already acting runs its course, so a long-running simulation (the demo's boxes)
        can take a fresh set of faults without the car jumping to a new state.
        """
        kept = [f for f in self._faults if f.state == "active"]
        self._faults = kept + [_Fault(msgspec.structs.replace(f, at_s=self.t + f.at_s)) for f in faults]

    # ------------------------------------------------------------------ internals

    def _draw_arrival(self) -> float:
        return self.t + self._rng.expovariate(self._rate_per_s) if self._rate_per_s > 0 else math.inf

    def _active(self, kind: FaultType) -> _Fault | None:
        for f in self._faults:
            if f.state == "active" and f.spec.type is kind:
                return f
        return None

    def _stopped_floor(self) -> int | None:
        if abs(self._vel) > 1e-6:
            return None
        h = self.spec.floor_height_m
        idx = round(self._pos / h)
        return idx if 0 <= idx < self.spec.floors and abs(self._pos - idx * h) < 0.005 else None

    def _tick(self, dt: float) -> None:
        self.t += dt
        while self.t >= self._next_arrival:
            o = self._rng.randrange(self.spec.floors)
            d = self._rng.randrange(self.spec.floors - 1)
            self._waiting.setdefault(o, []).append(d if d < o else d + 1)
            self._next_arrival = self._draw_arrival()
        self._update_faults()
        self._door_step(dt)
        self._motion_step(dt)

    def _inject_trip(self, kind: FaultType) -> None:
        here = round(self._pos / self.spec.floor_height_m)
        top = self.spec.floors - 1
        if kind is FaultType.OVERTRAVEL_TOP:
            origin, dest = (here if here != top else 0), top
        elif kind is FaultType.OVERTRAVEL_BOTTOM:
            origin, dest = (here if here != 0 else top), 0
        else:
            origin, dest = here, (0 if here > top / 2 else top)
        self._waiting.setdefault(origin, []).append(dest)

    def _update_faults(self) -> None:
        if not self._faults:
            return
        s = self._stopped_floor()
        for f in self._faults:
            kind = f.spec.type
            if f.state == "armed" and self.t >= f.spec.at_s:
                f.state = "waiting"
                if kind in _NEEDS_TRIP:
                    self._inject_trip(kind)
            if f.state == "waiting" and self._situation(kind, s):
                f.state = "active"
                f.until = self.t + f.spec.duration_s
                if kind in (FaultType.OVERSPEED, FaultType.MOVING_WITH_DOOR_OPEN,
                            FaultType.OVERTRAVEL_TOP, FaultType.OVERTRAVEL_BOTTOM):
                    f.until = math.inf  # these end with the trip (see _arrive / _motion_step)
            elif f.state == "active" and self.t >= f.until:
                f.state = "done"
                if kind in (FaultType.OVERTRAVEL_TOP, FaultType.OVERTRAVEL_BOTTOM):
                    self._overrun_stopped = False  # reset at the limit switch; the car returns to the landing

    def _situation(self, kind: FaultType, stopped_at: int | None) -> bool:
        h = self.spec.floor_height_m
        # Mid-shaft, so that the emergency stop (< 0.6 m) cannot end inside a door zone.
        moving_between = abs(self._vel) > 0.5 and abs(self._pos - round(self._pos / h) * h) > min(0.8, h / 3)
        if kind is FaultType.OVERSPEED:
            return abs(self._vel) > 0.1 and self._target is not None and abs(
                self._target * self.spec.floor_height_m - self._pos) > 2 * self.spec.floor_height_m
        if kind is FaultType.TRAPPED_BETWEEN_FLOORS:
            return moving_between and bool(self._riders)
        if kind is FaultType.DOOR_FAILS_TO_OPEN:
            return self._arrived and bool(self._riders)
        if kind is FaultType.DOOR_STUCK_OPEN:
            return self._door == "open"
        if kind is FaultType.MOVING_WITH_DOOR_OPEN:
            return self._door == "open" and bool(self._car_calls) and stopped_at is not None
        if kind is FaultType.OVERTRAVEL_TOP:
            return self._target == self.spec.floors - 1 and self._vel > 0.1
        if kind is FaultType.OVERTRAVEL_BOTTOM:
            return self._target == 0 and self._vel < -0.1
        return True  # power loss, safety circuit, floor position lost act at once

    def _door_step(self, dt: float) -> None:
        if self._door in ("opening", "closing"):
            self._door_timer -= dt
            if self._door_timer <= 0:
                if self._door == "opening":
                    self._door = "open"
                    self._door_timer = self.spec.door_dwell_s
                    self._exchange()
                else:
                    self._door = "closed"
            return
        if self._door == "open":
            if self._active(FaultType.DOOR_STUCK_OPEN) or self._active(FaultType.MOVING_WITH_DOOR_OPEN):
                return
            self._door_timer -= dt
            if self._door_timer <= 0:
                self._door = "closing"
                self._door_timer = self.spec.door_close_s
            return
        here = self._stopped_floor()
        if here is None or self._blocked():
            return
        if self._active(FaultType.DOOR_FAILS_TO_OPEN):
            return
        if self._need_door_cycle or self._waiting.get(here):
            self._need_door_cycle = False
            self._arrived = False
            self._door = "opening"
            self._door_timer = self.spec.door_open_s

    def _exchange(self) -> None:
        here = round(self._pos / self.spec.floor_height_m)
        before = len(self._riders)
        self._riders = [r for r in self._riders if r[0] != here]
        self.passengers_served += before - len(self._riders)
        queue = self._waiting.get(here, [])
        while queue and len(self._riders) < self.spec.capacity:
            dest = queue.pop(0)
            self._riders.append((dest, round(self._rng.uniform(45.0, 95.0), 1)))
            self._car_calls.add(dest)
        self._car_calls.discard(here)

    def _blocked(self) -> bool:
        """Whether something stops the drive (power, safety circuit, a halting fault)."""
        if not self._faults:
            return self._overrun_stopped
        return bool(self._active(FaultType.POWER_LOSS) or self._active(FaultType.SAFETY_CIRCUIT_OPEN)
                    or self._active(FaultType.TRAPPED_BETWEEN_FLOORS) or self._overrun_stopped
                    or self._active(FaultType.DOOR_FAILS_TO_OPEN) or self._active(FaultType.DOOR_STUCK_OPEN))

    def _choose_target(self) -> int | None:
        h = self.spec.floor_height_m
        here_f = self._pos / h
        calls = set(self._car_calls) | {f for f, q in self._waiting.items() if q}
        here = self._stopped_floor()
        if here is not None:
            calls.discard(here)
        elif not calls:
            return min(max(round(here_f), 0), self.spec.floors - 1)  # re-level to the nearest landing
        if not calls:
            return None
        above = [c for c in calls if c > here_f]
        below = [c for c in calls if c < here_f]
        if above and (self._dir >= 0 or not below):
            return min(above)
        return max(below) if below else min(calls, key=lambda c: abs(c - here_f))

    def _motion_step(self, dt: float) -> None:
        door_ok = self._door == "closed" or (
            self._active(FaultType.MOVING_WITH_DOOR_OPEN) is not None and self._door == "open")
        if self._blocked() or not door_ok:
            if self._vel != 0.0:  # emergency stop on the brake / safety gear
                dv = _EMERGENCY_DECEL_MPS2 * dt
                new = self._vel - math.copysign(min(dv, abs(self._vel)), self._vel)
                self._pos += (self._vel + new) / 2 * dt
                self._vel = new
            return
        if self._target is None:
            self._target = self._choose_target()
            if self._target is None:
                return
        spec = self.spec
        overrun = 0.0
        for kind, sign in ((FaultType.OVERTRAVEL_TOP, 1.0), (FaultType.OVERTRAVEL_BOTTOM, -1.0)):
            f = self._active(kind)
            if f is not None and f.until == math.inf:
                overrun = sign * f.spec.overtravel_m
        goal = self._target * spec.floor_height_m + overrun
        d = goal - self._pos
        if abs(d) < 0.002:
            self._arrive(overrun)
            return
        over = self._active(FaultType.OVERSPEED)
        cap = spec.rated_speed_mps * (over.spec.factor if over else 1.0)
        wanted = max(min(cap, math.sqrt(2 * spec.accel_mps2 * abs(d))), spec.leveling_speed_mps)
        speed = min(wanted, abs(self._vel) + spec.accel_mps2 * dt)
        self._dir = 1 if d > 0 else -1
        step = math.copysign(speed, d) * dt
        if abs(step) >= abs(d):
            self._pos = goal
            self._arrive(overrun)
            return
        self._vel = math.copysign(speed, d)
        self._pos += step

    def _arrive(self, overrun: float) -> None:
        self._vel = 0.0
        if overrun != 0.0:
            # Past the terminal landing: the final limit switch opens the safety circuit.
            self._overrun_stopped = True
            for f in self._faults:
                if f.state == "active" and f.spec.type in (FaultType.OVERTRAVEL_TOP, FaultType.OVERTRAVEL_BOTTOM):
                    f.until = self.t + f.spec.duration_s
            return
        self._target = None
        self._arrived = True
        self._need_door_cycle = True
        here = self._stopped_floor()
        if here is not None:
            self._car_calls.discard(here)
        for f in self._faults:
            if f.state == "active" and f.spec.type in (FaultType.OVERSPEED, FaultType.MOVING_WITH_DOOR_OPEN):
                f.state = "done"
        if self._door == "open":
            self._door_timer = self.spec.door_dwell_s
            self._need_door_cycle = False
            self._exchange()
        if not self._car_calls and not any(self._waiting.values()):
            self._dir = 0


def scenario_info(scenario: ElevatorScenario) -> dict[str, Any]:
    """A short description of a scenario for logs and the demo."""
    return {"name": scenario.name, "seed": scenario.seed, "duration_s": scenario.duration_s,
            "faults": [f.type.value for f in scenario.faults], "expect_events": scenario.expect_events}
