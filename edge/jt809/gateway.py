"""JT/T 809 gateway: Vigil as the superior platform; lower platforms connect their main links here.

The TCP server, its connection caps, login deadline, bounded publish queue with backpressure and
aggregated dead letters are the gateway runtime's (``edge.runtime.server.GatewayServer``) running
JT/T 809 sessions; this module adds the sub links. The command line is ``edge.jt809.cli``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from edge.jt808.session import Jt808Counters
from edge.jt809.session import Jt809Platform, SubLinkRequest, dead_letter_of
from edge.jt809.sublink import SubLinkClient
from edge.runtime.output import SessionOutput
from edge.runtime.server import DeadLetterSink, GatewayLimits, GatewayServer, PublishSink

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 7809

DEFAULT_LIMITS: Final = GatewayLimits(idle_timeout_s=180.0, auth_timeout_s=30.0, max_connections=256,
                                      max_per_address=16, max_preauth_per_address=8, queue_limit=10_000)
"""Lower platforms are a handful of servers, not fleets of terminals: small caps."""


class Jt809Gateway:
    """The main-link TCP server (the runtime's, with JT/T 809 sessions) plus the sub links."""

    def __init__(self, platform: Jt809Platform, publish: PublishSink, *, dead_letter: DeadLetterSink | None = None,
                 limits: GatewayLimits = DEFAULT_LIMITS, sublink_heartbeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.platform = platform
        self.server = GatewayServer(platform, publish, name="jt809", dead_letter_of=dead_letter_of,
                                    dead_letter=dead_letter, limits=limits, clock=clock)
        self.sublink_heartbeat_s = sublink_heartbeat_s
        self.sublinks: dict[int, tuple[SubLinkClient, asyncio.Task[None]]] = {}
        platform.on_sublink = self._open_sublink
        platform.on_logout = self._close_sublink

    @property
    def counters(self) -> Jt808Counters:
        """The gateway's counters (the platform's, shared with its sessions and the server)."""
        return self.platform.counters

    def stats(self) -> dict[str, int]:
        """The server's figures plus the sub links'."""
        snap = self.server.stats()
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
