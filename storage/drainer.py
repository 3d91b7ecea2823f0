"""Drains the outbox to a backend: batches, gzip, retries with jittered backoff, bisects refusals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from storage.backends import BackendError, BackendUnavailable, PointsRefused, StorageBackend
from storage.config import WriterConfig
from storage.outbox import Outbox

log = logging.getLogger(__name__)

RefusedSink = Callable[[bytes, BackendError], None]
"""Receives each line the backend refused on its own, with the refusal."""

_LOG_EVERY_S = 30.0


class OutboxDrainer:
    """Sends outbox batches to the backend in order; commits each batch once it is stored.

    A batch that fails for a retryable reason is sent again, unchanged, until it succeeds;
    later batches wait behind it so points arrive in order. A batch the backend refuses as
    invalid is split in halves, recursively, so the good lines are stored (rewriting lines a
    partial write already stored changes nothing) and each line refused on its own goes to
    ``on_refused``; the queue never blocks on bad points.
    """

    def __init__(self, outbox: Outbox, backend: StorageBackend, config: WriterConfig, *,
                 on_refused: RefusedSink, clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.backend = backend
        self.config = config
        self.on_refused = on_refused
        self.clock = clock
        self.counters: dict[str, int] = {
            "batches": 0, "points_written": 0, "requests": 0, "retries": 0, "refused_requests": 0,
            "refused_lines": 0, "bytes_sent": 0,
        }
        self.unavailable_since: float | None = None
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._last_log = 0.0
        self._attempt = 0

    def notify(self) -> None:
        """Tell the drainer lines were appended (called by the handler after each append)."""
        self._wakeup.set()
        if self.outbox.pending_lines >= self.config.batch_points:
            self._full.set()

    async def run(self) -> None:
        """Open the backend, then drain forever (until cancelled)."""
        await self._with_retries(self.backend.open, "open")
        while True:
            if self.outbox.pending_lines == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.outbox.pending_lines < self.config.batch_points:
                # Wait for a full batch, but never longer than flush_interval_s after the first line.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_interval_s):
                        await self._full.wait()
            await self.drain_once()

    async def drain_once(self) -> int:
        """Write the next batch (retrying until it is stored) and commit it; returns its lines."""
        batch = self.outbox.peek(self.config.batch_points)
        if batch is None:
            return 0
        body = batch.body()
        await self._deliver(body, batch.lines)
        self.outbox.commit(batch)
        self.counters["batches"] += 1
        return batch.lines

    async def drain_all(self) -> int:
        """Write everything pending now (tests, shutdown with a live backend)."""
        total = 0
        while self.outbox.pending_lines:
            total += await self.drain_once()
        return total

    async def _deliver(self, body: bytes, lines: int) -> None:
        try:
            await self._with_retries(lambda: self.backend.write(body, lines), "write")
            self.counters["points_written"] += lines
            self.counters["bytes_sent"] += len(body)
        except PointsRefused as exc:
            self.counters["refused_requests"] += 1
            if lines <= 1:
                self.counters["refused_lines"] += 1
                self.on_refused(body, exc)
                return
            parts = body.split(b"\n")
            half = len(parts) // 2
            await self._deliver(b"\n".join(parts[:half]), half)
            await self._deliver(b"\n".join(parts[half:]), len(parts) - half)

    async def _with_retries(self, op: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            self.counters["requests"] += 1
            try:
                await op()
            except BackendUnavailable as exc:
                self._failed(exc, what)
                low, high = self.config.retry_min_s, self.config.retry_max_s
                delay = min(high, low * (2 ** min(self._attempt - 1, 16))) * random.uniform(0.5, 1.0)
                self.counters["retries"] += 1
                await asyncio.sleep(delay)
                continue
            if self.unavailable_since is not None:
                log.info("storage: %s is back after %.1f s (%d attempts)", self.backend.name,
                         self.clock() - self.unavailable_since, self._attempt)
            self.unavailable_since = None
            self._attempt = 0
            return

    def _failed(self, exc: BackendError, what: str) -> None:
        now = self.clock()
        self._attempt += 1
        if self.unavailable_since is None:
            self.unavailable_since = now
        if self._attempt == 1 or now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("storage: %s %s failed (attempt %d, %d lines waiting): %s", self.backend.name, what,
                        self._attempt, self.outbox.pending_lines, exc)
