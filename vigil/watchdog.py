"""The receiving end of the dead-man heartbeat: notices when a Vigil node goes silent or reports failing.

Run it somewhere the platform's failure cannot take down (another machine, another power feed):
``vigil watchdog --listen 0.0.0.0:9099 --expect platform --timeout 90 --notify 'tgram://...'``, and give
the platform ``health.heartbeat.url: http://watchdog-host:9099/ping/platform``. Each node POSTs
``/ping/<node>`` every ``interval_s`` (``/ping/<node>/fail`` while a critical check fails). A node
silent for ``timeout`` seconds, or reporting failing, is announced through Apprise (any URL Apprise
understands), once per incident, and again when it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Notify = Callable[[str, str], bool]
"""Sends (title, body) to the operators; returns whether it was accepted."""


def apprise_notify(urls: list[str], timeout_s: float = 15.0) -> Notify:
    """A ``Notify`` through Apprise to every URL."""

    def send(title: str, body: str) -> bool:
        import apprise

        ap = apprise.Apprise()
        for url in urls:
            ap.add(url)
        return bool(ap.notify(title=title, body=body, notify_type="failure"))

    return send


@dataclass(slots=True)
class NodeSeen:
    """What the watchdog knows of one node."""

    last_ping: float
    status: str = "ok"
    failing: list[str] = field(default_factory=list)
    announced: str | None = None
    """``silent`` / ``failing`` once announced for the current incident, None while fine."""


class Watchdog:
    """Keeps the last heartbeat of each node and announces silence, failure and recovery."""

    def __init__(self, notify: Notify, timeout_s: float = 90.0, expect: list[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notify = notify
        self.timeout_s = timeout_s
        self.clock = clock
        self.nodes: dict[str, NodeSeen] = {n: NodeSeen(clock()) for n in (expect or [])}
        self.sent: list[tuple[str, str]] = []
        self.counters = {"pings": 0, "notifications": 0, "notify_failures": 0}

    def ping(self, node: str, status: str, failing: list[str]) -> None:
        """Record a heartbeat."""
        self.counters["pings"] += 1
        seen = self.nodes.get(node)
        if seen is None:
            seen = self.nodes[node] = NodeSeen(self.clock())
        seen.last_ping, seen.status, seen.failing = self.clock(), status, failing

    def check(self) -> list[tuple[str, str]]:
        """Decide what to announce now; returns the (title, body) pairs to send."""
        out: list[tuple[str, str]] = []
        now = self.clock()
        for node, seen in self.nodes.items():
            silent = now - seen.last_ping
            if silent >= self.timeout_s:
                state = "silent"
            elif seen.status == "failing":
                state = "failing"
            else:
                state = None
            if state == seen.announced:
                continue
            if state == "silent":
                out.append((f"[紧急] Vigil 节点 {node} 失联 / node silent",
                            f"Vigil 节点 {node} 已 {silent:.0f} 秒没有心跳，平台可能已停止。\n"
                            f"Vigil node {node} sent no heartbeat for {silent:.0f} s; the platform may be down."))
            elif state == "failing":
                out.append((f"[紧急] Vigil 节点 {node} 自检失败 / node failing",
                            f"Vigil 节点 {node} 报告: {', '.join(seen.failing)}\n"
                            f"Vigil node {node} reports failing checks: {', '.join(seen.failing)}"))
            elif seen.announced is not None:
                out.append((f"Vigil 节点 {node} 已恢复 / node recovered",
                            f"Vigil 节点 {node} 心跳正常。\nVigil node {node} is sending healthy heartbeats again."))
            seen.announced = state
        return out

    async def run(self, host: str, port: int, period_s: float = 1.0,
                  on_listening: Callable[[int], None] | None = None) -> None:
        """Serve ``/ping/<node>[/fail]`` and check every ``period_s`` until cancelled."""
        from aiohttp import web

        async def on_ping(request: web.Request) -> web.Response:
            node = request.match_info["node"][:64]
            failing_path = request.path.rstrip("/").endswith("/fail")
            body: Any = {}
            if request.can_read_body:
                with contextlib.suppress(Exception):
                    body = await request.json()
            failing = body.get("failing", []) if isinstance(body, dict) else []
            status = "failing" if failing_path else "ok"
            self.ping(node, status, [str(f)[:64] for f in failing][:20] if isinstance(failing, list) else [])
            return web.Response(text="ok")

        app = web.Application(client_max_size=64 * 1024)
        for path in ("/ping/{node}", "/ping/{node}/fail"):
            app.router.add_route("*", path, on_ping)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("watchdog: listening on http://%s:%d/ping/<node>", host, bound)
        if on_listening is not None:
            on_listening(bound)
        try:
            while True:
                await asyncio.sleep(period_s)
                for title, body in self.check():
                    ok = await asyncio.to_thread(self._send, title, body)
                    self.counters["notifications" if ok else "notify_failures"] += 1
        finally:
            await runner.cleanup()

    def _send(self, title: str, body: str) -> bool:
        self.sent.append((title, body))
        log.warning("watchdog: %s", title)
        try:
            return self.notify(title, body)
        except Exception as exc:  # a plugin bug must not stop the watchdog
            log.error("watchdog: notification failed: %s", type(exc).__name__)
            return False


def watchdog_main(listen: str, expect: list[str], timeout_s: float, notify_urls: list[str],
                  notify_env: list[str] | None = None) -> int:
    """``vigil watchdog``: run until interrupted (``notify_env``: variables holding Apprise URLs)."""
    import os
    import sys

    missing = [name for name in notify_env or [] if not os.environ.get(name)]
    if missing:
        print(f"vigil: environment variable(s) not set: {', '.join(missing)}", file=sys.stderr)
        return 2
    notify_urls = notify_urls + [os.environ[name] for name in notify_env or []]
    if not notify_urls:
        print("vigil: give --notify or --notify-env", file=sys.stderr)
        return 2
    host, _, port = listen.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    dog = Watchdog(apprise_notify(notify_urls), timeout_s, expect)
    try:
        asyncio.run(dog.run(host or "127.0.0.1", int(port)))
    except KeyboardInterrupt:
        return 0
    return 0
