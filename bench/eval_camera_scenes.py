"""Precision and recall of the camera analytics on the shipped scenes and on held-out variants.

The shipped suite is what the tests score; the variants re-render every scene with other random
seeds (other textures, other noise) and optionally more sensor noise, to show the figures do not
depend on the exact pixels the defaults were tuned on. Prints a table; asserts nothing.

    python bench/eval_camera_scenes.py [--seed-offset 1000] [--noise-scale 1.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.camera.config import camera_from_dict
from edge.camera.runner import analyse_file, events_of
from simulators.camera_scenes import Scene, render_file, shipped_scenes
from simulators.camera_truth import EVENT_TYPES, detections_from_events, ground_truth, score


def evaluate(seed_offset: int, noise_scale: float, out: Path) -> dict[str, list[int]]:
    """Totals per event type: truths, detections, true positives, matched truths."""
    totals = {k: [0, 0, 0, 0] for k in EVENT_TYPES}
    quiet_events = 0
    for path in shipped_scenes():
        scene = Scene.load(path)
        if any(i.type == "cut" for i in scene.incidents):
            continue
        scene = dataclasses.replace(scene, seed=scene.seed + seed_offset, noise=scene.noise * noise_scale)
        video, _ = render_file(scene, out)
        cam = camera_from_dict({**scene.camera, "id": "eval", "source": str(video),
                                "start_time": scene.start_time.isoformat()})
        events = events_of(analyse_file(cam))
        if scene.quiet:
            quiet_events += len(events)
        dets = detections_from_events(events, scene.start_time.timestamp(), scene.duration_s)
        for kind, s in score(ground_truth(scene), dets).items():
            acc = totals[kind]
            acc[0] += s.truths
            acc[1] += s.detections
            acc[2] += s.true_positives
            acc[3] += s.matched_truths
    totals["quiet_scene_events"] = [quiet_events, 0, 0, 0]
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--noise-scale", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="camera-eval-") as tmp:
        totals = evaluate(args.seed_offset, args.noise_scale, Path(tmp))
    print(f"scenes: shipped suite, seed offset {args.seed_offset}, noise x{args.noise_scale}")
    print(f"{'event type':<17} {'truths':>6} {'detections':>10} {'precision':>9} {'recall':>6}")
    for kind in EVENT_TYPES:
        truths, dets, tp, matched = totals[kind]
        if truths or dets:
            print(f"{kind:<17} {truths:>6} {dets:>10} {tp / dets if dets else 1:>9.2f} "
                  f"{matched / truths if truths else 1:>6.2f}")
    print(f"events on quiet scenes: {totals['quiet_scene_events'][0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
