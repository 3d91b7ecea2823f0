"""Evidence snapshots: the annotated full-resolution JPEG of an event, and the folder store that keeps them."""

from __future__ import annotations

import logging
import shutil
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from edge.camera.config import CameraSettings, EvidenceSettings
from edge.camera.events import CameraEvent

log = logging.getLogger(__name__)
_ZONE_COLOUR = (0, 200, 255)
_LINE_COLOUR = (255, 200, 0)
_BOX_COLOUR = (0, 0, 255)


def annotate(frame: np.ndarray, settings: CameraSettings, event: CameraEvent, camera_id: str) -> np.ndarray:
    """A copy of the frame with zones, lines, the event's boxes and a time/camera stamp drawn on it."""
    img = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h = img.shape[0]
    thick = max(1, h // 360)
    for zone in settings.zones:
        pts = np.array(zone.polygon, dtype=np.int32)
        focus = zone.name == event.zone
        cv2.polylines(img, [pts], True, _ZONE_COLOUR, thick * (2 if focus else 1))
    for line in settings.lines:
        (x1, y1), (x2, y2) = line.points
        cv2.arrowedLine(img, (round(x1), round(y1)), (round(x2), round(y2)), _LINE_COLOUR,
                        thick * (2 if line.name == event.zone else 1), tipLength=0.05)
    for box in event.boxes:
        cv2.rectangle(img, (box.x, box.y), (box.x + box.w, box.y + box.h), _BOX_COLOUR, thick * 2)
    local = datetime.fromtimestamp(event.ts, UTC).astimezone(ZoneInfo(settings.timezone))
    stamp = f"{camera_id}  {local:%Y-%m-%d %H:%M:%S}  {event.type}" + (f" [{event.zone}]" if event.zone else "")
    scale = max(0.35, h / 720)
    (tw, th), base = cv2.getTextSize(stamp, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(img, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
    cv2.putText(img, stamp, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return img


class EvidenceStore:
    """Snapshots in ``{dir}/{camera}/{YYYY-MM-DD}/``, referenced by URL, deleted after the retention time."""

    def __init__(self, settings: EvidenceSettings) -> None:
        self.settings = settings
        self.root = Path(settings.dir).resolve()

    def path_for(self, camera_id: str, event: CameraEvent) -> Path:
        """Where the snapshot of an event goes (UTC date folders, so retention is unambiguous)."""
        when = datetime.fromtimestamp(event.ts, UTC)
        safe_id = event.event_id.replace("/", "_")
        return self.root / camera_id / f"{when:%Y-%m-%d}" / f"{when:%H%M%S}_{event.type}_{safe_id}.jpg"

    def url_for(self, path: Path) -> str:
        """The URL an alert or console uses to fetch the snapshot."""
        if self.settings.base_url:
            rel = path.relative_to(self.root).as_posix()
            return self.settings.base_url.rstrip("/") + "/" + urllib.parse.quote(rel)
        return path.as_uri()

    def save(self, camera_id: str, event: CameraEvent, image: np.ndarray) -> str:
        """Encode and write the snapshot; returns its URL.

        Raises:
            OSError: the file cannot be written.
        """
        path = self.path_for(camera_id, event)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            raise OSError(f"JPEG encoding failed for {path.name}")
        tmp = path.with_suffix(".part")
        tmp.write_bytes(jpeg.tobytes())
        tmp.replace(path)
        return self.url_for(path)

    def purge(self, now: float) -> int:
        """Delete date folders older than the retention time; returns how many were removed."""
        cutoff = (datetime.fromtimestamp(now, UTC) - timedelta(days=self.settings.retention_days)).date()
        removed = 0
        if not self.root.is_dir():
            return 0
        for day_dir in self.root.glob("*/????-??-??"):
            try:
                day = datetime.strptime(day_dir.name, "%Y-%m-%d").date()
            except ValueError:
                continue
            if day < cutoff:
                shutil.rmtree(day_dir, ignore_errors=True)
                removed += 1
        return removed
