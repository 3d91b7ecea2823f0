"""The camera agent end to end: simulator videos and a live MJPEG stream -> agent -> real Mosquitto.

Events arriving over MQTT are decoded with the contracts and scored against the scenes' ground truth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from broker.contracts import DeviceEvent, DeviceStatus, Telemetry, decode_device_message, device_filter
from broker.mqtt import Message, MqttClient
from edge.camera.config import EvidenceSettings, camera_from_dict
from edge.camera.runner import analyse_file, events_of
from edge.camera_agent import CameraAgent
from simulators.camera_scenes import SCENARIO_DIR, MjpegStreamServer, Scene, render_file
from simulators.camera_truth import detections_from_events, ground_truth, score

REPO = Path(__file__).resolve().parents[2]


class Collector:
    """Every camera message seen on the broker, decoded."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any, bool]] = []

    def __call__(self, batch: list[Message]) -> None:
        for m in batch:
            msg = decode_device_message(m.topic, m.payload)
            self.messages.append((msg.device_id, msg.payload, m.retain))

    def of(self, camera: str, kind: type[Any]) -> list[Any]:
        return [p for cam, p, _ in self.messages if cam == camera and isinstance(p, kind)]


async def subscriber(url: str, name: str) -> tuple[MqttClient, Collector]:
    client = MqttClient(url, name, clean_start=True)
    await client.start()
    collector = Collector()
    for channel in ("event", "telemetry", "status"):
        client.subscribe(device_filter(channel, "camera"), collector)
    await asyncio.sleep(0.2)
    return client, collector


async def test_files_and_stream_through_mosquitto(mosquitto: Any, tmp_path: Path) -> None:
    night = Scene.load(SCENARIO_DIR / "camera_intrusion_night.yaml")
    video, _ = render_file(night, tmp_path)
    cut = Scene.load(SCENARIO_DIR / "camera_stream_cut.yaml")
    server = MjpegStreamServer(cut)
    cams = [
        camera_from_dict({**night.camera, "id": "yard-1", "source": str(video),
                          "start_time": night.start_time.isoformat(), "telemetry_interval_s": 5.0}),
        camera_from_dict({**cut.camera, "id": "street-2", "source": server.url, "telemetry_interval_s": 2.0}),
    ]
    agent = CameraAgent(cams, mosquitto.url, EvidenceSettings(dir=str(tmp_path / "evidence")), workers=2)
    sub, seen = await subscriber(mosquitto.url, "camera-test-sub")
    try:
        task = asyncio.create_task(agent.run())
        # Start the scene once the workers run, so the live camera sees it from its first frame.
        async with asyncio.timeout(30):
            while not seen.of("yard-1", DeviceStatus):
                await asyncio.sleep(0.05)
        server.start()
        await asyncio.to_thread(server.wait)
        await asyncio.sleep(0.5)
        agent.stop()
        async with asyncio.timeout(20):
            await task
        await asyncio.sleep(0.3)
    finally:
        server.close()
        await sub.stop()

    # The file camera: intrusions after 22:00 only, scored against the ground truth.
    events = seen.of("yard-1", DeviceEvent)
    s = score(ground_truth(night), detections_from_events(events, night.start_time.timestamp(), night.duration_s))
    assert (s["intrusion"].truths, s["intrusion"].precision, s["intrusion"].recall) == (2, 1.0, 1.0)
    for ev in events:
        assert ev.snapshot_url and Path(ev.snapshot_url.removeprefix("file://")).is_file()
        assert ev.severity is not None and ev.event_id
    assert seen.of("yard-1", Telemetry)

    # The stream camera: the intrusion, then one video loss for the cut, ended when the stream came back.
    events = seen.of("street-2", DeviceEvent)
    dets = detections_from_events(events, server.epoch, cut.duration_s)
    s = score(ground_truth(cut), dets)
    assert (s["video_loss"].truths, s["video_loss"].precision, s["video_loss"].recall) == (1, 1.0, 1.0)
    assert (s["intrusion"].truths, s["intrusion"].precision, s["intrusion"].recall) == (1, 1.0, 1.0)
    # Live and file analysis of the same scene agree (the file without the cut, on its own clock).
    uncut, _ = render_file(dataclasses.replace(cut, incidents=()), tmp_path / "uncut")
    offline = events_of(analyse_file(camera_from_dict({**cut.camera, "id": "street-2", "source": str(uncut),
                                                       "start_time": cut.start_time.isoformat()})))
    live_start = next(d for d in dets if d.type == "intrusion").start
    file_start = next(e for e in offline if e.type == "intrusion").ts - cut.start_time.timestamp()
    assert abs(live_start - file_start) <= 0.5
    loss = [e for e in events if e.type == "video_loss"]
    assert [e.state for e in loss][:2] == ["start", "end"]
    tele = seen.of("street-2", Telemetry)
    assert tele and all(0 < t.metrics["analysis_fps"] <= 6 for t in tele if t.metrics["video_ok"])

    # Status: online while analysing, offline with a reason at the end (retained).
    for cam in ("yard-1", "street-2"):
        statuses = seen.of(cam, DeviceStatus)
        assert statuses[0].online and not statuses[-1].online and statuses[-1].reason
    check, retained = await subscriber(mosquitto.url, "camera-test-retained")
    await asyncio.sleep(0.3)
    await check.stop()
    assert {cam for cam, p, r in retained.messages if isinstance(p, DeviceStatus) and r and not p.online} == {
        "yard-1", "street-2"}


