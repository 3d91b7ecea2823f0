"""JT/T 809 gateway: Vigil as the superior platform; lower platforms connect their main links here.

``vigil edge jt809 --listen HOST:PORT --platforms FILE --registry FILE --mqtt URL`` runs ``main``.
The TCP server, its connection caps, login deadline, bounded publish queue with backpressure,
aggregated dead letters and store-and-forward sink are the JT/T 808 gateway's
(``edge.jt808.gateway.Jt808Gateway``) running JT/T 809 sessions; this module adds the sub
links and the command line.
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
from typing import Final, cast

from broker.contracts import DeadLetter, dead_letter_topic, encode
from broker.credentials import add_mqtt_arguments
from edge.jt808.gateway import DeadLetterSink, GatewayLimits, Jt808Gateway, PublishSink, limits_from_args, parse_listen
from edge.jt808.session import Jt808Platform, SessionOutput
from edge.jt809.directory import DirectoryError, FilePlatforms, RegistryVehicles, load_platforms
from edge.jt809.session import STAGE, Jt809Platform, SubLinkRequest, relabel
from edge.jt809.sublink import SubLinkClient

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 7809

DEFAULT_LIMITS: Final = GatewayLimits(idle_timeout_s=180.0, auth_timeout_s=30.0, max_connections=256,
                                      max_per_address=16, max_preauth_per_address=8, queue_limit=10_000)
"""Lower platforms are a handful of servers, not fleets of terminals: small caps."""


class Jt809Gateway:
    """The main-link TCP server (the JT/T 808 gateway's, with JT/T 809 sessions) plus the sub links."""

    def __init__(self, platform: Jt809Platform, publish: PublishSink, *, dead_letter: DeadLetterSink | None = None,
                 limits: GatewayLimits = DEFAULT_LIMITS, sublink_heartbeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.platform = platform
        sink: DeadLetterSink | None = None
        if dead_letter is not None:
            outer = dead_letter

            async def sink(letter: DeadLetter) -> None:
                await outer(relabel(letter))

        # The 808 server only uses what both platforms share (new_session, counters, the
        # reassembly budget) and the sessions' feed/tick/close/authenticated/buffered/peer.
        self.server = Jt808Gateway(cast(Jt808Platform, platform), publish, dead_letter=sink, limits=limits,
                                   clock=clock)
        self.sublink_heartbeat_s = sublink_heartbeat_s
        self.sublinks: dict[int, tuple[SubLinkClient, asyncio.Task[None]]] = {}
        platform.on_sublink = self._open_sublink
        platform.on_logout = self._close_sublink

    @property
    def counters(self) -> dict[str, int]:
        """The server's counters plus the sub links'."""
        snap = self.server.counters
        snap["sublinks"] = len(self.sublinks)
        snap["sublinks_up"] = sum(1 for c, _ in self.sublinks.values() if c.stats.state == "up")
        snap["sublinks_refused_by_gateway"] = self.platform.sublinks_refused
        return snap

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        return await self.server.start(host, port)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Close the sub links and the server, publish what is queued (bounded)."""
        tasks = [task for _, task in self.sublinks.values()]
        for access in list(self.sublinks):
            self._close_sublink(access)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(drain_timeout)

    async def flush(self) -> None:
        """Wait until everything queued has been handed to the sinks."""
        await self.server.flush()

    async def __aenter__(self) -> Jt809Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _deliver(self, out: SessionOutput) -> bool:
        return self.server.enqueue(out)

    def _open_sublink(self, request: SubLinkRequest) -> None:
        self._close_sublink(request.platform.access_code)
        client = SubLinkClient(request, self.platform, self._deliver, heartbeat_s=self.sublink_heartbeat_s)
        task = asyncio.get_running_loop().create_task(client.run(self.server.flush),
                                                      name=f"jt809-sublink-{request.platform.access_code}")
        task.add_done_callback(self._sublink_ended)
        self.sublinks[request.platform.access_code] = (client, task)

    @staticmethod
    def _sublink_ended(task: asyncio.Task[None]) -> None:
        # A bug in a sub link costs that sub link only; it is logged, not left unretrieved.
        if not task.cancelled() and task.exception() is not None:
            log.error("jt809: %s failed", task.get_name(), exc_info=task.exception())

    def _close_sublink(self, access_code: int) -> None:
        entry = self.sublinks.pop(access_code, None)
        if entry is not None:
            entry[1].cancel()

    def sublink(self, access_code: int) -> SubLinkClient | None:
        """The sub-link client of a lower platform, if one was opened."""
        entry = self.sublinks.get(access_code)
        return entry[0] if entry is not None else None


# ---------------------------------------------------------------------------- entry point

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``vigil edge jt809``."""
    p = parser or argparse.ArgumentParser(prog="vigil edge jt809", description=__doc__.splitlines()[0])
    d = DEFAULT_LIMITS
    p.add_argument("--listen", type=parse_listen, default=("0.0.0.0", DEFAULT_PORT), metavar="HOST:PORT",
                   help=f"TCP address lower platforms connect their main links to (default 0.0.0.0:{DEFAULT_PORT})")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--client-id", default="vigil-edge-jt809", help="MQTT client id")
    p.add_argument("--platforms", metavar="FILE", required=True,
                   help="lower platforms: access code, user id, password, keys (re-read when it changes)")
    p.add_argument("--registry", metavar="FILE", required=True,
                   help="device registry YAML: its vehicles by plate and colour (re-read when it changes)")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help="close logged-in main links silent for S seconds")
    p.add_argument("--auth-timeout", type=float, default=d.auth_timeout_s, metavar="S",
                   help="close main links not logged in S seconds after connecting")
    p.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N")
    p.add_argument("--max-per-address", type=int, default=d.max_per_address, metavar="N")
    p.add_argument("--max-preauth-per-address", type=int, default=d.max_preauth_per_address, metavar="N")
    p.add_argument("--queue-limit", type=int, default=d.queue_limit, help="publications queued before reading pauses")
    p.add_argument("--telemetry-qos", type=int, choices=(0, 1), default=1,
                   help="MQTT QoS of positions (events and dead letters are always QoS 1)")
    p.add_argument("--sublink-heartbeat", type=float, default=60.0, metavar="S", help="0x9005 interval on sub links")
    p.add_argument("--data-dir", metavar="DIR", help="outbox folder: queue messages on disk while the broker is "
                   "unreachable and deliver them in order, all QoS 1 (default: publish directly)")
    p.add_argument("--gateway-name", default="jt809", help="gateway identity with --data-dir (default jt809)")
    return p


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None,
                ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run the gateway with MQTT until ``stop`` is set (or SIGINT/SIGTERM); ``ready`` gets the bound address."""
    from broker.mqtt import MqttClient

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    platform = Jt809Platform(FilePlatforms(args.platforms), RegistryVehicles(args.registry))
    dl_topic = dead_letter_topic(STAGE)
    telemetry_qos: int = args.telemetry_qos
    try:
        async with contextlib.AsyncExitStack() as stack:
            publish: PublishSink
            if getattr(args, "data_dir", None):
                from edge.runtime.identity import EdgeIdentity
                from edge.runtime.sink import link_publisher

                identity = EdgeIdentity.for_gateway(args.gateway_name, agent=STAGE)
                sink = await stack.enter_async_context(link_publisher(args.mqtt, identity, Path(args.data_dir)))
                publish = sink.publish
            else:
                mqtt = await stack.enter_async_context(MqttClient(args.mqtt, args.client_id))

                async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
                    qos = telemetry_qos if topic.endswith("/telemetry") else 1
                    await mqtt.publish(topic, payload, qos=qos, retain=retain)

            async def dead_letter(letter: DeadLetter) -> None:
                await publish(dl_topic, encode(letter))

            gateway = Jt809Gateway(platform, publish, dead_letter=dead_letter, limits=limits_from_args(args),
                                   sublink_heartbeat_s=args.sublink_heartbeat)
            bound = await gateway.start(*args.listen)
            if ready is not None:
                ready(bound)
            try:
                await stop.wait()
            finally:
                await gateway.stop()
                log.info("jt809: stopped: %s", gateway.counters)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil edge jt809``; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    from broker.mqtt import MqttError
    from edge.runtime import EdgeLinkError, IdentityError

    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, MqttError, EdgeLinkError, IdentityError) as exc:
        log.error("jt809: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
