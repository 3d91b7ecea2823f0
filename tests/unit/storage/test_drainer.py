"""The drainer against a scripted backend: retries keep order, refusals are bisected, batching timing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from storage.backends import BackendError, BackendUnavailable, OutboxDrainer, PointsRefused
from storage.config import WriterConfig
from storage.outbox import Outbox

FAST = WriterConfig(batch_points=100, flush_interval_s=0.05, retry_min_s=0.001, retry_max_s=0.005)


class ScriptedBackend:
    """Stores lines; fails the next ``outages`` calls; refuses any request holding a line with ``BAD``."""

    name = "scripted"

    def __init__(self, outages: int = 0) -> None:
        self.outages = outages
        self.stored: list[bytes] = []
        self.requests: list[int] = []
        self.opened = False

    async def open(self) -> None:
        self.opened = True

    async def write(self, body: bytes, lines: int) -> None:
        self.requests.append(lines)
        if self.outages:
            self.outages -= 1
            raise BackendUnavailable("connection refused")
        parts = body.split(b"\n")
        assert len(parts) == lines
        if any(b"BAD" in p for p in parts):
            raise PointsRefused("field type conflict", 400)
        self.stored += parts

    async def close(self) -> None:
        pass


def setup(tmp_path: Path, backend: ScriptedBackend,
          config: WriterConfig = FAST) -> tuple[Outbox, OutboxDrainer, list[bytes]]:
    outbox = Outbox(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16, fsync="off")
    outbox.open()
    refused: list[bytes] = []

    def sink(line: bytes, exc: BackendError) -> None:
        assert isinstance(exc, PointsRefused)
        refused.append(line)

    return outbox, OutboxDrainer(outbox, backend, config, on_refused=sink), refused


def lines(start: int, n: int, bad: set[int] | None = None) -> list[str]:
    return [f"m v={i}.0 {i}" + (" BAD" if bad and i in bad else "") for i in range(start, start + n)]


async def test_outage_retries_the_same_batch_until_stored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    backend = ScriptedBackend(outages=5)
    outbox, drainer, refused = setup(tmp_path, backend)
    for i in range(0, 250, 10):
        outbox.append(lines(i, 10))
    assert await drainer.drain_all() == 250
    assert [b.decode() for b in backend.stored] == lines(0, 250)
    assert drainer.counters["retries"] == 5 and refused == []
    assert "failed (attempt 1" in caplog.text and "is back after" in caplog.text
    assert drainer.unavailable_since is None
    outbox.close()


async def test_refused_lines_are_isolated_and_the_rest_is_stored(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    outbox, drainer, refused = setup(tmp_path, backend)
    bad = {3, 57, 58, 99}
    outbox.append(lines(0, 100, bad))
    outbox.append(lines(100, 20))
    await drainer.drain_all()
    assert [r.decode() for r in refused] == [f"m v={i}.0 {i} BAD" for i in sorted(bad)]
    assert [s.decode() for s in backend.stored] == [line for line in lines(0, 120) if int(line.split()[-1]) not in bad]
    assert drainer.counters["refused_lines"] == 4
    assert outbox.pending_lines == 0
    outbox.close()


async def test_outage_during_bisection_still_loses_nothing(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    outbox, drainer, refused = setup(tmp_path, backend)
    outbox.append(lines(0, 16, {5}))
    original = backend.write
    calls = 0

    async def flaky(body: bytes, n: int) -> None:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise BackendUnavailable("timeout")
        await original(body, n)

    backend.write = flaky  # type: ignore[method-assign]
    await drainer.drain_all()
    assert len(refused) == 1 and len(backend.stored) == 15
    outbox.close()


async def test_run_sends_partial_batches_after_the_flush_interval(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    outbox, drainer, _ = setup(tmp_path, backend)
    task = asyncio.create_task(drainer.run())
    try:
        await asyncio.sleep(0.01)
        assert backend.opened
        outbox.append(lines(0, 3))
        drainer.notify()
        await asyncio.sleep(0.02)
        assert backend.stored == []  # waiting for more lines, up to flush_interval_s
        await asyncio.sleep(0.08)
        assert len(backend.stored) == 3
        outbox.append(lines(3, 150))  # more than a full batch: sent without waiting
        drainer.notify()
        await asyncio.sleep(0.02)
        assert len(backend.stored) == 153
        assert backend.requests[-1] == 150
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    outbox.close()


async def test_open_is_retried(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    failures = 3

    async def open_later() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise BackendUnavailable("database not ready", 503)
        backend.opened = True

    backend.open = open_later  # type: ignore[method-assign]
    outbox, drainer, _ = setup(tmp_path, backend)
    task = asyncio.create_task(drainer.run())
    try:
        for _ in range(100):
            if backend.opened:
                break
            await asyncio.sleep(0.01)
        assert backend.opened and drainer.counters["retries"] == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    outbox.close()
