"""Subcommands that live with their stage: the rule authors' tools and the edge agents.

Each edge agent keeps its own argument parser (so it also runs as ``python -m ...``); ``vigil
edge NAME ARGS...`` hands ARGS to that agent's ``main``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

EDGE_AGENTS: dict[str, tuple[str, str]] = {
    "hj212": ("edge.hj212.cli", "HJ 212 gateway: TCP server for emission data loggers"),
    "jt808": ("edge.jt808.cli", "JT/T 808 gateway: TCP server for vehicle terminals"),
    "jt809": ("edge.jt809.cli", "JT/T 809 gateway: superior platform receiving lower platforms' vehicles"),
    "elevator": ("edge.elevator.cli", "elevator monitor: a monitoring box's signals to events"),
    "camera": ("edge.camera_agent", "camera agent: OpenCV analytics with evidence snapshots"),
    "modbus": ("edge.modbus.cli", "Modbus TCP gateway: gas detectors, PLC/DCS/SIS gateways, tank gauges"),
}


SIMULATORS: dict[str, tuple[str, str]] = {
    "elevator-fleet": ("simulators.elevator_fleet", "simulated elevators publishing over MQTT, with faults"),
    "elevator-box": ("simulators.elevator_box", "the elevator edge agent reading a simulated monitoring box"),
    "hj212": ("simulators.hj212_logger", "simulated HJ 212 data loggers (TCP clients of the gateway)"),
    "jt808": ("simulators.jt808_terminal", "simulated JT/T 808 vehicle terminals (TCP clients of the gateway)"),
    "jt809": ("simulators.jt809_platform", "simulated JT/T 809 lower platform (main link, sub link, outages)"),
    "camera-scenes": ("simulators.camera_scenes", "render synthetic camera scenes with ground truth"),
    "chemical-park": ("simulators.chemical_park", "simulated chemical park behind real Modbus TCP servers"),
}


def add_rules_commands(sub: Any) -> None:
    """``vigil rules check|test|replay`` (rules stage) and ``vigil rules scenario`` (the scenario harness)."""
    from rules import cli as rules_cli
    from scenario import cli as scenario_cli

    scenario_cli.add_arguments(rules_cli.add_arguments(sub))


def _delegate(table: dict[str, tuple[str, str]]) -> Any:
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(table[args.program][0])
        return int(module.main(args.program_args) or 0)

    return run


def _add_group(sub: Any, name: str, help_text: str, table: dict[str, tuple[str, str]]) -> None:
    group = sub.add_parser(name, help=help_text)
    group_sub = group.add_subparsers(dest="program", required=True)
    for prog, (_module, prog_help) in table.items():
        p = group_sub.add_parser(prog, help=prog_help, add_help=False,
                                 description=f"{prog_help}. Arguments are the program's own: `vigil {name} {prog} --help`.")
        p.add_argument("program_args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(table))


def add_edge_commands(sub: Any) -> None:
    """``vigil edge hj212|jt808|elevator|camera ARGS...`` and ``vigil sim ...``."""
    _add_group(sub, "edge", "edge gateways and agents", EDGE_AGENTS)
    _add_group(sub, "sim", "device simulators", SIMULATORS)


def run_delegated(argv: list[str]) -> int | None:
    """Run ``vigil edge NAME ...`` / ``vigil sim NAME ...`` directly (argparse cannot pass leading options on)."""
    tables = {"edge": EDGE_AGENTS, "sim": SIMULATORS}
    if len(argv) >= 2 and argv[0] in tables and argv[1] in tables[argv[0]]:
        module = importlib.import_module(tables[argv[0]][argv[1]][0])
        return int(module.main(argv[2:]) or 0)
    return None
