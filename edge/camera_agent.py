"""The camera agent: watches camera feeds and publishes only what matters, each event with a snapshot.

Cameras are spread over worker processes (analysis is CPU work; each camera is a thread
inside its worker, and OpenCV releases the GIL while it decodes and filters). Workers send
their outputs to this process, which publishes them over MQTT: events and telemetry per
camera, and a retained status whose MQTT last will says offline. With a data folder
(``--data-dir``) each camera publishes through an ``edge.runtime.EdgeLink`` instead: events and
telemetry wait in a durable outbox while the broker is unreachable and go out in order after.

Usage:
    vigil edge camera --source SRC --camera-id ID --mqtt URL [--config FILE]
    python -m edge.camera_agent --config cameras.yaml --mqtt mqtt://localhost:1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import cv2

from broker.contracts import Channel, DeviceEvent, DeviceStatus, Kind, Severity, Telemetry, device_topic, encode
from broker.credentials import add_mqtt_arguments
from broker.mqtt import MqttClient, MqttError, Will
from edge.camera.config import (
    AgentConfig,
    CameraConfig,
    ConfigError,
    EvidenceSettings,
    camera_from_dict,
    load_agent_config,
)
from edge.camera.events import (
    CAMERA_COVERED,
    CAMERA_DEFOCUSED,
    CAMERA_MOVED,
    CROWD,
    INTRUSION,
    LINE_CROSSING,
    LOITERING,
    VIDEO_LOSS,
)
from edge.camera.evidence import EvidenceStore
from edge.camera.runner import AgentOutput, CameraRunner, EventOutput, StatusOutput, TelemetryOutput
from edge.camera.source import mask_url
from edge.runtime import EdgeIdentity, EdgeLink, EdgeLinkError, OutboxError
from edge.runtime.outbox import OPEN_EVENTS_FILE, OpenEvent, OpenEventFile

log = logging.getLogger("vigil.camera_agent")
AGENT_NAME = "vigil-camera-agent"
QUEUE_SIZE = 1000
PURGE_INTERVAL_S = 3600.0
SEVERITY = {
    INTRUSION: Severity.MAJOR, LINE_CROSSING: Severity.WARNING, LOITERING: Severity.WARNING,
    CROWD: Severity.WARNING, CAMERA_COVERED: Severity.MAJOR, CAMERA_DEFOCUSED: Severity.WARNING,
    CAMERA_MOVED: Severity.MAJOR, VIDEO_LOSS: Severity.MAJOR,
}


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# ---------------------------------------------------------------------------- outputs -> contract

def to_message(output: AgentOutput) -> tuple[str, bytes, bool]:
    """The MQTT topic, payload and retain flag of one worker output."""
    cam = output.camera_id
    if isinstance(output, EventOutput):
        ev = output.event
        data: dict[str, Any] = {**ev.data, "started_at": _utc(ev.started_at).isoformat(),
                                "detected_at": _utc(ev.detected_at).isoformat()}
        if ev.boxes:
            data["boxes"] = [[b.x, b.y, b.w, b.h] for b in ev.boxes]
        msg = DeviceEvent(ts=_utc(ev.ts), type=ev.type, state=ev.state, event_id=ev.event_id,
                          severity=SEVERITY.get(ev.type), zone=ev.zone, measure=ev.measure,
                          snapshot_url=output.snapshot_url, message=ev.message or None, data=data)
        return device_topic(Kind.CAMERA, cam, Channel.EVENT), encode(msg), False
    if isinstance(output, TelemetryOutput):
        return (device_topic(Kind.CAMERA, cam, Channel.TELEMETRY),
                encode(Telemetry(ts=_utc(output.t), metrics=dict(output.metrics))), False)
    status = DeviceStatus(ts=_utc(output.t), online=output.online, reason=output.reason, agent=AGENT_NAME)
    return device_topic(Kind.CAMERA, cam, Channel.STATUS), encode(status), True


def offline_will(camera_id: str) -> Will:
    """The last will: the broker marks the camera offline if the agent vanishes."""
    payload = encode(DeviceStatus(online=False, reason="agent connection lost", agent=AGENT_NAME))
    return Will(device_topic(Kind.CAMERA, camera_id, Channel.STATUS), payload, qos=1, retain=True)


# ---------------------------------------------------------------------------- workers

def _emitter(out: Any, counters: dict[str, int]) -> Callable[[AgentOutput], None]:
    def emit(output: AgentOutput) -> None:
        if isinstance(output, TelemetryOutput):
            try:
                out.put_nowait(output)
            except queue.Full:
                counters["telemetry_dropped"] = counters.get("telemetry_dropped", 0) + 1
        else:
            # Events and status wait for room: backpressure rather than loss.
            out.put(output)
    return emit


def run_cameras(cameras: Sequence[CameraConfig], evidence: EvidenceSettings, out: Any,
                stop: threading.Event | MpEvent, resume: Mapping[str, Sequence[OpenEvent]] | None = None) -> None:
    """Run cameras, one thread each, until their sources end or ``stop`` is set.

    ``resume``: per camera, the events its previous process left open (taken over, see ``CameraRunner``).
    """
    store = EvidenceStore(evidence)
    counters: dict[str, int] = {}
    local_stop = threading.Event()
    runners = [CameraRunner(cam, _emitter(out, counters), store, local_stop, resume=(resume or {}).get(cam.id, ()))
               for cam in cameras]
    threads = [threading.Thread(target=_guarded, args=(r,), name=f"camera-{r.config.id}") for r in runners]
    for th in threads:
        th.start()
    next_purge = 0.0
    while any(th.is_alive() for th in threads):
        if time.monotonic() >= next_purge:
            _purge(store)
            next_purge = time.monotonic() + PURGE_INTERVAL_S
        if stop.wait(0.2):
            local_stop.set()
    _purge(store)


def _purge(store: EvidenceStore) -> None:
    try:
        removed = store.purge(time.time())
    except OSError as exc:
        log.warning("evidence purge failed: %s", exc)
        return
    if removed:
        log.info("evidence: removed %d day folder(s) past retention", removed)


def _guarded(runner: CameraRunner) -> None:
    try:
        runner.run()
    except Exception:
        # One broken camera must not take the others down; its status says why.
        log.exception("camera %s crashed", runner.config.id)
        runner.emit(StatusOutput(runner.config.id, time.time(), False, "analysis crashed"))


def _worker_main(cameras: list[CameraConfig], evidence: EvidenceSettings, out: Any, stop: MpEvent,
                 log_level: int, parent_pid: int, resume: Mapping[str, Sequence[OpenEvent]] | None = None) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # One camera per thread already fills the cores; OpenCV's own threads would only contend.
    cv2.setNumThreads(1)
    local = threading.Event()

    def watch() -> None:
        # A worker whose agent died (killed, crashed) must not analyse on for nobody.
        while not local.is_set():
            if stop.is_set() or os.getppid() != parent_pid:
                local.set()
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    run_cameras(cameras, evidence, out, local, resume)
    local.set()


def assign(cameras: Sequence[CameraConfig], workers: int) -> list[list[CameraConfig]]:
    """Spread cameras over worker processes round-robin (each worker gets at least one)."""
    workers = max(1, min(workers, len(cameras)))
    groups: list[list[CameraConfig]] = [[] for _ in range(workers)]
    for i, cam in enumerate(cameras):
        groups[i % workers].append(cam)
    return groups


# ---------------------------------------------------------------------------- agent

class CameraAgent:
    """Runs the cameras and publishes their outputs over MQTT until they end or ``stop()``."""

    def __init__(self, cameras: Sequence[CameraConfig], mqtt_url: str, evidence: EvidenceSettings,
                 workers: int | None = None, *, data_dir: str | Path | None = None, linger_s: float = 10.0) -> None:
        """``data_dir`` gives per-camera outboxes; ``linger_s`` waits at the end for the broker to take them."""
        if not cameras:
            raise ConfigError("camera agent", "no camera configured (give --source and --camera-id or a config)")
        self.cameras = list(cameras)
        self.mqtt_url = mqtt_url
        self.evidence = evidence
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.published = 0
        self.publish_failures = 0
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.linger_s = linger_s
        self.links: dict[str, EdgeLink] = {}
        """Per-camera links while running with ``data_dir`` (for health figures and tests)."""
        self._stop_requested = threading.Event()
        self._stop_called = False
        self._open_files: dict[str, OpenEventFile] = {}
        self._open: dict[str, dict[str, OpenEvent]] = {}
        """Per camera, its open events by id (with ``data_dir``: kept in ``{data_dir}/{id}/open-events.json``)."""

    def stop(self) -> None:
        """Ask every camera to finish (open events are closed and published)."""
        self._stop_called = True
        self._stop_requested.set()

    async def run(self) -> None:
        """Connect, run the cameras, publish everything, disconnect.

        Raises:
            MqttError: the broker cannot be reached at start (without ``data_dir``).
            EdgeLinkError: a camera's outbox folder is unusable or in use (with ``data_dir``).
        """
        if self.data_dir is not None:
            await self._run_linked(self.data_dir)
            return
        clients: dict[str, MqttClient] = {}
        try:
            for cam in self.cameras:
                client = MqttClient(self.mqtt_url, f"vigil-camera-{cam.id}", will=offline_will(cam.id))
                await client.start()
                clients[cam.id] = client
            await self._run(partial(self._publish, clients))
        finally:
            for client in clients.values():
                await client.stop()

    async def _run_linked(self, data_dir: Path) -> None:
        # One link per camera: each keeps its own identity, retained status, last will and outbox.
        try:
            for cam in self.cameras:
                identity = EdgeIdentity.for_device(Kind.CAMERA, cam.id, agent=AGENT_NAME)
                link = EdgeLink(self.mqtt_url, identity, data_dir / cam.id)
                self.links[cam.id] = link
                # Events left open by a previous process (killed): the analytics take them over.
                self._open_files[cam.id] = f = OpenEventFile(data_dir / cam.id / OPEN_EVENTS_FILE)
                self._open[cam.id] = {ev.event_id: ev for ev in f.load()}
                if self._open[cam.id]:
                    log.info("camera %s: taking over %d open event(s) from before the restart", cam.id,
                             len(self._open[cam.id]))
                await link.start()
            await self._run(self._publish_linked)
            if not self._stop_called:
                deadline = time.monotonic() + self.linger_s
                for link in self.links.values():
                    if len(link.outbox) and await link.wait_connected(max(0.0, deadline - time.monotonic())):
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                                await link.flush()
        finally:
            for cam_id, link in self.links.items():
                await link.stop()
                left = link.outbox.appended - link.outbox.delivered - link.outbox.dropped
                if left > 0:
                    log.warning("camera %s: %d message(s) left in the outbox for the next start", cam_id, left)

    async def _run(self, publish: Callable[[AgentOutput], Awaitable[None]]) -> None:
        resume = {cam_id: list(events.values()) for cam_id, events in self._open.items() if events}
        if self.workers == 0:
            out: Any = queue.Queue(QUEUE_SIZE)
            th = threading.Thread(target=run_cameras, name="cameras",
                                  args=(self.cameras, self.evidence, out, self._stop_requested, resume))
            th.start()
            alive: Callable[[], bool] = th.is_alive
            stop_all: Callable[[], None] = lambda: None  # noqa: E731 - the thread watches the same event
        else:
            ctx = mp.get_context("spawn")
            out = ctx.Queue(QUEUE_SIZE)
            mp_stop = ctx.Event()
            procs = [ctx.Process(target=_worker_main, name=f"camera-worker-{i}", daemon=True,
                                 args=(group, self.evidence, out, mp_stop, logging.getLogger().level, os.getpid(),
                                       {c.id: resume[c.id] for c in group if c.id in resume}))
                     for i, group in enumerate(assign(self.cameras, self.workers))]
            for p in procs:
                p.start()
            alive = lambda: any(p.is_alive() for p in procs)  # noqa: E731
            stop_all = mp_stop.set
        try:
            while True:
                if self._stop_requested.is_set():
                    stop_all()
                try:
                    output = await asyncio.to_thread(out.get, True, 0.2)
                except queue.Empty:
                    if not alive():
                        break
                    continue
                await publish(output)
        finally:
            stop_all()
            self._stop_requested.set()
        # Whatever the workers put last (end events, offline status) is still in the queue.
        while True:
            try:
                output = out.get_nowait()
            except queue.Empty:
                break
            await publish(output)

    async def _publish(self, clients: dict[str, MqttClient], output: AgentOutput) -> None:
        client = clients.get(output.camera_id)
        if client is None:
            return
        topic, payload, retain = to_message(output)
        await client.publish(topic, payload, qos=1, retain=retain)
        self.published += 1
        _log_event(output)

    async def _publish_linked(self, output: AgentOutput) -> None:
        link = self.links.get(output.camera_id)
        if link is None:
            return
        if isinstance(output, StatusOutput):
            # The link's retained status bypasses the outbox: only the latest truth is ever sent.
            link.set_online(output.online, output.reason)
        else:
            topic, payload, _ = to_message(output)
            try:
                link.publish(topic, payload)
            except (OutboxError, ValueError) as exc:
                self.publish_failures += 1
                log.warning("camera %s: cannot queue %s: %s", output.camera_id, topic, exc)
                return
            self._record(output)
        self.published += 1
        _log_event(output)


    def _record(self, output: AgentOutput) -> None:
        """Keep the camera's open events on disk: written on a start or an end only."""
        f = self._open_files.get(output.camera_id)
        if f is None or not isinstance(output, EventOutput) or output.event.state == "instant":
            return
        ev, events = output.event, self._open.setdefault(output.camera_id, {})
        if ev.state == "start":
            events[ev.event_id] = OpenEvent(ev.event_id, ev.type, ev.started_at, ev.zone,
                                            str(SEVERITY[ev.type]) if ev.type in SEVERITY else None)
        elif events.pop(ev.event_id, None) is None:
            return
        try:
            f.save(events.values())
        except OSError as exc:
            log.warning("camera %s: open events not recorded: %s", output.camera_id, exc)


