"""The per-camera runner on small files: pacing on the source clock, telemetry, snapshots, looping;
and the agent's mapping of outputs to contract messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.contracts import Channel, DeviceEvent, DeviceStatus, Telemetry, decode_device_message
from edge.camera.config import EvidenceSettings, camera_from_dict
from edge.camera.evidence import EvidenceStore
from edge.camera.runner import CameraRunner, EventOutput, StatusOutput, TelemetryOutput, analyse_file, events_of
from edge.camera_agent import assign, offline_will, to_message
from simulators.camera_scenes import Scene, render_file

START = "2026-11-26T22:00:00+08:00"
SCENE: dict[str, Any] = {
    "name": "runner", "size": [160, 120], "fps": 10, "duration_s": 12, "noise": 3.0, "start_time": START,
    "figures": [{"id": "a", "size": [8, 20], "path": [[4, -10, 80], [9, 170, 80]]}],
    "camera": {"zones": [{"name": "yard", "polygon": [[60, 20], [160, 20], [160, 110], [60, 110]],
                          "intrusion": {}}]},
}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = render_file(Scene.from_dict(SCENE), tmp_path_factory.mktemp("runner"))
    return path


def camera(video: Path, **extra: Any) -> Any:
    raw = {**SCENE["camera"], "id": "cam-1", "source": str(video), "start_time": START, **extra}
    return camera_from_dict(raw)


def test_analysis_paced_on_source_clock(video: Path) -> None:
    for fps, expected in ((5.0, 60), (2.0, 24), (20.0, 120)):  # 12 s of 10 fps video
        runner = CameraRunner(camera(video, analysis_fps=fps), lambda o: None)
        runner.run()
        assert runner.frames_analysed == expected


def test_outputs_status_events_telemetry_and_snapshots(video: Path, tmp_path: Path) -> None:
    store = EvidenceStore(EvidenceSettings(dir=str(tmp_path)))
    outputs = analyse_file(camera(video, telemetry_interval_s=5.0), store)
    statuses = [o for o in outputs if isinstance(o, StatusOutput)]
    assert [(s.online, s.reason) for s in statuses] == [(True, "analysing"), (False, "source ended")]
    tele = [o for o in outputs if isinstance(o, TelemetryOutput)]
    assert len(tele) == 2 and tele[0].metrics["analysis_fps"] == pytest.approx(5.0, rel=0.05)
    assert {"latency_ms", "frames_dropped", "brightness", "sharpness"} <= set(tele[0].metrics)
    events = [o for o in outputs if isinstance(o, EventOutput)]
    assert [(e.event.type, e.event.state) for e in events] == [("intrusion", "start"), ("intrusion", "end")]
    assert events[0].snapshot_url == events[1].snapshot_url
    assert events[0].snapshot_url is not None and Path(events[0].snapshot_url.removeprefix("file://")).is_file()


def test_loop_keeps_time_running(video: Path) -> None:
    import threading

    stop = threading.Event()
    seen: list[float] = []

    def emit(o: Any) -> None:
        if isinstance(o, EventOutput) and o.event.state == "start":
            seen.append(o.event.ts)
            if len(seen) == 2:
                stop.set()

    CameraRunner(camera(video, loop=True, realtime=False), emit, stop=stop).run()
    assert len(seen) == 2 and seen[1] - seen[0] == pytest.approx(12.0, abs=0.3)


def test_realtime_file_plays_at_its_own_speed(video: Path) -> None:
    import threading
    import time

    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    runner = CameraRunner(camera(video, realtime=True), lambda o: None, stop=stop)
    started = time.monotonic()
    runner.run()
    assert time.monotonic() - started < 3.0
    assert 5 <= runner.frames_analysed <= 10  # 1.5 s at 5 fps, not the whole 12 s file


def test_missing_file_reports_offline_with_reason(tmp_path: Path) -> None:
    outputs = analyse_file(camera(tmp_path / "nope.mp4"))
    assert len(outputs) == 1 and isinstance(outputs[0], StatusOutput)
    assert not outputs[0].online and "no such file" in outputs[0].reason


def test_messages_follow_the_contract(video: Path) -> None:
    outputs = analyse_file(camera(video, telemetry_interval_s=5.0))
    for output in outputs:
        topic, payload, retain = to_message(output)
        msg = decode_device_message(topic, payload)
        assert msg.device_id == "cam-1"
        if isinstance(output, EventOutput):
            assert msg.channel is Channel.EVENT and isinstance(msg.payload, DeviceEvent) and not retain
            assert msg.payload.event_id == output.event.event_id and msg.payload.zone == "yard"
            assert msg.payload.state == "end" or msg.payload.data["boxes"]
        elif isinstance(output, TelemetryOutput):
            assert msg.channel is Channel.TELEMETRY and isinstance(msg.payload, Telemetry)
        else:
            assert msg.channel is Channel.STATUS and isinstance(msg.payload, DeviceStatus) and retain
    assert events_of(outputs)


def test_will_says_offline_and_cameras_spread_over_workers(video: Path) -> None:
    will = offline_will("cam-9")
    msg = decode_device_message(will.topic, will.payload)
    assert isinstance(msg.payload, DeviceStatus) and not msg.payload.online and will.retain
    cams = [camera(video, id=f"c{i}") for i in range(5)]
    groups = assign(cams, 2)
    assert [len(g) for g in groups] == [3, 2]
    assert [len(g) for g in assign(cams[:1], 4)] == [1]


def test_resolution_change_restarts_analytics_and_bad_frames_are_skipped(video: Path) -> None:
    import numpy as np

    from edge.camera.source import SourceFrame

    outputs: list[Any] = []
    runner = CameraRunner(camera(video), outputs.append)
    rng = np.random.default_rng(1)
    for i in range(10):
        runner._analyse(SourceFrame(float(i), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)))
    assert runner.analyzer is not None and runner.analyzer.scale.source_size == (160, 120)
    runner._analyse(SourceFrame(10.0, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)))
    assert runner.analyzer.scale.source_size == (320, 240)
    runner._analyse(SourceFrame(11.0, np.zeros((240, 320, 7), dtype=np.uint8)))  # not BGR: skipped
    assert runner.analysis_errors == 1
