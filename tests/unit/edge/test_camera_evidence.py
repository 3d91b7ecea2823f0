"""Evidence snapshots: annotation, folder layout by camera and date, URLs and retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from edge.camera.config import CameraSettings, EvidenceSettings, LineConfig, ZoneConfig
from edge.camera.events import CameraEvent
from edge.camera.evidence import EvidenceStore, annotate
from edge.camera.motion import Box

T = datetime(2026, 11, 26, 14, 30, 5, tzinfo=UTC).timestamp()
EVENT = CameraEvent("intrusion", "start", "cam-1.intrusion.yard.1", T, T, T, "yard", 500.0, (Box(50, 40, 20, 40),))
SETTINGS = CameraSettings(zones=[ZoneConfig(name="yard", polygon=[(10.0, 10.0), (200.0, 10.0), (200.0, 150.0)])],
                          lines=[LineConfig(name="gate", points=[(0.0, 100.0), (300.0, 100.0)])])


def test_annotation_draws_zone_box_and_stamp_on_a_copy() -> None:
    frame = np.full((240, 320, 3), 128, np.uint8)
    img = annotate(frame, SETTINGS, EVENT, "cam-1")
    assert img.shape == frame.shape and (frame == 128).all()
    assert tuple(img[40, 60]) == (0, 0, 255)             # box edge, red
    assert (img[:12, :100] != 128).any()                  # stamp banner
    assert (img != 128).sum() > 1000


def test_store_layout_and_file_url(tmp_path: Path) -> None:
    store = EvidenceStore(EvidenceSettings(dir=str(tmp_path)))
    url = store.save("cam-1", EVENT, np.zeros((48, 64, 3), np.uint8))
    path = tmp_path / "cam-1" / "2026-11-26" / "143005_intrusion_cam-1.intrusion.yard.1.jpg"
    assert url == path.as_uri() and path.is_file()
    assert cv2.imread(str(path)).shape == (48, 64, 3)


def test_store_base_url(tmp_path: Path) -> None:
    store = EvidenceStore(EvidenceSettings(dir=str(tmp_path), base_url="http://console:8080/evidence/"))
    url = store.save("cam-1", EVENT, np.zeros((8, 8, 3), np.uint8))
    assert url == "http://console:8080/evidence/cam-1/2026-11-26/143005_intrusion_cam-1.intrusion.yard.1.jpg"


def test_retention_removes_old_days_only(tmp_path: Path) -> None:
    store = EvidenceStore(EvidenceSettings(dir=str(tmp_path), retention_days=7))
    for day in ("2026-11-01", "2026-11-18", "2026-11-26"):
        (tmp_path / "cam-1" / day).mkdir(parents=True)
    (tmp_path / "cam-1" / "notes").mkdir()
    assert store.purge(T) == 2
    assert sorted(p.name for p in (tmp_path / "cam-1").iterdir()) == ["2026-11-26", "notes"]
