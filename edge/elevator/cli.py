"""``vigil edge elevator``: run the elevator edge agent for one elevator.

The wiring shared by every way of running agents lives here too: ``open_agent`` puts a box
driver, an ``ElevatorMonitor`` and a store-and-forward ``EdgeLink`` together, ``run_agents``
runs any number of them on one event loop, and ``serve`` runs one from parsed options. Other
box drivers reuse them from their own command (the simulated box: ``vigil sim elevator-box``
in ``simulators.elevator_box``), so this module never needs to know the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from broker.contracts import Kind
from broker.credentials import add_mqtt_arguments
from edge.elevator.agent import AGENT_NAME, ElevatorAgent, ElevatorMonitor
from edge.elevator.detectors import DetectorThresholds
from edge.elevator.driver import ElevatorBoxDriver
from edge.elevator.signals import ElevatorGeometry
from edge.runtime import EdgeIdentity, EdgeLink, EdgeLinkError, IdentityError, read_password
from edge.runtime.outbox import OPEN_EVENTS_FILE, OpenEventFile

log = logging.getLogger(__name__)

PROG = "vigil edge elevator"


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """The options every elevator agent takes, whatever its box: identity, broker, outbox, installation, timing."""
    p.add_argument("--device-id", required=True, help="elevator id (topics vigil/v1/elevator/{id}/...)")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883")
    p.add_argument("--data-dir", type=Path, default=None, help="outbox folder (default var/edge/elevator-{id})")
    p.add_argument("--floors", type=int, default=None, help="number of landings")
    p.add_argument("--floor-height", type=float, default=None, help="metres between landings")
    p.add_argument("--rated-speed", type=float, default=None,
                   help="rated speed in m/s (required with --modbus: the overspeed detector needs the real figure)")
    p.add_argument("--door-locks-in-safety-circuit", action="store_true",
                   help="the box's safety-circuit signal includes the door locks (enables door-lock bypass detection)")
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


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the agent's options to ``parser`` (a ``vigil edge elevator`` sub-parser) or a new one."""
    p = parser or argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_agent_arguments(p)
    p.add_argument("--modbus", metavar="HOST[:PORT]", help="read a box over Modbus TCP (Vigil reference register map)")
    p.add_argument("--modbus-unit", type=int, default=1, help="Modbus unit id")
    # Simulated boxes moved to ``vigil sim elevator-box``; the old flag is kept only to say so.
    p.add_argument("--simulate", metavar="SCENARIO", help=argparse.SUPPRESS)
    return p


def installation(args: argparse.Namespace, base: ElevatorGeometry) -> ElevatorGeometry:
    """``base`` with the installation options that were given (``--floors``, ``--floor-height``, ...)."""
    return ElevatorGeometry(
        floors=args.floors if args.floors is not None else base.floors,
        floor_height_m=args.floor_height if args.floor_height is not None else base.floor_height_m,
        rated_speed_mps=args.rated_speed if args.rated_speed is not None else base.rated_speed_mps,
        door_locks_in_safety_circuit=bool(args.door_locks_in_safety_circuit) or base.door_locks_in_safety_circuit,
    )


def open_agent(device_id: str, driver: ElevatorBoxDriver, geometry: ElevatorGeometry, mqtt_url: str,
               data_dir: Path, *, password: str | None = None, thresholds: DetectorThresholds | None = None,
               site: str | None = None, sample_hz: float = 10.0, telemetry_interval_s: float = 1.0,
               heartbeat_s: float = 30.0, max_queued: int = 100_000, ca_file: str | None = None,
               clock: Callable[[], float] = time.time) -> ElevatorAgent:
    """An agent for one box: its monitor and its store-and-forward link, opened but not started.

    Args:
        device_id: the elevator's id; also the broker user unless ``mqtt_url`` names one.
        driver: the box driver.
        geometry: the installation, for the detectors.
        mqtt_url: the broker.
        data_dir: the link's outbox folder (one agent per folder).
        password: the broker password (added to ``mqtt_url`` when it names no user).
        thresholds: detector timings and limits (defaults otherwise).
        site: copied into telemetry.
        sample_hz: box readings per second.
        telemetry_interval_s: longest gap between telemetry messages.
        heartbeat_s: period of the retained status heartbeat.
        max_queued: the outbox bound in messages.
        ca_file: CA bundle for ``mqtts://``.
        clock: epoch seconds for timestamps and detector timings.

    Returns:
        The agent; ``agent.link`` is its link (``run_agents`` starts and stops both).

    Raises:
        IdentityError: the device id is not a valid id.
        EdgeLinkError: the outbox folder is in use or cannot be opened.
        ValueError: a bad option (``sample_hz`` not positive, ...).
    """
    if sample_hz <= 0:
        raise ValueError("sample_hz must be positive")  # checked before the link takes its folder
    identity = EdgeIdentity.for_device(Kind.ELEVATOR, device_id, agent=AGENT_NAME, password=password)
    # Open events live in the data folder too: a restarted agent ends (or goes on with) the ones it had.
    monitor = ElevatorMonitor(device_id, geometry, thresholds or DetectorThresholds(),
                              telemetry_interval_s=telemetry_interval_s, site=site,
                              open_events=OpenEventFile(data_dir / OPEN_EVENTS_FILE))
    agent_ref: list[ElevatorAgent] = []
    link = EdgeLink(mqtt_url, identity, data_dir, max_queued=max_queued, heartbeat_s=heartbeat_s, ca_file=ca_file,
                    status_detail=lambda: agent_ref[0].status_detail() if agent_ref else {}, hold_unrouted=True)
    agent = ElevatorAgent(device_id, driver, link, monitor, sample_hz=sample_hz, clock=clock)
    agent_ref.append(agent)
    return agent


