"""Server push to the pages: one bounded queue per connected page, each event encoded once.

Server-Sent Events: a frame is ``id``, ``event`` and one ``data`` line of compact JSON. A page
that falls more than its queue behind gets its backlog replaced by one ``resync`` event and
reloads what it shows, so a slow browser never holds memory or delays the others, and it never
silently misses an alert.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import msgspec

_ENC = msgspec.json.Encoder()


def sse_frame(seq: int, event: str, data: Any) -> bytes:
    """One Server-Sent Events frame (compact JSON never contains a raw newline)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event.encode(), _ENC.encode(data))


HEARTBEAT = b": keep-alive\n\n"


@dataclass(eq=False)
class PushClient:
    """One connected page."""

    user: str
    queue: asyncio.Queue[bytes]
    resyncs: int = 0
    sent: int = 0
    meta: dict[str, str] = field(default_factory=dict)


class PushHub:
    """Fans events out to every connected page."""

    def __init__(self, queue_size: int = 512) -> None:
        self.queue_size = queue_size
        self.clients: set[PushClient] = set()
        self._seq = itertools.count(1)
        self.published = 0
        self.resyncs = 0

    def connect(self, user: str) -> PushClient:
        """Register a page; events published from now on are queued for it."""
        c = PushClient(user, asyncio.Queue(self.queue_size))
        self.clients.add(c)
        return c

    def disconnect(self, client: PushClient) -> None:
        """Forget a page."""
        self.clients.discard(client)

    def publish(self, event: str, data: Any) -> int:
        """Queue an event for every page; returns its sequence number."""
        seq = next(self._seq)
        frame = sse_frame(seq, event, data)
        self.published += 1
        for c in self.clients:
            q = c.queue
            if q.full():
                # Replace the backlog with one resync: the page reloads its state instead of replaying.
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(sse_frame(seq, "resync", {"reason": "behind"}))
                c.resyncs += 1
                self.resyncs += 1
            else:
                q.put_nowait(frame)
        return seq
