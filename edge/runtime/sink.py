"""``LinkPublisher``: the ``publish(topic, payload, *, retain=False)`` sink of a gateway, over an ``EdgeLink``.

Gateways written against ``MqttClient.publish`` get store-and-forward by passing
``LinkPublisher.publish`` instead. Plain messages (telemetry, events, dead letters) are committed
to the link's durable outbox and delivered in order, at least once. Retained messages (a hosted
device's online/offline status) bypass the outbox like the link's own status: sent at once while
connected; while disconnected only the latest per topic is kept (in memory) and sent after the
reconnect, so a stale "online" is never replayed over a newer "offline".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLink

log = logging.getLogger(__name__)


class LinkPublisher:
    """A gateway's publish sink: outbox for plain messages, latest-value direct sends for retained ones."""

    def __init__(self, link: EdgeLink, *, retry_interval_s: float = 0.1) -> None:
        self.link = link
        self._retry_interval_s = retry_interval_s
        self._unsent: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {"stored": 0, "retained_sent": 0, "retained_superseded": 0}

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Store ``payload`` for ordered delivery, or send a retained status (see the module doc).

        Raises:
            ValueError: wildcard topic or oversized payload.
            OutboxError: the disk write failed (the caller's device should send again).
        """
        if not retain:
            self.link.publish(topic, payload)
            self.counters["stored"] += 1
            return
        if topic in self._unsent:
            self.counters["retained_superseded"] += 1
        if self.link.connected and not self._unsent:
            self._send(topic, payload)
        else:
            # Keep order per topic: once something waits, newer values wait behind it (latest wins).
            self._unsent[topic] = payload

    def start(self) -> None:
        """Start re-sending retained messages kept while the broker was unreachable."""
        if self._task is None:
            self._task = asyncio.create_task(self._resend(), name=f"edge-retained-{self.link.identity.client_id}")

    async def stop(self) -> None:
        """Send what is kept if connected, then stop the background task."""
        if self.link.connected:
            self._send_unsent()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def unsent(self) -> int:
        """Retained messages waiting for the broker."""
        return len(self._unsent)

    def stats(self) -> dict[str, float]:
        """The link's figures plus this sink's counters and retained messages waiting."""
        return {**self.link.stats(), **{k: float(v) for k, v in self.counters.items()},
                "retained_waiting": float(len(self._unsent))}

    def _send(self, topic: str, payload: bytes) -> None:
        self.link.mqtt.publish_nowait(topic, payload, 1, True)
        self.counters["retained_sent"] += 1

    def _send_unsent(self) -> None:
        unsent, self._unsent = self._unsent, {}
        for topic, payload in unsent.items():
            self._send(topic, payload)

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval_s)
            if self._unsent and self.link.connected:
                self._send_unsent()


@contextlib.asynccontextmanager
async def link_publisher(mqtt_url: str, identity: EdgeIdentity, data_dir: Path,
                         **link_options: Any) -> AsyncIterator[LinkPublisher]:
    """Open an ``EdgeLink`` on ``data_dir`` and a ``LinkPublisher`` over it; stop both on exit.

    Raises:
        EdgeLinkError: the outbox folder is unusable or held by another process.
    """
    # Gateways feed the platform, whose persistent session always subscribes to device topics:
    # "no matching subscribers" means the broker lost that session, so keep such messages.
    link_options.setdefault("hold_unrouted", True)
    link = EdgeLink(mqtt_url, identity, data_dir, **link_options)
    sink = LinkPublisher(link)
    await link.start()
    sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
        await link.stop()
        log.info("edge %s: link stopped: delivered %d, dropped %d, appended %d", identity.client_id,
                 link.outbox.delivered, link.outbox.dropped, link.outbox.appended)
