"""``vigil edge jt809 --listen HOST:PORT --platforms FILE --registry FILE --mqtt URL``: the JT/T 809 gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.jt809.directory import DirectoryError, FilePlatforms, RegistryVehicles, load_platforms
from edge.jt809.gateway import DEFAULT_LIMITS, DEFAULT_PORT, Jt809Gateway
from edge.jt809.session import STAGE, Jt809Platform
from edge.runtime.cli import (
    add_server_arguments,
    add_uplink_arguments,
    limits_from_args,
    run_gateway,
    serve_until_stopped,
    setup_logging,
)
from edge.runtime.uplink import dead_letter_sink, open_uplink, stop_on_signals

__all__ = ["DEFAULT_PORT", "build_parser", "limits_from_args", "main", "run", "serve"]

log = logging.getLogger("edge.jt809.gateway")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``vigil edge jt809``."""
    p = parser or argparse.ArgumentParser(prog="vigil edge jt809", description="JT/T 809 gateway: Vigil as the "
                                          "superior platform; lower platforms connect their main links here")
    add_server_arguments(p, port=DEFAULT_PORT, who="lower platforms' main links", defaults=DEFAULT_LIMITS)
    add_uplink_arguments(p, name="jt809", data_dir_help="outbox folder: queue messages on disk while the broker is "
                         "unreachable and deliver them in order, all QoS 1 (default: publish directly)")
    p.add_argument("--platforms", metavar="FILE", required=True,
                   help="lower platforms: access code, user id, password, keys (re-read when it changes)")
    p.add_argument("--registry", metavar="FILE", required=True,
                   help="device registry YAML: its vehicles by plate and colour (re-read when it changes)")
    p.add_argument("--sublink-heartbeat", type=float, default=60.0, metavar="S", help="0x9005 interval on sub links")
    return p


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None,
                ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run the gateway with MQTT until ``stop`` is set (or SIGINT/SIGTERM); ``ready`` gets the bound address."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        platform = Jt809Platform(FilePlatforms(args.platforms), RegistryVehicles(args.registry))
        async with open_uplink(args.mqtt, client_id=args.client_id, data_dir=getattr(args, "data_dir", None),
                               gateway_name=args.gateway_name, agent=STAGE,
                               telemetry_qos=args.telemetry_qos, nats_servers=getattr(args, "nats", None)) as uplink:
            gateway = Jt809Gateway(platform, uplink.publish, dead_letter=dead_letter_sink(uplink.publish, STAGE),
                                   limits=limits_from_args(args), sublink_heartbeat_s=args.sublink_heartbeat)
            await serve_until_stopped(gateway, args.listen, stop, ready, log, "jt809")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil edge jt809``; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with options parsed by ``build_parser``."""
    if not Path(args.registry).is_file():
        log.error("jt809: registry file %s does not exist", args.registry)
        return 2
    try:
        platforms = load_platforms(args.platforms)
    except DirectoryError as exc:
        log.error("jt809: %s", exc)
        return 2
    if not platforms:
        log.warning("jt809: %s lists no lower platform: every login will be refused", args.platforms)
    return run_gateway("jt809", serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