async def run_agents(agents: Sequence[ElevatorAgent], *, duration: float | None = None,
                     stop_timeout: float = 5.0) -> None:
    """Start the agents' links, sample every box until cancelled or ``duration`` passed, then stop the links.

    Many agents share one event loop (one MQTT connection and one outbox each); a stopped link
    first delivers what it can within ``stop_timeout`` seconds and says ``shutdown``.
    """
    try:
        for agent in agents:
            await agent.link.start()
        tasks = [asyncio.create_task(a.run(), name=f"elevator-agent-{a.device_id}") for a in agents]
        try:
            if duration is None:
                await asyncio.gather(*tasks)
            else:
                await asyncio.wait(tasks, timeout=duration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(a.link.stop(stop_timeout) for a in agents), return_exceptions=True)
        for agent in agents:
            log.info("elevator %s: stopped; %s", agent.device_id, agent.stats())


async def serve(args: argparse.Namespace, driver: ElevatorBoxDriver, geometry: ElevatorGeometry, *,
                clock: Callable[[], float] = time.time, prog: str = PROG) -> int:
    """Run one agent on ``driver`` as the parsed ``add_agent_arguments`` options say; returns an exit code.

    Runs until SIGINT/SIGTERM, cancellation or ``--duration``; bad options print why and return 2.
    """
    try:
        password = read_password(password_env=args.password_env, password_file=args.password_file)
        agent = open_agent(args.device_id, driver, geometry, args.mqtt,
                           args.data_dir or Path("var/edge") / f"elevator-{args.device_id}", password=password,
                           site=args.site, sample_hz=args.sample_hz, telemetry_interval_s=args.telemetry_interval,
                           heartbeat_s=args.heartbeat, max_queued=args.max_queued, ca_file=args.ca_file, clock=clock)
    except (IdentityError, EdgeLinkError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    task = asyncio.create_task(run_agents([agent], duration=args.duration), name=f"elevator-{args.device_id}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def run_agent(args: argparse.Namespace) -> int:
    """Run the agent as the parsed options say, until cancelled or ``--duration`` passed; returns an exit code."""
    if args.simulate:
        print(f"{PROG}: simulated boxes run with `vigil sim elevator-box --device-id {args.device_id} "
              f"--scenario {args.simulate} ...` (same options)", file=sys.stderr)
        return 2
    if not args.modbus:
        print(f"{PROG}: say where the box is: --modbus HOST[:PORT] (a simulated box: `vigil sim elevator-box`; "
              "other boxes: docs/edge.md, 'Writing a box driver')", file=sys.stderr)
        return 2
    from edge.elevator.modbus import ModbusRegisterMap, ModbusTcpBoxDriver

    host, _, port = args.modbus.rpartition(":") if ":" in args.modbus else (args.modbus, "", "502")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        print(f"{PROG}: --modbus wants HOST[:PORT], got {args.modbus!r}", file=sys.stderr)
        return 2
    missing = [flag for flag, value in (("--rated-speed", args.rated_speed), ("--floors", args.floors),
                                        ("--floor-height", args.floor_height)) if value is None]
    if missing:
        # A real box has no scenario to take the installation from; a guessed rated speed would make
        # the overspeed detector silently wrong, so the installation must be stated.
        print(f"{PROG}: --modbus needs the installation: {', '.join(missing)} "
              "(from the elevator's registry entry)", file=sys.stderr)
        return 2
    if args.rated_speed <= 0 or args.floors < 2 or args.floor_height <= 0:
        print(f"{PROG}: --rated-speed and --floor-height must be positive, --floors at least 2", file=sys.stderr)
        return 2
    driver = ModbusTcpBoxDriver(host, int(port), ModbusRegisterMap(unit_id=args.modbus_unit))
    return await serve(args, driver, installation(args, ElevatorGeometry()))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``vigil edge elevator --device-id ID --mqtt URL --modbus HOST[:PORT] ...``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_agent(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
