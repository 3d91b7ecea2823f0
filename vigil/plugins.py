"""Subcommands that live with their stage: the rule authors' tools and the edge agents.

Each edge agent keeps its own argument parser (so it also runs as ``python -m ...``); ``vigil
edge NAME ARGS...`` hands ARGS to that agent's ``main``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

EDGE_AGENTS: dict[str, tuple[str, str]] = {
    "hj212": ("edge.hj212.gateway", "HJ 212 gateway: TCP server for emission data loggers"),
    "jt808": ("edge.jt808.gateway", "JT/T 808 gateway: TCP server for vehicle terminals"),
    "elevator": ("edge.elevator.agent", "elevator monitor: a monitoring box's signals to events"),
    "camera": ("edge.camera_agent", "camera agent: OpenCV analytics with evidence snapshots"),
}


def add_rules_commands(sub: Any) -> None:
    """``vigil rules check|test|replay``."""
    from rules import cli as rules_cli

    rules_cli.add_arguments(sub)


def _run_edge(args: argparse.Namespace) -> int:
    module = importlib.import_module(EDGE_AGENTS[args.agent][0])
    return int(module.main(args.agent_args) or 0)


def add_edge_commands(sub: Any) -> None:
    """``vigil edge hj212|jt808|elevator|camera ARGS...``."""
    edge = sub.add_parser("edge", help="edge gateways and agents")
    edge_sub = edge.add_subparsers(dest="agent", required=True)
    for name, (_module, help_text) in EDGE_AGENTS.items():
        p = edge_sub.add_parser(name, help=help_text, add_help=False,
                                description=f"{help_text}. Arguments are the agent's own; see `vigil edge {name} --help`.")
        p.add_argument("agent_args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_run_edge)
