"""The elevator edge agent: read the box, run the fault detectors, publish through the edge runtime.

``ElevatorMonitor`` is the pure part (readings in, contract telemetry and fault events out, clock
injected); ``ElevatorAgent`` samples the box driver, feeds the monitor and publishes what it produces.

With an ``OpenEventStore`` (``open-events.json`` in the agent's data folder, ``edge.runtime.outbox``)
the monitor records its open events on each start/end and, when started again, hands them back to
their detectors: an event whose situation ended while the agent was down ends on the first reading
under its original id, one still going on continues under it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.contracts import DeviceEvent, Kind, Severity, Telemetry
from edge.elevator.detectors import Detector, DetectorThresholds, EventChange, default_detectors
from edge.elevator.driver import DriverError, ElevatorBoxDriver
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals, signal_problem
from edge.runtime import EdgeLink, OutboxError
from edge.runtime.outbox import RESTART_REASON, OpenEvent, OpenEventStore

log = logging.getLogger(__name__)

AGENT_NAME = "vigil-edge-elevator"

# A change of any of these is published at once rather than at the next telemetry interval.
_DISCRETE = ("door", "direction", "floor", "door_zone", "power", "mode", "safety_circuit_ok", "alarm_button")


@dataclass(frozen=True, slots=True)
class MonitorOutput:
    """What one reading produced: maybe a telemetry message, and events that started or ended."""

    telemetry: Telemetry | None = None
    events: list[DeviceEvent] = field(default_factory=list)
    rejected: str | None = None
    """Why the reading was skipped (implausible values), else None."""


class ElevatorMonitor:
    """Runs the fault detectors over a box's readings and builds the messages to publish."""

    def __init__(self, device_id: str, geometry: ElevatorGeometry | None = None,
                 thresholds: DetectorThresholds | None = None, *, telemetry_interval_s: float = 1.0,
                 site: str | None = None, detectors: list[Detector] | None = None,
                 open_events: OpenEventStore | None = None) -> None:
        """Set up the detectors for one installation.

        Args:
            device_id: the elevator's id (used in event ids).
            geometry: floors, floor height and rated speed.
            thresholds: detector timings and limits.
            telemetry_interval_s: longest gap between telemetry messages; discrete changes go at once.
            site: copied into telemetry.
            detectors: replaces the default set (tests).
            open_events: where open events outlive the process (the agent's data folder); None: nowhere.
        """
        self.device_id = device_id
        self.geometry = geometry or ElevatorGeometry()
        self.thresholds = thresholds or DetectorThresholds()
        self._detectors = detectors if detectors is not None else default_detectors(self.geometry, self.thresholds)
        self._interval = telemetry_interval_s
        self._site = site
        self._last_sent: float | None = None
        self._last_discrete: tuple[object, ...] | None = None
        self._seq = 0
        self._open: dict[str, str] = {}
        self._started: dict[str, float] = {}
        self._severity: dict[str, Severity] = {}
        self.rejections: Counter[str] = Counter()
        self.events_started = 0
        self._store = open_events
        self._records: dict[str, OpenEvent] = {}
        self._resumed: set[str] = set()
        """Types taken over from the previous process; their ends say so."""
        self._orphans: list[OpenEvent] = []
        """Recorded events no detector can take over: ended on the first reading."""
        self._first_reading = True
        self.persist_failures = 0
        if open_events is not None:
            self._take_over(open_events.load())

    def _take_over(self, recorded: list[OpenEvent]) -> None:
        by_type = {t: det for det in self._detectors for t in det.event_types}
        for ev in recorded:
            det = by_type.get(ev.type)
            if ev.type in self._open or det is None or not det.resume(ev.type, dict(ev.data)):
                self._orphans.append(ev)
                continue
            self._open[ev.type] = ev.event_id
            self._started[ev.type] = ev.started_at
            self._severity[ev.type] = _severity(ev.severity)
            self._records[ev.type] = ev
            self._resumed.add(ev.type)

    @property
    def active_events(self) -> dict[str, str]:
        """Event type -> event id of the events in progress."""
        return dict(self._open)

    def observe(self, s: ElevatorSignals, now: float) -> MonitorOutput:
        """Feed one reading taken at ``now`` (epoch seconds)."""
        problem = signal_problem(s)
        if problem is not None:
            self.rejections[problem] += 1
            return MonitorOutput(rejected=problem)
        changes: list[EventChange] = []
        for det in self._detectors:
            if s.mode in det.suppressed_in:
                changes.extend(det.suppress(now))
            else:
                changes.extend(det.update(s, now))
        if self._first_reading:
            self._first_reading = False
            if self._orphans or self._resumed:
                changes = self._after_restart(changes, now)
        events = [e for e in (self._event(c) for c in changes) if e is not None]
        return MonitorOutput(self._telemetry(s, now, force=bool(events)), events)

    def _after_restart(self, changes: list[EventChange], now: float) -> list[EventChange]:
        """The first reading after a restart: events it ends (or no detector could take) cleared meanwhile."""
        out = []
        for ev in self._orphans:
            self._open[ev.type] = ev.event_id
            self._started[ev.type] = ev.started_at
            self._records[ev.type] = ev
            out.append(EventChange(ev.type, "end", now, _severity(ev.severity), RESTART_REASON, None,
                                   {"reason": RESTART_REASON}))
        self._orphans = []
        for c in changes:
            if c.state == "end" and c.type in self._resumed:
                c = EventChange(c.type, c.state, c.at, c.severity, c.message, c.measure,
                                {**c.data, "reason": RESTART_REASON})
            out.append(c)
        return out

    def close_all(self, now: float, reason: str) -> list[DeviceEvent]:
        """End every event in progress (the agent or simulation stops); ``data.reason`` says why."""
        events = []
        for kind in list(self._open):
            event = self._event(EventChange(kind, "end", now, self._severity.get(kind, Severity.MAJOR),
                                            f"monitoring stopped: {reason}", None, {"reason": reason}))
            if event is not None:
                events.append(event)
        return events

    def _telemetry(self, s: ElevatorSignals, now: float, *, force: bool) -> Telemetry | None:
        discrete = tuple(getattr(s, name) for name in _DISCRETE)
        due = (force or self._last_sent is None or now - self._last_sent >= self._interval
               or discrete != self._last_discrete)
        if not due:
            return None
        self._last_sent = now
        self._last_discrete = discrete
        self._seq += 1
        return Telemetry(ts=_ts(now), metrics=s.metrics(), site=self._site, seq=self._seq)

    def _event(self, c: EventChange) -> DeviceEvent | None:
        data = dict(c.data)
        if c.state == "start":
            if c.type in self._open:
                return None
            event_id = f"{self.device_id}-{c.type}-{int(c.at * 1000)}"
            self._open[c.type] = event_id
            self._started[c.type] = c.at
            self._severity[c.type] = c.severity
            self.events_started += 1
            self._records[c.type] = OpenEvent(event_id, c.type, c.at, severity=c.severity.value, data=data)
        else:
            found = self._open.pop(c.type, None)
            if found is None:
                return None
            event_id = found
            data["duration_s"] = round(c.at - self._started.pop(c.type, c.at), 3)
            self._records.pop(c.type, None)
            if c.type in self._resumed:
                self._resumed.discard(c.type)
                data["after_restart"] = True
        self._persist()
        return DeviceEvent(ts=_ts(c.at), type=c.type, state=c.state, event_id=event_id, severity=c.severity,
                           measure=c.measure, message=c.message, data=data)


    def _persist(self) -> None:
        if self._store is None:
            return
        try:
            self._store.save(self._records.values())
        except OSError as exc:
            # The event still goes out; only its survival of a restart is lost (counted, logged).
            self.persist_failures += 1
            log.warning("elevator %s: open events not recorded: %s", self.device_id, exc)


def _severity(value: str | None) -> Severity:
    try:
        return Severity(value) if value else Severity.MAJOR
    except ValueError:
        return Severity.MAJOR


def _ts(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


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
