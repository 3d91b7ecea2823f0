"""A camera agent killed (SIGKILL) during an intrusion ends it under the same id after its restart.

Real processes: `python -m edge.camera_agent --data-dir` on a looping video with someone standing in
the yard, killed, then started again on the same data folder watching the empty yard; a real
Mosquitto and an MQTT subscriber see the start from the first process and the end from the second.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from broker.contracts import DeviceEvent, decode_device_message, device_filter
from broker.mqtt import Message, MqttClient
from edge.runtime.outbox import OPEN_EVENTS_FILE
from simulators.camera_scenes import Scene, render_file

REPO = Path(__file__).resolve().parents[2]
CAMERA: dict[str, Any] = {"zones": [{"name": "yard", "polygon": [[60, 20], [160, 20], [160, 110], [60, 110]],
                                     "intrusion": {}}]}


def scene(name: str, figures: list[dict[str, Any]]) -> Scene:
    return Scene.from_dict({"name": name, "size": [160, 120], "fps": 10, "duration_s": 10, "noise": 3.0, "seed": 2,
                            "figures": figures, "camera": CAMERA})


def agent(video: Path, mqtt_url: str, data_dir: Path, config: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "edge.camera_agent", "--source", str(video), "--camera-id", "yard-9",
           "--config", str(config), "--mqtt", mqtt_url, "--workers", "1", "--evidence-dir",
           str(data_dir.parent / "ev"), "--data-dir", str(data_dir), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_intrusion_open_at_a_sigkill_ends_with_its_id_after_the_restart(mosquitto: Any, tmp_path: Path) -> None:
    # Someone walks into the yard and wanders there; the looping video keeps them in it.
    busy, _ = render_file(scene("busy", [{"id": "p", "size": [8, 20],
                                          "path": [[0, 100, 60], [5, 120, 80], [10, 100, 60]]}]), tmp_path / "busy")
    empty, _ = render_file(scene("empty", []), tmp_path / "empty")
    config = tmp_path / "camera.yaml"
    config.write_text("camera:\n  zones:\n    - {name: yard, polygon: [[60, 20], [160, 20], [160, 110], [60, 110]], "
                      "intrusion: {}}\n", encoding="utf-8")
    data_dir = tmp_path / "data"
    events: list[DeviceEvent] = []

    def on_event(batch: list[Message]) -> None:
        for m in batch:
            payload = decode_device_message(m.topic, m.payload).payload
            assert isinstance(payload, DeviceEvent)
            events.append(payload)

    sub = MqttClient(mosquitto.url, "camera-restart-sub", clean_start=True)
    await sub.start()
    sub.subscribe(device_filter("event", "camera"), on_event)
    await asyncio.sleep(0.2)
    proc = agent(busy, mosquitto.url, data_dir, config, "--loop")
    try:
        deadline = time.monotonic() + 30
        while not any(e.state == "start" for e in events) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            await asyncio.sleep(0.1)
        [start] = [e for e in events if e.state == "start"]
        assert start.type == "intrusion" and start.zone == "yard"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        assert (data_dir / "yard-9" / OPEN_EVENTS_FILE).is_file()
        await asyncio.sleep(1.0)  # the killed agent's worker notices its parent is gone and stops
        assert not any(e.state == "end" for e in events)

        proc = agent(empty, mosquitto.url, data_dir, config)
        proc.wait(timeout=60)  # the empty video ends: the agent finishes on its own
        deadline = time.monotonic() + 10
        while not any(e.state == "end" for e in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        await sub.stop()
    ends = [e for e in events if e.state == "end"]
    assert [(e.type, e.event_id) for e in ends] == [("intrusion", start.event_id)]
    assert ends[0].data["after_restart"] is True
    assert {e.event_id for e in events if e.state == "start"} == {start.event_id}  # no second start
