"""Camera health: covered, defocused, moved and video loss, each with a clear start and end."""

from __future__ import annotations

import cv2
import numpy as np

from edge.camera.config import HealthSettings
from edge.camera.events import CameraEvent
from edge.camera.health import HealthMonitor, VideoLossDetector, measure_frame


def scene(seed: int = 1, shift: int = 0, blur: float = 0.0, gain: float = 1.0, level: float | None = None,
          noise_seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    world = cv2.resize(rng.normal(0, 1, (30, 60)).astype(np.float32), (640, 240), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (240, 640)).astype(np.float32), (0, 0), 1.0)
    img = 115 + 35 * world + 25 * fine
    img = img[:, 100 + shift:420 + shift] * gain
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if level is not None:
        img = np.full_like(img, level)
    img = img + np.random.default_rng(noise_seed).normal(0, 3, img.shape)
    return cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (160, 120), interpolation=cv2.INTER_AREA)


def run(monitor: HealthMonitor, frames: list[tuple[float, np.ndarray]]) -> list[CameraEvent]:
    out: list[CameraEvent] = []
    for t, f in frames:
        out += monitor.update(t, f)
    return out


def timeline(segments: list[tuple[float, float, dict[str, float]]], fps: float = 5.0) -> list[tuple[float, np.ndarray]]:
    frames = []
    for start, end, kw in segments:
        n = int((end - start) * fps)
        for i in range(n):
            frames.append((start + i / fps, scene(noise_seed=len(frames), **kw)))  # type: ignore[arg-type]
    return frames


def summary(events: list[CameraEvent]) -> list[tuple[str, str, float]]:
    return [(e.type, e.state, round(e.ts, 1)) for e in events]


def test_healthy_scene_with_light_drift_raises_nothing() -> None:
    mon = HealthMonitor("c", HealthSettings())
    frames = [(i / 5, scene(gain=1 + 0.3 * np.sin(i / 20), noise_seed=i)) for i in range(200)]
    assert run(mon, frames) == []
    assert mon.warm


def test_dark_but_textured_night_view_is_not_covered() -> None:
    mon = HealthMonitor("c", HealthSettings())
    assert run(mon, [(i / 5, scene(gain=0.3, noise_seed=i)) for i in range(60)]) == []


def test_covered_lens_starts_and_ends() -> None:
    mon = HealthMonitor("c", HealthSettings(on_after_s=2.0, off_after_s=1.0))
    events = run(mon, timeline([(0, 10, {}), (10, 20, {"level": 3.0}), (20, 30, {})]))
    assert summary(events) == [("camera_covered", "start", 10.0), ("camera_covered", "end", 20.0)]
    assert events[0].event_id == events[1].event_id


def test_blinded_uniform_bright_is_covered() -> None:
    mon = HealthMonitor("c", HealthSettings(on_after_s=1.0))
    events = run(mon, timeline([(0, 5, {}), (5, 10, {"level": 250.0})]))
    assert summary(events) == [("camera_covered", "start", 5.0)]


def test_defocus_against_own_baseline() -> None:
    mon = HealthMonitor("c", HealthSettings(on_after_s=2.0, off_after_s=1.0))
    events = run(mon, timeline([(0, 10, {}), (10, 20, {"blur": 3.0}), (20, 30, {})]))
    assert summary(events) == [("camera_defocused", "start", 10.0), ("camera_defocused", "end", 20.0)]
    assert events[0].measure is not None and events[0].measure < 0.45


def test_turned_camera_is_moved_not_defocused() -> None:
    mon = HealthMonitor("c", HealthSettings(on_after_s=2.0, off_after_s=1.0))
    events = run(mon, timeline([(0, 10, {}), (10, 20, {"shift": 200}), (20, 30, {})]))
    assert summary(events) == [("camera_moved", "start", 10.0), ("camera_moved", "end", 20.0)]


def test_sharpness_measure_is_light_invariant() -> None:
    _, _, bright = measure_frame(scene(gain=1.2))
    _, _, dim = measure_frame(scene(gain=0.5))
    _, _, blurred = measure_frame(scene(blur=3.0))
    assert abs(bright - dim) / bright < 0.35
    assert blurred < 0.4 * bright


def test_video_loss_after_silence_and_restored_by_frame() -> None:
    vl = VideoLossDetector("c", after_s=5.0)
    assert vl.frame(0.0) is None
    assert vl.tick(4.9) is None
    start = vl.tick(5.2, "stream down")
    assert start is not None and start.state == "start" and start.ts == 0.0 and start.detected_at == 5.2
    assert start.data["reason"] == "stream down"
    assert vl.tick(6.0) is None
    end = vl.frame(9.0)
    assert end is not None and end.state == "end" and end.ts == 9.0 and end.event_id == start.event_id


def test_video_loss_when_source_never_delivers() -> None:
    vl = VideoLossDetector("c", after_s=2.0)
    assert vl.tick(100.0) is None
    ev = vl.tick(102.5)
    assert ev is not None and ev.ts == 100.0
