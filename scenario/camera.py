"""Device adapter, part 3: a camera watching a synthetic scene through the real analyzer.

Frames come from ``simulators.camera_scenes.SceneRenderer``, paced at the camera's analysis
rate as ``CameraRunner`` paces them; ``CameraAnalyzer`` decides; the agent's ``to_message``
turns each event into the exact MQTT payload. A scene's ``cut`` incident is a stream that
went down: no frames, the analyzer's clock ticks (video loss) and the agent says offline.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec

from broker.contracts import Channel, DeviceStatus, Kind, device_topic, encode
from scenario.devices import DeviceFeed, Transport, _dt
from scenario.spec import ScenarioError, offset


def _load_scene(raw: Any, base: Path, where: str) -> Any:
    from simulators.camera_scenes import SCENARIO_DIR, Scene

    try:
        if isinstance(raw, dict):
            return Scene.from_dict(raw)
        name = str(raw)
        for candidate in (base / name, SCENARIO_DIR / name, SCENARIO_DIR / f"{name}.yaml",
                          SCENARIO_DIR / f"camera_{name}.yaml"):
            if candidate.is_file():
                return Scene.load(candidate)
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}.scene: {exc}") from None
    raise ScenarioError(f"{where}.scene: no scene {raw!r} (a path, or a name in {SCENARIO_DIR})")


def camera_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random, base: Path) -> DeviceFeed:
    """Events (and availability) of one camera analysing a scene."""
    from edge.camera.analyzer import CameraAnalyzer
    from edge.camera.config import ConfigError, camera_from_dict
    from edge.camera.runner import EventOutput
    from edge.camera_agent import AGENT_NAME, to_message
    from simulators.camera_scenes import SceneRenderer

    camera_id = spec["id"]
    feed = DeviceFeed(camera_id)
    unknown = set(spec) - {"scene", "at", "camera", "hold"} - {"id", "adapter", "latency", "jitter", "clock_offset",
                                                       "duplicates", "outages", "unregistered"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    if "scene" not in spec:
        raise ScenarioError(f"{where}.scene: a camera needs a scene")
    scene = _load_scene(spec["scene"], base, where)
    begin = offset(spec.get("at", 0), f"{where}.at")
    # After the script the camera keeps streaming the empty scene a while, so events close as live.
    hold = offset(spec.get("hold", 30), f"{where}.hold")
    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    transport = Transport(spec, where, rng, feed, edge_outages=True)
    try:
        config = camera_from_dict({"id": camera_id, "source": "scenario", **scene.camera, **(spec.get("camera") or {})},
                                  None, where)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    except msgspec.ValidationError as exc:  # pragma: no cover - camera_from_dict wraps these
        raise ScenarioError(f"{where}.camera: {exc}") from None
    renderer = SceneRenderer(scene)
    analyzer = CameraAnalyzer(camera_id, config, scene.size)
    period = 1.0 / config.analysis_fps
    status_topic = device_topic(Kind.CAMERA, camera_id, Channel.STATUS)

    def status(t: float, online: bool, reason: str) -> None:
        transport.send(t, status_topic, encode(DeviceStatus(ts=_dt(epoch + t + skew), online=online, reason=reason,
                                                            agent=AGENT_NAME)), True, may_duplicate=False)

    def publish(t: float, events: list[Any]) -> None:
        for ev in events:
            topic, payload, retain = to_message(EventOutput(camera_id, ev, None))
            transport.send(t, topic, payload, retain)

    status(begin, True, "streaming")
    next_due: float | None = None
    down = False
    frames = int((scene.duration_s + hold) * scene.fps)
    for i in range(frames):
        st = i / scene.fps
        t = begin + st
        if scene.cut(st):
            if not down:
                down = True
                status(t, False, "stream down: connection lost")
            if next_due is None or st >= next_due - 1e-6:
                next_due = st + period
                publish(t, analyzer.tick(epoch + t + skew, "stream down"))
            continue
        if down:
            down = False
            status(t, True, "streaming")
        # CameraRunner._due: the first frame at or after each due time; after a gap start afresh.
        if next_due is not None and st < next_due - 1e-6:
            continue
        nxt = (st if next_due is None else next_due) + period
        next_due = nxt if nxt > st else st + period
        # The analyzer runs on the camera's wall clock (its schedules are local times of day).
        publish(t, analyzer.analyse(epoch + t + skew, renderer.render(st)))
    return feed

