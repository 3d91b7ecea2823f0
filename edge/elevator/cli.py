"""``vigil edge elevator``: run the elevator edge agent for one elevator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from broker.contracts import Kind
from edge.elevator.agent import AGENT_NAME, ElevatorAgent
from edge.elevator.detectors import DetectorThresholds
from edge.elevator.driver import ElevatorBoxDriver
from edge.elevator.monitor import ElevatorMonitor
from edge.elevator.signals import ElevatorGeometry
from edge.runtime import EdgeIdentity, EdgeLink, EdgeLinkError, IdentityError, read_password

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the agent's options to ``parser`` (a ``vigil edge elevator`` sub-parser) or a new one."""
    p = parser or argparse.ArgumentParser(prog="vigil edge elevator", description=__doc__)
    p.add_argument("--device-id", required=True, help="elevator id (topics vigil/v1/elevator/{id}/...)")
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL (mqtt:// or mqtts://)")
    p.add_argument("--simulate", metavar="SCENARIO",
                   help="read a simulated box: a bundled scenario name (normal, trapped_between_floors, ...) or a file")
    p.add_argument("--modbus", metavar="HOST[:PORT]", help="read a box over Modbus TCP (Vigil reference register map)")
    p.add_argument("--modbus-unit", type=int, default=1, help="Modbus unit id")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per real second (timestamps then follow simulated time)")
    p.add_argument("--data-dir", type=Path, default=None, help="outbox folder (default var/edge/elevator-{id})")
    p.add_argument("--floors", type=int, default=None, help="number of landings")
    p.add_argument("--floor-height", type=float, default=None, help="metres between landings")
    p.add_argument("--rated-speed", type=float, default=None, help="rated speed in m/s")
    p.add_argument("--site", default=None, help="site id copied into telemetry")
    p.add_argument("--sample-hz", type=float, default=10.0, help="box readings per second")
    p.add_argument("--telemetry-interval", type=float, default=1.0, help="longest gap between telemetry messages")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between status heartbeats")
    p.add_argument("--max-queued", type=int, default=100_000, help="outbox bound in messages")
    p.add_argument("--password-env", default=None, help="environment variable holding the broker password")
    p.add_argument("--password-file", type=Path, default=None, help="file holding the broker password")
    p.add_argument("--ca-file", default=None, help="CA bundle for mqtts://")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    return p


def _geometry(args: argparse.Namespace, base: ElevatorGeometry) -> ElevatorGeometry:
    return ElevatorGeometry(
        floors=args.floors if args.floors is not None else base.floors,
        floor_height_m=args.floor_height if args.floor_height is not None else base.floor_height_m,
        rated_speed_mps=args.rated_speed if args.rated_speed is not None else base.rated_speed_mps,
    )


async def run_agent(args: argparse.Namespace) -> int:
    """Run the agent as the parsed options say, until cancelled or ``--duration`` passed; returns an exit code."""
    driver: ElevatorBoxDriver
    clock: Callable[[], float] = time.time
    if args.simulate:
        from edge.elevator.simulated import SimulatedBoxDriver  # the simulator is only needed for --simulate
        from simulators.elevator import ScenarioError

        try:
            sim = SimulatedBoxDriver(args.simulate, seed=args.seed, time_scale=args.time_scale)
        except ScenarioError as exc:
            print(f"vigil edge elevator: {exc}", file=sys.stderr)
            return 2
        driver, geometry = sim, _geometry(args, sim.geometry)
        if args.time_scale != 1.0:
            # Detector timings and timestamps follow simulated time, so a scaled run detects what a real one does.
            base = time.time()
            clock = lambda: base + sim.simulation.t  # noqa: E731
    elif args.modbus:
        from edge.elevator.modbus import ModbusRegisterMap, ModbusTcpBoxDriver

        host, _, port = args.modbus.rpartition(":") if ":" in args.modbus else (args.modbus, "", "502")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            print(f"vigil edge elevator: --modbus wants HOST[:PORT], got {args.modbus!r}", file=sys.stderr)
            return 2
        driver = ModbusTcpBoxDriver(host, int(port), ModbusRegisterMap(unit_id=args.modbus_unit))
        geometry = _geometry(args, ElevatorGeometry())
    else:
        print("vigil edge elevator: say where the box is: --modbus HOST[:PORT], or --simulate SCENARIO "
              "(see docs/edge.md, 'Writing a box driver')", file=sys.stderr)
        return 2
    try:
        password = read_password(password_env=args.password_env, password_file=args.password_file)
        identity = EdgeIdentity.for_device(Kind.ELEVATOR, args.device_id, agent=AGENT_NAME, password=password)
    except IdentityError as exc:
        print(f"vigil edge elevator: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or Path("var/edge") / f"elevator-{args.device_id}"
    monitor = ElevatorMonitor(args.device_id, geometry, DetectorThresholds(),
                              telemetry_interval_s=args.telemetry_interval, site=args.site)
    agent_ref: list[ElevatorAgent] = []
    try:
        link = EdgeLink(args.mqtt, identity, data_dir, max_queued=args.max_queued, heartbeat_s=args.heartbeat,
                        ca_file=args.ca_file,
                        status_detail=lambda: agent_ref[0].status_detail() if agent_ref else {})
    except (EdgeLinkError, ValueError) as exc:
        print(f"vigil edge elevator: {exc}", file=sys.stderr)
        return 2
    agent = ElevatorAgent(args.device_id, driver, link, monitor, sample_hz=args.sample_hz, clock=clock)
    agent_ref.append(agent)
    await link.start()
    task = asyncio.create_task(agent.run(), name=f"elevator-agent-{args.device_id}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, task.cancel)
    try:
        if args.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), args.duration)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await link.stop()
        log.info("elevator %s: stopped; %s", args.device_id, agent.stats())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``vigil edge elevator --device-id ID --mqtt URL [--simulate SCENARIO]``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_agent(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
