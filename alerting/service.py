"""The alerting service: the alerting engine plus its HTTP API, as ``vigil run`` and the tests start it.

``alerting.engine.AlertingEngine`` does the work (pipeline, timers, delivery, desks); this module adds
the API server (``alerting.api``) to the tasks ``run`` starts when ``api.enabled``. It sits above both:
the API, the desks and the surface use the engine and never import this module. See docs/alerting.md.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from alerting.api import build_app
from alerting.engine import AlertingEngine, Job


class AlertingService(AlertingEngine):
    """The alerting stage of a platform process: the engine, and its HTTP API when configured."""

    api_port: int | None = None
    """The port the API listens on once it serves (the configured one, or the one picked for port 0)."""

    async def run(self) -> None:
        """Send notifications, drive timers and serve the API until cancelled; state is committed on exit."""
        jobs: list[Job] = [("alerting-api", self._serve_api)] if self.config.api.enabled else []
        await self.run_with(*jobs)

    async def _serve_api(self) -> None:
        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.api.host, self.config.api.port)
        await site.start()
        addrs = runner.addresses
        self.api_port = int(addrs[0][1]) if addrs else self.config.api.port
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
