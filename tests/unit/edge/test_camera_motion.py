"""Motion detection: noise and light drift are not motion, masked regions are ignored, people are."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.camera.config import MotionSettings
from edge.camera.motion import MotionDetector
from edge.camera.zones import FrameScale, analysis_mask

W, H = 320, 240


def background(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.normal(0, 1, (15, 20)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(115 + 30 * coarse, 0, 255).astype(np.float32)


def shot(base: np.ndarray, rng: np.random.Generator, gain: float = 1.0, person: tuple[int, int] | None = None,
         noise: float = 4.0) -> np.ndarray:
    img = base * gain
    if person is not None:
        x, y = person
        img[y - 32:y, x - 6:x + 6] = 30
    img = img + rng.normal(0, noise, img.shape)
    return cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (160, 120), interpolation=cv2.INTER_AREA)


def detector(masks: list[list[tuple[float, float]]] | None = None) -> MotionDetector:
    scale = FrameScale.for_height(W, H, 120)
    return MotionDetector(MotionSettings(), scale, analysis_mask(scale, masks or []))


def test_noise_alone_is_not_motion() -> None:
    det, base, rng = detector(), background(), np.random.default_rng(2)
    results = [det.update(shot(base, rng, noise=6.0)) for _ in range(50)]
    assert all(not r.blobs for r in results)


def test_slow_light_drift_is_not_motion() -> None:
    det, base, rng = detector(), background(), np.random.default_rng(3)
    # +-30 % exposure over 30 s sampled at 5 fps (no pixel saturates: clipping is not a gain).
    gains = [1 + 0.3 * np.sin(2 * np.pi * i / 150) for i in range(150)]
    assert all(not det.update(shot(base, rng, g)).blobs for g in gains)


def test_walking_person_is_one_blob_in_source_pixels() -> None:
    det, base, rng = detector(), background(), np.random.default_rng(4)
    for _ in range(10):
        det.update(shot(base, rng))
    r = det.update(shot(base, rng, person=(200, 150)))
    assert len(r.blobs) == 1
    box = r.blobs[0].box
    assert abs(box.foot[0] - 200) <= 8 and abs(box.foot[1] - 150) <= 8
    assert 20 <= box.h <= 50


def test_person_standing_still_stays_visible() -> None:
    det, base, rng = detector(), background(), np.random.default_rng(5)
    for _ in range(10):
        det.update(shot(base, rng))
    # 20 s at 5 fps of someone standing on one spot, shifting their weight by a pixel or two.
    still = [det.update(shot(base, rng, person=(100 + (i % 3) * 2, 150))) for i in range(100)]
    assert all(len(r.blobs) == 1 for r in still)


@pytest.mark.parametrize("noise", [0.5, 4.0, 8.0])
def test_unchanging_region_is_absorbed_into_background(noise: float) -> None:
    det, base, rng = detector(), background(), np.random.default_rng(5)
    for _ in range(10):
        det.update(shot(base, rng))
    parked = base.copy()
    parked[100:160, 60:140] = 40  # a car parks and never moves again
    seen = [bool(det.update(shot(parked, rng, noise=noise)).blobs) for _ in range(40)]
    # Seen while it arrives, absorbed after static_absorb_s (4 s = 20 frames at 5 fps), gone for good.
    assert seen[0] and not any(seen[25:])


def test_masked_region_is_ignored() -> None:
    det, base, rng = detector([[(150.0, 100.0), (250.0, 100.0), (250.0, 200.0), (150.0, 200.0)]]), background(), \
        np.random.default_rng(6)
    for _ in range(5):
        det.update(shot(base, rng))
    r = det.update(shot(base, rng, person=(200, 170)))
    assert r.blobs == ()


def test_sudden_whole_frame_change_is_scene_change_and_relearnt() -> None:
    det, rng = detector(), np.random.default_rng(7)
    for _ in range(5):
        det.update(shot(background(1), rng))
    r = det.update(shot(background(9), rng))
    assert r.scene_change and r.blobs == ()
    assert det.update(shot(background(9), rng)).blobs == ()


@pytest.mark.parametrize("threshold", [8.0, 14.0, 30.0])
def test_threshold_controls_sensitivity(threshold: float) -> None:
    scale = FrameScale.for_height(W, H, 120)
    det = MotionDetector(MotionSettings(threshold=threshold), scale, analysis_mask(scale, []))
    base, rng = background(), np.random.default_rng(8)
    det.update(shot(base, rng))
    faint = base.copy()
    faint[120:152, 194:206] += 20  # a faint figure 20 grey levels off the background
    r = det.update(cv2.resize(np.clip(faint, 0, 255).astype(np.uint8), (160, 120), interpolation=cv2.INTER_AREA))
    assert bool(r.blobs) is (threshold < 20)
