"""The sub link: the superior platform's TCP connection back to a lower platform.

After a main-link login that gave a down-link address, the gateway connects there, sends
0x9001 with the verify code of the 0x1002 answer, and keeps the link with 0x9005 heartbeats.
Whatever the lower platform sends on it (vehicle data while its main link is down) goes
through a ``Jt809Session`` already bound to that platform, into the gateway's publish queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edge.jt809.codec import encode_frame
from edge.jt809.messages import DownConnectResult, MsgId, build_verify_code
from edge.jt809.session import Jt809Platform, SubLinkRequest
from edge.runtime.output import SessionOutput

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SubLinkStats:
    """What one sub link did."""

    attempts: int = 0
    logins_ok: int = 0
    refused: int = 0
    heartbeats: int = 0
    state: str = "connecting"
    history: list[str] = field(default_factory=list)


class SubLinkClient:
    """Keeps one lower platform's sub link up until cancelled (or refused by the platform)."""

    def __init__(self, request: SubLinkRequest, platform: Jt809Platform,
                 deliver: Callable[[SessionOutput], bool], *, heartbeat_s: float = 60.0,
                 connect_timeout_s: float = 10.0, max_backoff_s: float = 60.0, read_size: int = 16 * 1024) -> None:
        self.request = request
        self.platform = platform
        self.deliver = deliver
        """Queues a session output's publications and rejections; True when the queue is full."""
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.max_backoff_s = max_backoff_s
        self.read_size = read_size
        self.stats = SubLinkStats()
        self._serial = 0

    def _state(self, state: str) -> None:
        self.stats.state = state
        self.stats.history.append(state)
        del self.stats.history[:-20]

    async def run(self, wait_drained: Callable[[], Awaitable[None]] | None = None) -> None:
        """Connect, log in, keep alive; reconnect with jittered backoff; return when the platform refuses."""
        backoff = 1.0
        req = self.request
        while True:
            self.stats.attempts += 1
            self._state("connecting")
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(req.host, req.port)
            except (OSError, TimeoutError) as exc:
                self._state("unreachable")
                log.warning("jt809: sub link to %s (%s:%d) failed: %s", req.platform.label, req.host, req.port, exc)
            else:
                try:
                    await self._serve(reader, writer, wait_drained)
                except (OSError, TimeoutError) as exc:
                    log.warning("jt809: sub link to %s lost: %s", req.platform.label, exc)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError, TimeoutError):
                        async with asyncio.timeout(1.0):
                            await writer.wait_closed()
                if self.stats.state == "refused":
                    return  # the verify code is wrong: the next main-link login opens a new sub link
                if self.stats.state == "up":
                    backoff = 1.0
                self._state("closed")
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(self.max_backoff_s, backoff * 2)

    def _send(self, writer: asyncio.StreamWriter, msg_id: int, body: bytes) -> None:
        self._serial = (self._serial + 1) & 0xFFFFFFFF
        lower = self.request.platform
        if lower.encrypt_replies and lower.keys is not None:
            frame = encode_frame(msg_id, self._serial, lower.access_code, body, keys=lower.keys,
                                 key=random.getrandbits(32))
        else:
            frame = encode_frame(msg_id, self._serial, lower.access_code, body)
        writer.write(frame)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     wait_drained: Callable[[], Awaitable[None]] | None) -> None:
        req = self.request
        peer = writer.get_extra_info("peername")
        session = self.platform.sublink_session(req.platform, f"{req.host}:{req.port}" if not peer else
                                                f"{peer[0]}:{peer[1]}")
        self._state("login")
        self._send(writer, MsgId.DOWN_CONNECT_REQ, build_verify_code(req.verify_code))
        await writer.drain()
        last_rx = time.monotonic()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        data = await reader.read(self.read_size)
                except TimeoutError:
                    if time.monotonic() - last_rx > 3 * self.heartbeat_s:
                        log.warning("jt809: sub link to %s silent for %.0f s; reconnecting", req.platform.label,
                                    time.monotonic() - last_rx)
                        return
                    if self.stats.state == "up":
                        self._send(writer, MsgId.DOWN_LINKTEST_REQ, b"")
                        self.stats.heartbeats += 1
                        await writer.drain()
                    continue
                if not data:
                    return
                last_rx = time.monotonic()
                out = session.feed(data, last_rx)
                if session.sublink_result is not None and self.stats.state == "login":
                    if session.sublink_result == DownConnectResult.OK:
                        self.stats.logins_ok += 1
                        self._state("up")
                        log.info("jt809: sub link to %s (%s:%d) up", req.platform.label, req.host, req.port)
                    else:
                        self.stats.refused += 1
                        self._state("refused")
                        log.warning("jt809: sub link login refused by %s: result %d", req.platform.label,
                                    session.sublink_result)
                        return
                for reply in out.replies:
                    writer.write(reply)
                if (out.publications or out.rejections) and self.deliver(out) and wait_drained is not None:
                    await wait_drained()
                if out.close:
                    return
                await writer.drain()
        finally:
            self.deliver(session.close("sub link closed"))
