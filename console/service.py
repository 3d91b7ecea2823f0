"""The console stage: the operator's web page over the alerting stage of the same process.

``ConsoleService`` is what the runtime builds (``StageSpec("console.service", "ConsoleService")``): the
views and state of ``console.views.ConsoleViews`` plus the stage's runtime interface: the device
consumer, and ``run()`` serving ``console.web`` and pushing alert and device changes to the pages.
The views live in their own module so that ``console.web`` depends on them, not on this one.
"""

from __future__ import annotations

import asyncio
import logging

from broker.contracts import Channel, DeviceMessage
from console.errors import ConsoleError as ConsoleError  # re-exported; raised when the console cannot start
from console.views import ConsoleViews

log = logging.getLogger(__name__)


class ConsoleService(ConsoleViews):
    """The operator console of one process."""

    def attach(self) -> None:
        """Register the device consumer (call before ``mqtt.start()``)."""
        self.ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, self.on_device_messages)

    async def run(self) -> None:
        """Serve the web page and push changes until cancelled."""
        from console.web import serve

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_alerts(), name="console-alerts")
                tg.create_task(self._push_devices(), name="console-devices")
                tg.create_task(self._housekeeping(), name="console-housekeeping")
                tg.create_task(serve(self), name="console-web")
        finally:
            self.journal.close()

    def on_device_messages(self, batch: list[DeviceMessage]) -> None:
        """Ingest consumer: keep the live state (cheap, in the loop thread)."""
        self.live.apply(batch)
        self.counters["device_messages"] += len(batch)

    async def _pump_alerts(self) -> None:
        async for alert in self.alerting.watch(maxsize=10_000):
            try:
                self.on_alert_change(alert)
            except Exception:
                self.counters["push_errors"] += 1
                log.exception("console: pushing alert %s failed", alert.id)

    async def _push_devices(self) -> None:
        # Only the ids: pages that show devices reload what they show (debounced), so a fleet reporting
        # every second costs one small frame per page per interval, not every row.
        while True:
            await asyncio.sleep(self.config.device_push_s)
            changed = self.live.take_changed()
            if changed and self.hub.clients:
                self.hub.publish("devices", {"ids": sorted(changed)[:5000], "count": len(changed)})

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60.0)
            self.sessions.prune(self.clock())
