"""A driver for a simulated monitoring box: the simulator in ``simulators.elevator`` behind the driver interface."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge.elevator.signals import ElevatorGeometry, ElevatorSignals
from simulators.elevator import CarState, ElevatorScenario, ElevatorSimulation, load_scenario


def signals_from_car(c: CarState) -> ElevatorSignals:
    """What a box fitted to the simulated car would read."""
    return ElevatorSignals(
        position_m=c.position_m, speed_mps=c.speed_mps, direction=c.direction, door=c.door,
        door_zone=c.door_zone, floor=c.floor, occupancy=c.occupancy, load_kg=c.load_kg, power=c.power,
        mode=c.mode, safety_circuit_ok=c.safety_circuit_ok,
    )


class SimulatedBoxDriver:
    """Reads a simulated car; simulated time follows the monotonic clock times ``time_scale``."""

    def __init__(self, scenario: ElevatorScenario | str, *, seed: int | None = None, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scenario = load_scenario(scenario) if isinstance(scenario, str) else scenario
        self.simulation = ElevatorSimulation.from_scenario(self.scenario, seed=seed)
        self._scale = time_scale
        self._clock = clock
        self._last: float | None = None

    @property
    def geometry(self) -> ElevatorGeometry:
        """The simulated installation, for the monitor."""
        e = self.scenario.elevator
        return ElevatorGeometry(floors=e.floors, floor_height_m=e.floor_height_m, rated_speed_mps=e.rated_speed_mps)

    async def open(self) -> None:
        """Start simulated time now."""
        self._last = self._clock()

    async def read(self) -> ElevatorSignals:
        """Advance the simulation to now and read it."""
        now = self._clock()
        if self._last is None:
            self._last = now
        elapsed, self._last = (now - self._last) * self._scale, now
        return signals_from_car(self.simulation.step(elapsed) if elapsed > 0 else self.simulation.state())

    async def close(self) -> None:
        """Nothing to release."""
