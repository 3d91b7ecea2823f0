"""Camera agent config: defaults merged, unknown keys and bad values refused with file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.camera.config import ConfigError, camera_from_dict, load_agent_config

GOOD = """
mqtt: mqtt://localhost:1883
workers: 2
evidence: {dir: /tmp/ev, base_url: "http://console/evidence", retention_days: 7}
camera:
  analysis_fps: 4
  zones:
    - name: yard
      polygon: [[0, 0], [100, 0], [100, 100]]
      intrusion: {schedule: [{start: "22:00", end: "06:00", days: [mon, tue]}]}
cameras:
  - {id: gate-1, source: rtsp://user:pw@cam1/stream}
  - {id: gate-2, source: /videos/gate2.mp4, analysis_fps: 2, loop: true, start_time: "2026-11-26T22:00:00+08:00"}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cameras.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_loads_cameras_over_defaults(tmp_path: Path) -> None:
    agent, cams = load_agent_config(write(tmp_path, GOOD))
    assert agent.workers == 2 and agent.evidence.retention_days == 7
    assert [c.id for c in cams] == ["gate-1", "gate-2"]
    assert cams[0].analysis_fps == 4 and cams[1].analysis_fps == 2
    assert cams[0].zones[0].intrusion is not None
    assert cams[0].zones[0].intrusion.schedule[0].days == ["mon", "tue"]


@pytest.mark.parametrize(("text", "fragment"), [
    ("cameras: [{id: a, source: x, zonez: []}]", "zonez"),
    ("camera: {analysis_fsp: 3}", "analysis_fsp"),
    ("cameras: [{id: a, source: x, analysis_fps: 0}]", "analysis_fps"),
    ("cameras: [{id: 'bad id', source: x}]", "id"),
    ("cameras: [{id: a, source: x, zones: [{name: z, polygon: [[0, 0], [1, 1]]}]}]", "polygon"),
    ("cameras: [{id: a, source: x, timezone: Mars/Base}]", "timezone"),
    ("cameras: [{id: a, source: x, zones: [{name: z, polygon: [[0,0],[1,0],[1,1]],"
     " intrusion: {schedule: [{start: '25:00'}]}}]}]", "start"),
    ("cameras: [{id: a, source: x}, {id: a, source: y}]", "unique"),
    ("cameras: [{id: a, source: x, start_time: '2026-11-26 22:00'}]", "start_time"),
    ("cameras: [{id: a, source: x, zones: [{name: z, polygon: [[0,0],[1,0],[1,1]],"
     " crowd: {min_people: null}}]}]", "crowd"),
    ("[1, 2]", "mapping"),
    ("a: [", "YAML"),
])
def test_invalid_config_names_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_config(tmp_path / "nope.yaml")


def test_camera_from_dict_without_file() -> None:
    cam = camera_from_dict({"id": "c1", "source": "0"}, {"analysis_height": 100})
    assert cam.analysis_height == 100 and cam.health.video_loss_after_s == 5.0
