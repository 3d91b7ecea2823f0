"""Video sources read with OpenCV: files on their own clock, live streams with reconnect.

A file's time is its own presentation timestamps added to a configured start time, so a file
analyses as fast as the CPU allows and gives the same events as when played live. A live
source (RTSP, HTTP, local device) is stamped with the wall clock on arrival; a reader thread
keeps only the newest frame, so a slow analysis drops frames instead of lagging behind.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)
_STREAM_RE = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.IGNORECASE)


class SourceError(EdgeError):
    """A source cannot be opened or read."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{mask_url(source)}: {detail}")
        self.source = mask_url(source)
        self.detail = detail


def mask_url(source: str) -> str:
    """The source for logs: a password in ``rtsp://user:pass@host`` never appears."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", source)


def is_stream(source: str) -> bool:
    """Whether the source is a network stream."""
    return bool(_STREAM_RE.match(source))


def is_device(source: str) -> bool:
    """Whether the source is a local capture device (``0``, ``/dev/video0``)."""
    return source.isdigit() or source.startswith("/dev/video")


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """A decoded frame with its source time (epoch seconds)."""

    t: float
    image: np.ndarray


class FileSource:
    """Reads a video file by its own timestamps; optionally loops with time running on."""

    def __init__(self, path: str, start_epoch: float, loop: bool = False) -> None:
        if not Path(path).is_file():
            raise SourceError(path, "no such file")
        self.path = path
        self.start_epoch = start_epoch
        self.loop = loop
        self._cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise SourceError(path, "OpenCV cannot open it")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._frame_period = 1.0 / fps if fps and fps > 0 else 0.04
        self._offset = 0.0
        self._last_pts = 0.0
        self.size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.frames_read = 0

    def next(self, wanted: Callable[[float], bool]) -> SourceFrame | bool | None:
        """Advance one frame: a ``SourceFrame`` if ``wanted(t)``, ``False`` if skipped, None at the end."""
        if not self._cap.grab():
            if not self.loop or self.frames_read == 0:
                return None
            # Loop: time keeps running, one frame period after the last frame.
            self._offset += self._last_pts + self._frame_period
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            if not self._cap.grab():
                return None
        pts = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        self._last_pts = pts
        self.frames_read += 1
        t = self.start_epoch + self._offset + pts
        if not wanted(t):
            return False
        ok, image = self._cap.retrieve()
        if not ok:
            return False
        return SourceFrame(t, image)

    def close(self) -> None:
        """Release the file."""
        self._cap.release()


class LiveSource:
    """A stream or device read by a background thread, reconnecting with jittered backoff."""

    def __init__(self, source: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 5.0,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff = (backoff_min_s, backoff_max_s)
        self.clock = clock
        self.size: tuple[int, int] | None = None
        self.connected = False
        self.last_error = "not connected yet"
        self.reconnects = 0
        self.frames_read = 0
        self.frames_overwritten = 0
        self._latest: SourceFrame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"camera-src-{mask_url(source)[:40]}")

    def start(self) -> None:
        """Start reading in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop reading and release the capture."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=self.read_timeout_s + 2)

    def latest(self, timeout: float) -> SourceFrame | None:
        """The newest unread frame, waiting up to ``timeout`` seconds; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            frame, self._latest = self._latest, None
            return frame

    def _open(self) -> cv2.VideoCapture:
        if is_device(self.source):
            index = int(self.source) if self.source.isdigit() else int(self.source.removeprefix("/dev/video") or 0)
            cap = cv2.VideoCapture(index)
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
            cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self.source, "cannot open")
        return cap

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                cap = self._open()
            except SourceError as exc:
                self.last_error = exc.detail
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                self.reconnects += 1
                continue
            log.info("camera source %s connected", mask_url(self.source))
            self.connected = True
            try:
                while not self._stop.is_set():
                    ok, image = cap.read()
                    if not ok or image is None:
                        self.last_error = "stream ended or read timed out"
                        break
                    self.size = (image.shape[1], image.shape[0])
                    self.frames_read += 1
                    delay = self.backoff[0]
                    with self._cond:
                        if self._latest is not None:
                            self.frames_overwritten += 1
                        self._latest = SourceFrame(self.clock(), image)
                        self._cond.notify_all()
            finally:
                cap.release()
                self.connected = False
            if not self._stop.is_set():
                log.warning("camera source %s lost: %s; reconnecting", mask_url(self.source), self.last_error)
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                self.reconnects += 1
