"""Camera analytics taking over events a killed agent left open: ended under their ids once the scene is clear."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge.camera.config import camera_from_dict
from edge.camera.runner import CameraRunner, EventOutput, analyse_file, events_of
from edge.runtime.outbox import RESTART_REASON, OpenEvent
from simulators.camera_scenes import Scene, render_file

START = "2026-11-26T22:00:00+08:00"
T0 = datetime.fromisoformat(START).timestamp()
EMPTY: dict[str, Any] = {
    "name": "empty-yard", "size": [160, 120], "fps": 10, "duration_s": 12, "noise": 3.0, "start_time": START,
    "figures": [],
    "camera": {"zones": [{"name": "yard", "polygon": [[60, 20], [160, 20], [160, 110], [60, 110]],
                          "intrusion": {}}]},
}


@pytest.fixture(scope="module")
def empty_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = render_file(Scene.from_dict(EMPTY), tmp_path_factory.mktemp("restart"))
    return path


def run(video: Path, resume: list[OpenEvent]) -> list[EventOutput]:
    cfg = camera_from_dict({**EMPTY["camera"], "id": "cam-1", "source": str(video), "start_time": START})
    outputs: list[Any] = []
    CameraRunner(cfg, outputs.append, resume=resume).run()
    return [o for o in outputs if isinstance(o, EventOutput)]


def test_an_intrusion_left_open_ends_under_its_id_after_the_off_time_on_an_empty_scene(empty_video: Path) -> None:
    old = OpenEvent("cam-1.intrusion.yard.1", "intrusion", T0 - 600, "yard", "major")
    events = [o.event for o in run(empty_video, [old])]
    assert [(e.type, e.state, e.event_id) for e in events] == [("intrusion", "end", old.event_id)]
    end = events[0]
    assert end.started_at == old.started_at and end.data["after_restart"] is True
    # Clear since the first frame, decided after the zone's own 5 s off-time (not at the file's end).
    assert end.ts == T0 and T0 + 4.5 <= end.detected_at <= T0 + 6


def test_an_event_nothing_configured_can_take_over_ends_on_the_first_frame(empty_video: Path) -> None:
    gone = OpenEvent("cam-1.crowd.hall.1", "crowd", T0 - 60, "hall", "warning")
    video_loss = OpenEvent("cam-1.video_loss.-.1", "video_loss", T0 - 30)
    events = [o.event for o in run(empty_video, [gone, video_loss])]
    by_id = {e.event_id: e for e in events}
    assert set(by_id) == {gone.event_id, video_loss.event_id}
    assert by_id[gone.event_id].state == "end" and by_id[gone.event_id].data["reason"] == RESTART_REASON
    assert by_id[gone.event_id].ts == T0
    assert by_id[video_loss.event_id].state == "end"  # frames again: video restored, same id


def test_without_anything_to_take_over_the_empty_scene_stays_quiet(empty_video: Path) -> None:
    cfg = camera_from_dict({**EMPTY["camera"], "id": "cam-1", "source": str(empty_video), "start_time": START})
    assert events_of(analyse_file(cfg)) == []
