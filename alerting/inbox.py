"""A small HTTP endpoint that accepts Apprise ``json://`` notifications and keeps them.

The demo points its default receiver here so notifications are visible without a phone, and the
integration tests use it as a real delivery target. Not for production use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_TINY_JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb004300") + bytes(64) + bytes.fromhex("ffd9")


@dataclass(frozen=True, slots=True)
class Received:
    """One notification as posted by Apprise."""

    path: str
    title: str
    body: str
    type: str
    received_at: float
    attachments: int


@dataclass
class NotificationInbox:
    """Listens on ``host:port`` and records every POST; ``fail_paths`` answer 500 (failover tests).

    ``answers`` scripts a path's next HTTP statuses (``{"/op": [503]}``: the first POST gets 503, later ones are
    accepted); ``hits`` counts every POST per path, answered or not.
    """

    host: str = "127.0.0.1"
    port: int = 0
    fail_paths: set[str] = field(default_factory=set)
    answers: dict[str, list[int]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    on_received: Callable[[Received], None] | None = None
    """Called with every notification as it arrives (the demo prints and logs them)."""
    _runner: web.AppRunner | None = None
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        script = self.answers.get(request.path)
        if script:
            return web.Response(status=script.pop(0), text="scripted answer")
        if request.path in self.fail_paths:
            return web.Response(status=500, text="failing on purpose")
        try:
            data: dict[str, Any] = await request.json()
        except ValueError:
            return web.Response(status=400, text="not json")
        note = Received(
            path=request.path, title=str(data.get("title", "")), body=str(data.get("message", "")),
            type=str(data.get("type", "")), received_at=time.time(), attachments=len(data.get("attachments") or []),
        )
        self.received.append(note)
        self._event.set()
        if self.on_received is not None:
            self.on_received(note)
        return web.Response(text="ok")

    async def _snapshot(self, request: web.Request) -> web.Response:
        # A stand-in camera snapshot so attachments can be exercised without a camera.
        return web.Response(body=_TINY_JPEG, content_type="image/jpeg")

    async def start(self) -> NotificationInbox:
        """Start listening; ``port`` is set to the bound port."""
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        app.router.add_get("/snapshots/{name}", self._snapshot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/notify") -> str:
        """The Apprise URL that posts here."""
        return f"json://{self.host}:{self.port}{path}"

    async def wait_for(self, count: int, timeout: float = 5.0, path: str | None = None) -> list[Received]:
        """Wait until at least ``count`` notifications (on ``path``, if given) arrived."""
        async with asyncio.timeout(timeout):
            while True:
                got = [r for r in self.received if path is None or r.path == path]
                if len(got) >= count:
                    return got
                self._event.clear()
                await self._event.wait()
