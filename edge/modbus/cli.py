"""``vigil edge modbus``: poll the Modbus TCP devices of a tag map and publish through the edge runtime."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from broker.credentials import add_mqtt_arguments
from edge.modbus.gateway import AGENT_NAME, ModbusGateway
from edge.modbus.tagmap import TagMap, TagMapError, plan_blocks
from edge.runtime import EdgeIdentity, EdgeLinkError, IdentityError, read_password
from edge.runtime.cli import setup_logging
from edge.runtime.sink import link_publisher

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The gateway's options."""
    p = argparse.ArgumentParser(prog="vigil edge modbus", description=__doc__)
    p.add_argument("--tags", required=True, type=Path, help="tag map YAML (devices, registers, metrics)")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883")
    p.add_argument("--gateway-name", default=None, help="broker identity (default: the tag map's `gateway`)")
    p.add_argument("--data-dir", type=Path, default=None, help="outbox folder (default var/edge/modbus-{name})")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between status heartbeats")
    p.add_argument("--max-queued", type=int, default=100_000, help="outbox bound in messages")
    p.add_argument("--password-env", default=None, help="environment variable holding the broker password")
    p.add_argument("--password-file", type=Path, default=None, help="file holding the broker password")
    p.add_argument("--ca-file", default=None, help="CA bundle for mqtts://")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--check", action="store_true", help="validate the tag map, print the block plan and exit")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    return p


def describe(tagmap: TagMap) -> str:
    """The block plan of every device (what ``--check`` prints)."""
    lines = [f"{tagmap.source}: gateway {tagmap.gateway}, {len(tagmap.devices)} devices, "
             f"{sum(len(t) for t in tagmap.tags.values())} tags, {len(tagmap.assets())} assets"]
    for dev in tagmap.devices:
        blocks = plan_blocks(tagmap.tags[dev.name], dev.max_block, dev.max_gap)
        lines.append(f"  {dev.name} {dev.host}:{dev.port} unit {dev.unit} every {dev.poll_interval_s:g} s: "
                     f"{len(tagmap.tags[dev.name])} tags in {len(blocks)} reads")
        lines.extend(f"    {b.register} {b.start}..{b.start + b.count - 1} ({len(b.tags)} tags)" for b in blocks)
    return "\n".join(lines)


async def run_gateway(args: argparse.Namespace, tagmap: TagMap) -> int:
    """Run until cancelled or ``--duration`` passed; returns an exit code."""
    name = args.gateway_name or tagmap.gateway
    try:
        password = read_password(password_env=args.password_env, password_file=args.password_file)
        identity = EdgeIdentity.for_gateway(name, agent=AGENT_NAME, password=password)
    except IdentityError as exc:
        print(f"vigil edge modbus: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or Path("var/edge") / f"modbus-{name}"
    gateway_ref: list[ModbusGateway] = []
    try:
        async with link_publisher(args.mqtt, identity, data_dir, max_queued=args.max_queued,
                                  heartbeat_s=args.heartbeat, ca_file=args.ca_file,
                                  status_detail=lambda: gateway_ref[0].status_detail() if gateway_ref else {}
                                  ) as sink:
            gateway = ModbusGateway(tagmap, sink.publish)
            gateway_ref.append(gateway)
            task = asyncio.create_task(gateway.run(), name="modbus-gateway")
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, task.cancel)
            if args.duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), args.duration)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("modbus gateway %s stopped: %s", name, gateway.stats())
    except (EdgeLinkError, ValueError) as exc:
        print(f"vigil edge modbus: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``vigil edge modbus --tags FILE --mqtt URL``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.log_level.upper() != "DEBUG":
        # pymodbus logs every timeout and refused connect; the poller logs each device's failures and
        # recoveries once and counts the rest (status heartbeat), so its lines would only repeat them.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        tagmap = TagMap.load(args.tags)
    except TagMapError as exc:
        print(f"vigil edge modbus: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(describe(tagmap))
        return 0
    try:
        return asyncio.run(run_gateway(args, tagmap))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
