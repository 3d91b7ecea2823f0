"""Scene scripts, derived ground truth and the scoring harness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from simulators.camera_scenes import Scene, SceneRenderer, render_file
from simulators.camera_truth import Detection, TruthEvent, detections_from_events, ground_truth, score

BASE: dict[str, Any] = {"name": "t", "size": [160, 120], "fps": 5, "duration_s": 20, "noise": 2.0,
                        "start_time": "2026-11-26T21:59:50+08:00"}


def scene(**extra: Any) -> Scene:
    return Scene.from_dict({**BASE, **extra})


def test_intrusion_truth_respects_schedule_and_zone() -> None:
    s = scene(figures=[{"id": "a", "path": [[0, 10, 60], [20, 150, 60]]}],
              camera={"zones": [{"name": "z", "polygon": [[0, 0], [160, 0], [160, 120], [0, 120]],
                                 "intrusion": {"schedule": [{"start": "22:00", "end": "06:00"}]}}]})
    [t] = ground_truth(s)
    assert (t.type, t.zone, round(t.start, 1), round(t.end, 1)) == ("intrusion", "z", 10.0, 20.0)


def test_line_truth_with_direction_filter() -> None:
    s = scene(figures=[{"id": "a", "path": [[0, 10, 60], [5, 150, 60], [10, 10, 60]]}],
              camera={"lines": [{"name": "l", "points": [[80, 0], [80, 120]], "direction": "forward"}]})
    truth = ground_truth(s)
    assert [(t.type, t.direction) for t in truth] == [("line_crossing", "forward")]
    assert truth[0].start == pytest.approx(7.5, abs=0.1)


def test_loiter_and_crowd_truth() -> None:
    zone = [[40, 20], [120, 20], [120, 100], [40, 100]]
    figs = [{"id": f"p{i}", "path": [[1, 60 + 5 * i, 60], [19, 62 + 5 * i, 62]]} for i in range(3)]
    s = scene(figures=figs, camera={"zones": [{"name": "z", "polygon": zone, "loitering": {"after_s": 10},
                                               "crowd": {"min_people": 3, "on_after_s": 2}}]})
    kinds = sorted((t.type, round(t.start, 1), round(t.end, 1)) for t in ground_truth(s))
    assert kinds == [("crowd", 1.0, 19.0), ("loitering", 11.0, 19.0)]


def test_incidents_become_health_truth_and_render() -> None:
    s = scene(incidents=[{"type": "cover", "start": 2, "end": 4}, {"type": "defocus", "start": 6, "end": 8},
                         {"type": "turn", "start": 10, "end": 12, "dx": 100}])
    assert [t.type for t in ground_truth(s)] == ["camera_covered", "camera_defocused", "camera_moved"]
    r = SceneRenderer(s)
    normal, covered = r.render(1.0), r.render(3.0)
    assert covered.mean() < 10 < normal.mean() and normal.std() > 10
    assert np.abs(r.render(11.0).astype(int) - normal.astype(int)).mean() > 10


def test_render_file_refuses_stream_cuts(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="serve"):
        render_file(scene(incidents=[{"type": "cut", "start": 1, "end": 2}]), tmp_path)


@dataclass
class Ev:
    type: str
    state: str
    event_id: str
    ts: float
    zone: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def test_detections_pair_start_and_end_and_close_open_ones() -> None:
    evs = [Ev("intrusion", "start", "a", 110.0, "z"), Ev("line_crossing", "instant", "b", 112.0, "l",
           {"direction": "forward"}), Ev("intrusion", "end", "a", 115.0, "z"), Ev("crowd", "start", "c", 118.0, "z")]
    dets = detections_from_events(evs, 100.0, 30.0)
    assert dets == [Detection("line_crossing", 12.0, 12.0, "l", "forward"), Detection("intrusion", 10.0, 15.0, "z"),
                    Detection("crowd", 18.0, 30.0, "z")]


def test_score_is_one_to_one_with_tolerances() -> None:
    truth = [TruthEvent("intrusion", 10, 20, "z"), TruthEvent("line_crossing", 5, 5, "l", "forward")]
    dets = [Detection("intrusion", 9, 21, "z"), Detection("intrusion", 12, 14, "z"),  # a fragment: false positive
            Detection("line_crossing", 5.5, 5.5, "l", "backward"),  # wrong direction
            Detection("intrusion", 40, 45, "z")]
    s = score(truth, dets)
    assert (s["intrusion"].precision, s["intrusion"].recall) == (pytest.approx(1 / 3), 1.0)
    assert (s["line_crossing"].precision, s["line_crossing"].recall) == (0.0, 0.0)
    assert s["crowd"].precision == 1.0 and s["crowd"].recall == 1.0
