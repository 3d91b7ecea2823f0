"""The elevator edge agent: sample the box, run the monitor, publish through the edge runtime."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from broker.contracts import Kind
from edge.elevator.driver import DriverError, ElevatorBoxDriver
from edge.elevator.monitor import ElevatorMonitor
from edge.runtime import EdgeLink, OutboxError

log = logging.getLogger(__name__)

AGENT_NAME = "vigil-edge-elevator"


class ElevatorAgent:
    """Reads one box at ``sample_hz``, publishes telemetry and fault events for one elevator."""

    def __init__(self, device_id: str, driver: ElevatorBoxDriver, link: EdgeLink, monitor: ElevatorMonitor, *,
                 sample_hz: float = 10.0, box_lost_after: int = 20, clock: Callable[[], float] = time.time) -> None:
        """Wire a driver, a monitor and a link.

        Args:
            device_id: the elevator's id (its topics are ``vigil/v1/elevator/{id}/...``).
            driver: the box driver.
            link: the edge runtime link (started and stopped by the caller).
            monitor: the detectors for this installation.
            sample_hz: readings per second.
            box_lost_after: consecutive failed reads after which the box counts as lost.
            clock: epoch seconds for message timestamps.
        """
        if sample_hz <= 0:
            raise ValueError("sample_hz must be positive")
        self.device_id = device_id
        self.driver = driver
        self.link = link
        self.monitor = monitor
        self._period = 1.0 / sample_hz
        self._lost_after = box_lost_after
        self._clock = clock
        self._failures_in_row = 0
        self.read_errors: Counter[str] = Counter()
        self.counters: dict[str, int] = {"readings": 0, "telemetry": 0, "events": 0, "publish_errors": 0}

    @property
    def box_ok(self) -> bool:
        """Whether the box answered recently."""
        return self._failures_in_row < self._lost_after

    def status_detail(self) -> dict[str, Any]:
        """Figures for the link's heartbeat."""
        return {"box_ok": self.box_ok, "readings": self.counters["readings"],
                "read_errors": sum(self.read_errors.values()), "active_events": sorted(self.monitor.active_events)}

    def stats(self) -> dict[str, float]:
        """Agent, monitor and link counters."""
        out = {k: float(v) for k, v in self.counters.items()}
        out["read_errors"] = float(sum(self.read_errors.values()))
        out["rejected_readings"] = float(sum(self.monitor.rejections.values()))
        out["open_events_not_recorded"] = float(self.monitor.persist_failures)
        out.update({f"link_{k}": v for k, v in self.link.stats().items()})
        return out

    async def _open_driver(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.driver.open()
                return
            except DriverError as exc:
                self.read_errors[exc.reason] += 1
                log.warning("elevator %s: cannot open box: %s", self.device_id, exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 30.0)

    async def run(self) -> None:
        """Sample until cancelled; the driver is closed on the way out."""
        await self._open_driver()
        try:
            next_at = time.monotonic()
            while True:
                await self.sample_once()
                next_at += self._period
                delay = next_at - time.monotonic()
                if delay < -self._period:
                    next_at = time.monotonic()  # fell behind (slow box): do not burst to catch up
                await asyncio.sleep(max(0.0, delay))
        finally:
            await self.driver.close()

    async def sample_once(self) -> None:
        """Read the box once and publish what the monitor produces."""
        try:
            signals = await self.driver.read()
        except DriverError as exc:
            self._read_failed(exc.reason, str(exc))
            return
        except Exception as exc:  # a broken driver must not stop the agent
            self._read_failed("driver_exception", repr(exc))
            return
        if self._failures_in_row >= self._lost_after:
            log.info("elevator %s: box answers again", self.device_id)
            self.link.set_online(True, "box_recovered")
        self._failures_in_row = 0
        self.counters["readings"] += 1
        out = self.monitor.observe(signals, self._clock())
        try:
            if out.telemetry is not None:
                self.link.publish_telemetry(Kind.ELEVATOR, self.device_id, out.telemetry)
                self.counters["telemetry"] += 1
            for event in out.events:
                self.link.publish_event(Kind.ELEVATOR, self.device_id, event)
                self.counters["events"] += 1
                log.info("elevator %s: %s %s", self.device_id, event.type, event.state)
        except OutboxError as exc:
            self.counters["publish_errors"] += 1
            log.warning("elevator %s: cannot queue message: %s", self.device_id, exc)

    def _read_failed(self, reason: str, detail: str) -> None:
        self.read_errors[reason] += 1
        self._failures_in_row += 1
        if self._failures_in_row == self._lost_after:
            log.warning("elevator %s: box lost after %d failed reads (%s)", self.device_id,
                        self._failures_in_row, detail[:200])
            self.link.set_online(False, "box_unreachable")
