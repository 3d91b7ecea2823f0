"""Command-line pieces every gateway shares: ``--listen``, the server bounds, the uplink options, running.

A protocol's ``cli.py`` adds its own options (registry, platforms file, tag map, ...) to a parser
built with ``add_server_arguments`` / ``add_uplink_arguments`` and runs ``serve`` under ``run_gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from broker.credentials import add_mqtt_arguments
from edge.runtime.server import GatewayLimits

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``PORT``, or ``[v6]:PORT``)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", value
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} out of range")
    return host.strip("[]") or "0.0.0.0", number


def parse_nats_servers(value: str) -> list[str]:
    """Parse ``--nats``: comma-separated ``nats://`` or ``tls://`` URLs of a cluster's nodes."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    bad = [u for u in urls if not u.startswith(("nats://", "tls://"))]
    if not urls or bad:
        raise argparse.ArgumentTypeError(f"--nats wants nats://HOST:PORT[,nats://HOST:PORT...], got {value!r}")
    return urls


def add_uplink_arguments(p: argparse.ArgumentParser, *, name: str, data_dir_help: str) -> None:
    """``--mqtt``, ``--nats``, ``--client-id``, ``--telemetry-qos``, ``--data-dir``, ``--gateway-name`` (from ``name``)."""
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--nats", type=parse_nats_servers, metavar="URL[,URL...]", default=None,
                   help="publish into a NATS JetStream cluster instead of MQTT (needs --data-dir; docs/cluster.md)")
    p.add_argument("--client-id", default=f"vigil-edge-{name}", help="MQTT client id")
    p.add_argument("--telemetry-qos", type=int, choices=(0, 1), default=1,
                   help="MQTT QoS of positions (events and dead letters are always QoS 1)")
    p.add_argument("--data-dir", metavar="DIR", help=data_dir_help)
    p.add_argument("--gateway-name", default=name, help=f"gateway identity with --data-dir (default {name})")


def add_server_arguments(p: argparse.ArgumentParser, *, port: int, who: str, defaults: GatewayLimits) -> None:
    """``--listen`` and the server bounds (``--idle-timeout`` ... ``--queue-limit``) of a ``GatewayServer``."""
    d = defaults
    p.add_argument("--listen", type=parse_listen, default=("0.0.0.0", port), metavar="HOST:PORT",
                   help=f"TCP address {who} connect to (default 0.0.0.0:{port})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help="close authenticated connections silent for S seconds")
    p.add_argument("--auth-timeout", type=float, default=d.auth_timeout_s, metavar="S",
                   help="close connections not authenticated S seconds after connecting")
    p.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N", help="connections at once")
    p.add_argument("--max-per-address", type=int, default=d.max_per_address, metavar="N",
                   help="connections at once from one source address")
    p.add_argument("--max-preauth-per-address", type=int, default=d.max_preauth_per_address, metavar="N",
                   help="unauthenticated connections at once from one source address")
    p.add_argument("--queue-limit", type=int, default=d.queue_limit, help="publications queued before reading pauses")


def limits_from_args(args: argparse.Namespace) -> GatewayLimits:
    """The server's bounds from options added by ``add_server_arguments``."""
    return GatewayLimits(idle_timeout_s=args.idle_timeout, auth_timeout_s=args.auth_timeout,
                         max_connections=args.max_connections, max_per_address=args.max_per_address,
                         max_preauth_per_address=args.max_preauth_per_address, queue_limit=args.queue_limit)


class ServedGateway(Protocol):
    """What ``serve_until_stopped`` needs of a gateway (the JT/T 808 and JT/T 809 gateways on ``GatewayServer``)."""

    async def start(self, host: str, port: int) -> tuple[str, int]: ...

    async def stop(self, drain_timeout: float = 5.0) -> None: ...

    def stats(self) -> dict[str, int]: ...


async def serve_until_stopped(gateway: ServedGateway, listen: tuple[str, int], stop: asyncio.Event,
                              ready: Callable[[tuple[str, int]], None] | None, log: logging.Logger,
                              name: str) -> None:
    """Listen on ``listen``, tell ``ready`` the bound address, serve until ``stop`` is set, then stop and log the stats."""
    bound = await gateway.start(*listen)
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        log.info("%s: stopped: %s", name, gateway.stats())


def setup_logging(level: str = "INFO") -> None:
    """The gateways' log format on stderr."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run_gateway(name: str, main: Coroutine[Any, Any, object], *extra: type[Exception]) -> int:
    """Run a gateway's ``serve`` coroutine until it returns or SIGINT; 1 (logged) on a start-up failure.

    ``extra`` are the protocol's own start-up errors (a registration store that cannot be opened, ...).
    """
    from broker.mqtt import MqttError
    from edge.runtime.identity import IdentityError
    from edge.runtime.link import EdgeLinkError

    errors: tuple[type[Exception], ...] = (OSError, MqttError, EdgeLinkError, IdentityError, *extra)
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass
    except errors as exc:
        logging.getLogger(f"edge.{name}").error("%s: %s", name, exc)
        return 1
    return 0