def _log_event(output: AgentOutput) -> None:
    if isinstance(output, EventOutput):
        ev = output.event
        log.info("camera %s: %s %s%s measure=%s", output.camera_id, ev.type, ev.state,
                 f" zone={ev.zone}" if ev.zone else "", ev.measure)


# ---------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``vigil edge camera``."""
    p = argparse.ArgumentParser(prog="vigil edge camera", description="Vigil camera agent")
    p.add_argument("--source", help="video file, rtsp:// or http:// stream, or device (0, /dev/video0)")
    p.add_argument("--camera-id", help="camera id used in topics (with --source)")
    add_mqtt_arguments(p, help="broker URL, e.g. mqtt://localhost:1883 (or `mqtt` in the config)")
    p.add_argument("--config", help="YAML config: evidence, workers, camera defaults, cameras")
    p.add_argument("--loop", action="store_true", help="loop a video file at its own speed (demos)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="play a file at its own speed (default: only with --loop)")
    p.add_argument("--start-time", help="RFC 3339 wall-clock time of a file's first frame")
    p.add_argument("--workers", type=int, help="worker processes (0 = in-process; default one per core)")
    p.add_argument("--evidence-dir", help="snapshot folder (overrides the config)")
    p.add_argument("--data-dir", help="outbox folder (one sub-folder per camera): queue events on disk while the "
                   "broker is unreachable (or `data_dir` in the config; default: publish directly)")
    p.add_argument("--log-level", default="INFO")
    return p


def cameras_from_args(args: argparse.Namespace, agent: AgentConfig, cameras: list[CameraConfig]) -> list[CameraConfig]:
    """The configured cameras plus the one given on the command line.

    Raises:
        ConfigError: --source without --camera-id or the reverse, or a duplicate id.
    """
    if bool(args.source) != bool(args.camera_id):
        raise ConfigError("command line", "--source and --camera-id go together")
    if args.source:
        raw: dict[str, Any] = {"id": args.camera_id, "source": args.source, "loop": args.loop}
        if args.realtime is not None:
            raw["realtime"] = args.realtime
        if args.start_time:
            raw["start_time"] = args.start_time
        cam = camera_from_dict(raw, agent.camera, "command line")
        if any(c.id == cam.id for c in cameras):
            raise ConfigError("command line", f"camera {cam.id!r} is also in the config")
        cameras = [*cameras, cam]
    return cameras


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil edge camera`` / ``python -m edge.camera_agent``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        agent_cfg, cameras = load_agent_config(args.config)
        cameras = cameras_from_args(args, agent_cfg, cameras)
        mqtt_url = args.mqtt or agent_cfg.mqtt
        if not mqtt_url:
            raise ConfigError("command line", "no broker: give --mqtt or `mqtt` in the config")
        evidence = agent_cfg.evidence
        if args.evidence_dir:
            evidence = EvidenceSettings(**{**{f: getattr(evidence, f) for f in evidence.__struct_fields__},
                                           "dir": args.evidence_dir})
        workers = args.workers if args.workers is not None else agent_cfg.workers
        agent = CameraAgent(cameras, mqtt_url, evidence, workers, data_dir=args.data_dir or agent_cfg.data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("camera agent: %d camera(s): %s", len(cameras),
             ", ".join(f"{c.id}={mask_url(c.source)}" for c in cameras))
    return asyncio.run(_serve(agent))


async def _serve(agent: CameraAgent) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    except (MqttError, EdgeLinkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
