"""A simulated elevator monitoring box: ``simulators.elevator``'s car behind edge's box driver interface.

The dependency points one way: this simulator implements ``edge.elevator.driver.ElevatorBoxDriver``
and runs edge's real agent (``ElevatorMonitor`` + store-and-forward ``EdgeLink``); edge never
imports simulators. ``vigil sim elevator-box`` is ``vigil edge elevator`` with a simulated box
in place of ``--modbus``: the same options, plus ``--scenario``, ``--seed`` and ``--time-scale``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable

from edge.elevator.cli import add_agent_arguments, installation, serve
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals
from simulators.elevator import CarState, ElevatorScenario, ElevatorSimulation, ScenarioError, load_scenario

PROG = "vigil sim elevator-box"


def signals_from_car(c: CarState) -> ElevatorSignals:
    """What a box fitted to the simulated car would read."""
    return ElevatorSignals(
        position_m=c.position_m, speed_mps=c.speed_mps, direction=c.direction, door=c.door,
        door_zone=c.door_zone, floor=c.floor, occupancy=c.occupancy, load_kg=c.load_kg, power=c.power,
        mode=c.mode, safety_circuit_ok=c.safety_circuit_ok,
    )


class SimulatedBoxDriver:
    """Reads a simulated car (an ``ElevatorBoxDriver``); simulated time follows ``clock`` times ``time_scale``."""

    def __init__(self, simulation: ElevatorSimulation, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, scenario: ElevatorScenario | None = None) -> None:
        """Read ``simulation``; ``scenario`` is kept for whoever wants to know what it runs."""
        self.simulation = simulation
        self.scenario = scenario
        self._scale = time_scale
        self._clock = clock
        self._last: float | None = None

    @classmethod
    def from_scenario(cls, scenario: ElevatorScenario | str, *, seed: int | None = None, time_scale: float = 1.0,
                      clock: Callable[[], float] = time.monotonic) -> SimulatedBoxDriver:
        """A box on a scenario (or a bundled scenario's name / a scenario file); ``seed`` overrides the scenario's.

        Raises:
            ScenarioError: no such scenario, or an invalid one.
        """
        sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
        return cls(ElevatorSimulation.from_scenario(sc, seed=seed), time_scale=time_scale, clock=clock, scenario=sc)

    @property
    def geometry(self) -> ElevatorGeometry:
        """The simulated installation, for the monitor."""
        e = self.simulation.spec
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


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``vigil sim elevator-box`` (added to ``parser`` or a new one): the agent's, plus the simulation's."""
    p = parser or argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_agent_arguments(p)
    p.add_argument("--scenario", "--simulate", dest="scenario", metavar="SCENARIO", default="normal",
                   help="bundled scenario name (normal, trapped_between_floors, ...) or a scenario file")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per real second (timestamps then follow simulated time)")
    return p


async def run_box(args: argparse.Namespace) -> int:
    """Run the real elevator agent on a simulated box as the parsed options say; returns an exit code."""
    if args.time_scale <= 0:
        print(f"{PROG}: --time-scale must be positive", file=sys.stderr)
        return 2
    try:
        box = SimulatedBoxDriver.from_scenario(args.scenario, seed=args.seed, time_scale=args.time_scale)
    except ScenarioError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    clock: Callable[[], float] = time.time
    if args.time_scale != 1.0:
        # Detector timings and timestamps follow simulated time, so a scaled run detects what a real one does.
        base = time.time()
        clock = lambda: base + box.simulation.t  # noqa: E731
    return await serve(args, box, installation(args, box.geometry), clock=clock, prog=PROG)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``vigil sim elevator-box --device-id ID --mqtt URL --scenario NAME [--time-scale 10]``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_box(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
