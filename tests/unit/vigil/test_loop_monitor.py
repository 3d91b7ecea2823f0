"""The platform's event-loop monitor sees a blocked loop and garbage-collector pauses."""

from __future__ import annotations

import asyncio
import gc
import time

from vigil.runtime import LoopMonitor


async def test_a_blocked_loop_and_a_full_collection_show_in_the_figures() -> None:
    monitor = LoopMonitor(period_s=0.005)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    time.sleep(0.06)  # the loop is held: the monitor's timer fires late
    await asyncio.sleep(0.03)
    gc.collect()
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stats = monitor.stats()
    assert stats["lag_ms_max"] >= 50
    assert stats["lag_ms_p50"] < 50  # most samples were on time
    assert stats["gc_gen2_collections"] >= 1
    assert gc.callbacks.count(monitor._on_gc) == 0  # unhooked when stopped
    assert "lag_ms_p50" not in monitor.stats()  # percentiles cover the interval since the last call
