"""Drives one camera: source -> paced analysis -> evidence -> outputs (events, telemetry, status).

Runs in a worker thread or process; everything it reports goes through ``emit`` as plain
frozen dataclasses, so the agent can ship them across processes to its MQTT side.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cv2
import msgspec
import numpy as np

from edge.camera.analyzer import CameraAnalyzer
from edge.camera.config import CameraConfig
from edge.camera.events import CameraEvent
from edge.camera.evidence import EvidenceStore, annotate
from edge.camera.health import VideoLossDetector
from edge.camera.source import FileSource, LiveSource, SourceError, SourceFrame, is_device, is_stream, mask_url
from edge.runtime.outbox import OpenEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventOutput:
    """An event to publish, with its snapshot URL."""

    camera_id: str
    event: CameraEvent
    snapshot_url: str | None


@dataclass(frozen=True, slots=True)
class TelemetryOutput:
    """Periodic health telemetry of one camera."""

    camera_id: str
    t: float
    metrics: dict[str, float | int | bool | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusOutput:
    """The camera's availability changed."""

    camera_id: str
    t: float
    online: bool
    reason: str


AgentOutput = EventOutput | TelemetryOutput | StatusOutput
Emit = Callable[[AgentOutput], None]


class _Stats:
    """Counters of one telemetry interval."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.analysed = 0
        self.busy_s = 0.0
        self.latency_s = 0.0
        self.dropped = 0


class CameraRunner:
    """One camera's loop. ``run`` returns when the source ends (files) or ``stop`` is set."""

    def __init__(self, config: CameraConfig, emit: Emit, store: EvidenceStore | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.time,
                 resume: Sequence[OpenEvent] = ()) -> None:
        """``resume``: events the previous agent process left open (its data folder), taken over by the
        analytics on the first frame (video loss at once): ended under their ids if the condition is
        gone after its off-time, else continued."""
        self.config = config
        self.emit = emit
        self.store = store
        self.stop = stop or threading.Event()
        self.clock = clock
        self.period = 1.0 / config.analysis_fps
        self.analyzer: CameraAnalyzer | None = None
        self.video_loss = VideoLossDetector(config.id, config.health.video_loss_after_s)
        self._next_due: float | None = None
        self._stats: _Stats | None = None
        self._snapshots: dict[str, str | None] = {}
        self._last_frame: SourceFrame | None = None
        self.frames_analysed = 0
        self.analysis_errors = 0
        self._resume = [ev for ev in resume if ev.type != self.video_loss.series.type]
        for ev in resume:
            if ev.type == self.video_loss.series.type:
                self.video_loss.series.resume(ev.event_id, ev.started_at)
        self._taken_over = {ev.event_id for ev in resume}

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Read and analyse until the source ends or the runner is stopped."""
        src = self.config.source
        if is_stream(src) or is_device(src):
            self._run_live()
        else:
            self._run_file()

    def _start_epoch(self) -> float:
        if self.config.start_time:
            return datetime.fromisoformat(self.config.start_time).timestamp()
        return self.clock()

    def _run_file(self) -> None:
        try:
            source = FileSource(self.config.source, self._start_epoch(), self.config.loop)
        except SourceError as exc:
            log.error("camera %s: %s", self.config.id, exc)
            self.emit(StatusOutput(self.config.id, self.clock(), False, f"source error: {exc.detail}"))
            return
        self.emit(StatusOutput(self.config.id, source.start_epoch, True, "analysing"))
        last_t = source.start_epoch
        realtime = self.config.loop if self.config.realtime is None else self.config.realtime
        wall_start = time.monotonic()
        try:
            while not self.stop.is_set():
                got = source.next(self._due)
                if got is None:
                    break
                if got is False:
                    continue
                assert isinstance(got, SourceFrame)
                if realtime:
                    # Demos: hold each frame until its time has come, as a camera would deliver it.
                    ahead = (got.t - source.start_epoch) - (time.monotonic() - wall_start)
                    if ahead > 0 and self.stop.wait(ahead):
                        break
                last_t = got.t
                started = time.perf_counter()
                self._analyse(got)
                self._account(got.t, time.perf_counter() - started, time.perf_counter() - started)
        finally:
            source.close()
        self._finish(last_t, "source ended" if not self.stop.is_set() else "stopped")

    def _run_live(self) -> None:
        source = LiveSource(self.config.source)
        source.start()
        online: bool | None = None
        try:
            while not self.stop.is_set():
                frame = source.latest(timeout=min(self.period, 0.5))
                now = self.clock()
                # Say "down" only once an attempt failed, not while the first connection is still opening.
                if source.connected != online and (source.connected or online is not None or source.reconnects):
                    online = source.connected
                    self.emit(StatusOutput(self.config.id, now, online,
                                           "streaming" if online else f"stream down: {source.last_error}"))
                if frame is None:
                    self._tick(now, "stream down" if not source.connected else "no frames")
                    continue
                if not self._due(frame.t):
                    continue
                started = time.perf_counter()
                self._analyse(frame)
                done = self.clock()
                self._account(frame.t, time.perf_counter() - started, done - frame.t,
                              dropped=source.frames_overwritten)
                source.frames_overwritten = 0
        finally:
            source.close()
        self._finish(self.clock(), "stopped")

    def _due(self, t: float) -> bool:
        """Pace analysis on the source clock: take the first frame at or after each due time."""
        if self._next_due is None or t >= self._next_due - 1e-6:
            nxt = (t if self._next_due is None else self._next_due) + self.period
            # After a gap (loss, slow machine) start afresh rather than racing to catch up.
            self._next_due = nxt if nxt > t else t + self.period
            return True
        return False

    # ------------------------------------------------------------------ analysis

    def _analyse(self, frame: SourceFrame) -> None:
        h, w = frame.image.shape[:2]
        if self.analyzer is not None and self.analyzer.scale.source_size != (w, h):
            # The camera came back with another resolution: start its analytics afresh.
            log.warning("camera %s: frame size changed from %s to %s", self.config.id,
                        self.analyzer.scale.source_size, (w, h))
            for event in self.analyzer.close(frame.t):
                if event.type != self.video_loss.series.type:
                    self._publish(event, None)
            self.analyzer = None
        if self.analyzer is None:
            self.analyzer = CameraAnalyzer(self.config.id, self.config, (w, h))
            self.analyzer.video = self.video_loss
            if self._resume:
                for event in self.analyzer.resume(self._resume, frame.t):
                    self._publish(event, None)
                self._resume = []
        self._last_frame = frame
        self.frames_analysed += 1
        try:
            events = self.analyzer.analyse(frame.t, frame.image)
        except (cv2.error, ValueError) as exc:
            # One bad frame (corrupt decode, odd format) is counted and skipped, not fatal.
            self.analysis_errors += 1
            if self.analysis_errors in (1, 10, 100) or self.analysis_errors % 1000 == 0:
                log.warning("camera %s: frame skipped (%d so far): %s", self.config.id, self.analysis_errors, exc)
            return
        for event in events:
            self._publish(event, frame.image)

    def _tick(self, now: float, reason: str) -> None:
        if self.analyzer is not None:
            events = self.analyzer.tick(now, reason)
        else:
            ev = self.video_loss.tick(now, reason)
            events = [ev] if ev else []
        for event in events:
            self._publish(event, self._last_frame.image if self._last_frame else None)
        self._account(now, 0.0, 0.0, analysed=False)

    def _publish(self, event: CameraEvent, image: np.ndarray | None) -> None:
        url: str | None
        if event.state == "end" and event.event_id in self._taken_over:
            self._taken_over.discard(event.event_id)
            event = dataclasses.replace(event, data={**event.data, "after_restart": True})
        if event.state == "end":
            url = self._snapshots.pop(event.event_id, None)
        else:
            url = self._snapshot(event, image)
            if event.state == "start":
                self._snapshots[event.event_id] = url
        self.emit(EventOutput(self.config.id, event, url))

    def _snapshot(self, event: CameraEvent, image: np.ndarray | None) -> str | None:
        if self.store is None or image is None:
            return None
        try:
            return self.store.save(self.config.id, event, annotate(image, self.config, event, self.config.id))
        except OSError as exc:
            log.error("camera %s: cannot save snapshot: %s", self.config.id, exc)
            return None

    # ------------------------------------------------------------------ telemetry

    def _account(self, t: float, busy_s: float, latency_s: float, dropped: int = 0, analysed: bool = True) -> None:
        stats = self._stats
        if stats is None:
            stats = self._stats = _Stats(t)
        if analysed:
            stats.analysed += 1
            stats.busy_s += busy_s
            stats.latency_s += latency_s
        stats.dropped += dropped
        span = t - stats.start
        if span >= self.config.telemetry_interval_s:
            self.emit(TelemetryOutput(self.config.id, t, self._metrics(stats, span)))
            self._stats = _Stats(t)

    def _metrics(self, stats: _Stats, span: float) -> dict[str, float | int | bool | str]:
        n = max(stats.analysed, 1)
        metrics: dict[str, Any] = {
            "analysis_fps": round(stats.analysed / span, 2),
            "process_ms": round(1000 * stats.busy_s / n, 2),
            "latency_ms": round(1000 * stats.latency_s / n, 2),
            "frames_dropped": stats.dropped,
            "video_ok": not self.video_loss.active,
            "analysis_errors": self.analysis_errors,
        }
        health = self.analyzer.health.last if self.analyzer else None
        if health is not None:
            metrics.update(brightness=round(health.brightness, 1), contrast=round(health.contrast, 2),
                           sharpness=round(health.sharpness, 4))
            if health.similarity is not None:
                metrics["scene_similarity"] = round(health.similarity, 3)
        motion = self.analyzer.last_motion if self.analyzer else None
        if motion is not None:
            metrics["motion"] = round(motion.changed, 4)
        return metrics

    def _finish(self, t: float, reason: str) -> None:
        if self.analyzer is not None:
            for event in self.analyzer.close(t):
                self._publish(event, None)
        self.emit(StatusOutput(self.config.id, t, False, reason))
        log.info("camera %s (%s): %s after %d analysed frames", self.config.id, mask_url(self.config.source),
                 reason, self.frames_analysed)


def analyse_file(config: CameraConfig, store: EvidenceStore | None = None) -> list[AgentOutput]:
    """Run one camera over a video file as fast as possible and return everything it reported."""
    outputs: list[AgentOutput] = []
    CameraRunner(config, outputs.append, store).run()
    return outputs


def events_of(outputs: list[AgentOutput]) -> list[CameraEvent]:
    """The events among a runner's outputs, in order."""
    return [o.event for o in outputs if isinstance(o, EventOutput)]


def with_source(config: CameraConfig, source: str, **changes: Any) -> CameraConfig:
    """A copy of a camera config reading another source."""
    return msgspec.structs.replace(config, source=source, **changes)
