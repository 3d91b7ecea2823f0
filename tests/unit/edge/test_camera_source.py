"""Source classification and log masking: stream passwords never reach logs or errors."""

from __future__ import annotations

import pytest

from edge.camera.source import FileSource, SourceError, is_device, is_stream, mask_url


@pytest.mark.parametrize(("source", "masked"), [
    ("rtsp://admin:s3cret@10.0.0.5:554/Streaming/101", "rtsp://admin:***@10.0.0.5:554/Streaming/101"),
    ("http://user:p%40ss@cam/video.mjpg", "http://user:***@cam/video.mjpg"),
    ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
    ("/videos/gate.mp4", "/videos/gate.mp4"),
])
def test_mask_url(source: str, masked: str) -> None:
    assert mask_url(source) == masked


@pytest.mark.parametrize(("source", "stream", "device"), [
    ("rtsp://cam/1", True, False), ("HTTP://cam/x.mjpg", True, False), ("0", False, True),
    ("/dev/video2", False, True), ("clip.mp4", False, False),
])
def test_kinds(source: str, stream: bool, device: bool) -> None:
    assert (is_stream(source), is_device(source)) == (stream, device)


def test_source_error_masks_password() -> None:
    err = SourceError("rtsp://admin:s3cret@cam/1", "cannot open")
    assert "s3cret" not in str(err) and "s3cret" not in err.source


def test_missing_file() -> None:
    with pytest.raises(SourceError, match="no such file"):
        FileSource("/nonexistent/clip.mp4", 0.0)