async def test_killed_agent_is_marked_offline_by_last_will(mosquitto: Any, tmp_path: Path) -> None:
    scene = Scene.load(SCENARIO_DIR / "camera_quiet_drift.yaml")
    video, _ = render_file(scene, tmp_path)
    cmd = [sys.executable, "-m", "edge.camera_agent", "--source", str(video), "--camera-id", "gate-7", "--loop",
           "--mqtt", mosquitto.url, "--workers", "1", "--evidence-dir", str(tmp_path / "ev")]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sub, seen = await subscriber(mosquitto.url, "camera-will-sub")
    try:
        deadline = time.monotonic() + 20
        while not seen.of("gate-7", DeviceStatus) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert seen.of("gate-7", DeviceStatus)[-1].online
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while seen.of("gate-7", DeviceStatus)[-1].online and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        last = seen.of("gate-7", DeviceStatus)[-1]
        assert not last.online and last.reason == "agent connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
        await sub.stop()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera: {zonez: []}\n", encoding="utf-8")
    for args, fragment in ((["--source", "x.mp4"], "--camera-id"), (["--config", str(bad), "--mqtt", "mqtt://h"],
                                                                     "zonez")):
        res = subprocess.run([sys.executable, "-m", "edge.camera_agent", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 2 and fragment in res.stderr


@pytest.fixture(autouse=True)
def _quiet_reconnect_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")


async def test_in_process_agent_closes_open_events_on_stop(mosquitto: Any, tmp_path: Path) -> None:
    scene = Scene.from_dict({
        "name": "stop", "size": [160, 120], "fps": 10, "duration_s": 8, "noise": 3.0,
        "figures": [{"id": "a", "size": [8, 20], "path": [[2, 100, 80], [8, 110, 85]]}],  # stays in the yard
        "camera": {"zones": [{"name": "yard", "polygon": [[60, 20], [160, 20], [160, 110], [60, 110]],
                              "intrusion": {}}]},
    })
    video, _ = render_file(scene, tmp_path)
    cam = camera_from_dict({**scene.camera, "id": "store-3", "source": str(video), "loop": True, "realtime": False})
    agent = CameraAgent([cam], mosquitto.url, EvidenceSettings(dir=str(tmp_path / "ev")), workers=0)
    sub, seen = await subscriber(mosquitto.url, "camera-stop-sub")
    try:
        task = asyncio.create_task(agent.run())
        async with asyncio.timeout(20):
            while not seen.of("store-3", DeviceEvent):
                await asyncio.sleep(0.05)
        agent.stop()
        async with asyncio.timeout(20):
            await task
        await asyncio.sleep(0.3)
    finally:
        await sub.stop()
    events = seen.of("store-3", DeviceEvent)
    starts = [e for e in events if e.state == "start"]
    ends = {e.event_id: e for e in events if e.state == "end"}
    assert starts and all(s.event_id in ends for s in starts)  # nothing left open
    assert seen.of("store-3", DeviceStatus)[-1].reason == "stopped"


async def test_camera_with_only_a_source_reports_a_person_walking_in(mosquitto: Any, tmp_path: Path) -> None:
    """No config at all: the whole frame is one zone, so the agent process reports the walker as an intrusion
    (start and end, zone "frame", with a snapshot), and nothing on an empty scene."""
    walker = Scene.from_dict({
        "name": "walk-in", "size": [160, 120], "fps": 10, "duration_s": 10, "noise": 3.0, "seed": 4,
        "figures": [{"id": "p", "size": [10, 24], "path": [[2, -12, 70], [7, 172, 75]]}],
    })
    video, _ = render_file(walker, tmp_path)
    cmd = [sys.executable, "-m", "edge.camera_agent", "--source", str(video), "--camera-id", "lobby-1",
           "--mqtt", mosquitto.url, "--workers", "0", "--evidence-dir", str(tmp_path / "ev")]
    sub, seen = await subscriber(mosquitto.url, "camera-default-zone-sub")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (not any(e.state == "end" for e in seen.of("lobby-1", DeviceEvent))
               and time.monotonic() < deadline and proc.poll() is None):
            await asyncio.sleep(0.1)
        proc.wait(timeout=30)
        await asyncio.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        await sub.stop()
    events = seen.of("lobby-1", DeviceEvent)
    starts = [e for e in events if e.state == "start"]
    assert [e.type for e in starts] == ["intrusion"], events
    assert starts[0].zone == "frame"
    assert starts[0].snapshot_url
    assert any(e.state == "end" and e.event_id == starts[0].event_id for e in events)

    # The same camera on a scene with nobody in it stays quiet.
    empty = Scene.from_dict({"name": "empty", "size": [160, 120], "fps": 10, "duration_s": 10, "noise": 3.0,
                             "seed": 4, "figures": []})
    quiet_video, _ = render_file(empty, tmp_path / "empty")
    outputs = analyse_file(camera_from_dict({"id": "lobby-1", "source": str(quiet_video)}))
    assert events_of(outputs) == []
    assert events_of(analyse_file(camera_from_dict({"id": "lobby-1", "source": str(video)})))
