"""A synthetic camera scene's script: figures, incidents and the camera settings, parsed from YAML.

Shared by the renderer (``simulators.camera_scenes``) and the ground truth (``simulators.camera_truth``),
which both read the same script, so neither imports the other's module back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SCENARIO_DIR = Path(__file__).parent / "scenarios"


@dataclass(frozen=True, slots=True)
class Figure:
    """A person-like figure walking along ``path`` of (t, x, y) foot positions."""

    id: str
    size: tuple[int, int]
    path: tuple[tuple[float, float, float], ...]
    color: tuple[int, int, int]

    def foot(self, t: float) -> tuple[float, float] | None:
        """Foot position at scene time ``t``, or None when the figure is not in view."""
        if t < self.path[0][0] or t > self.path[-1][0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in zip(self.path, self.path[1:], strict=False):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return (x0 + a * (x1 - x0), y0 + a * (y1 - y0))
        return (self.path[-1][1], self.path[-1][2])


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted camera incident between ``start`` and ``end`` (scene seconds)."""

    type: str
    start: float
    end: float
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scene:
    """A parsed scene script."""

    name: str
    size: tuple[int, int]
    fps: float
    duration_s: float
    seed: int
    start_time: datetime
    brightness: float
    contrast: float
    noise: float
    drift_amplitude: float
    drift_period_s: float
    sway: tuple[tuple[float, float], ...] | None
    sway_amplitude: float
    figures: tuple[Figure, ...]
    incidents: tuple[Incident, ...]
    camera: dict[str, Any]
    """The agent's camera settings for this scene (zones, lines, thresholds)."""
    quiet: bool
    """A quiet scene: no event of any kind may be reported."""

    @classmethod
    def load(cls, path: str | Path) -> Scene:
        """Read a scene script."""
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scene:
        """Build a scene from its parsed script."""
        light = raw.get("light", {})
        sway = raw.get("sway")
        figures = tuple(
            Figure(str(f["id"]), (int(f.get("size", [12, 32])[0]), int(f.get("size", [12, 32])[1])),
                   tuple((float(p[0]), float(p[1]), float(p[2])) for p in f["path"]),
                   tuple(int(c) for c in f.get("color", [40, 40, 160])))  # type: ignore[arg-type]
            for f in raw.get("figures", []))
        incidents = tuple(
            Incident(str(i["type"]), float(i["start"]), float(i["end"]),
                     {k: float(v) for k, v in i.items() if k not in ("type", "start", "end")})
            for i in raw.get("incidents", []))
        return cls(
            name=str(raw["name"]), size=(int(raw["size"][0]), int(raw["size"][1])), fps=float(raw.get("fps", 10)),
            duration_s=float(raw["duration_s"]), seed=int(raw.get("seed", 1)),
            start_time=datetime.fromisoformat(str(raw.get("start_time", "2026-11-26T10:00:00+08:00"))),
            brightness=float(light.get("brightness", 110)), contrast=float(light.get("contrast", 45)),
            noise=float(raw.get("noise", 3.0)), drift_amplitude=float(light.get("drift", 0.0)),
            drift_period_s=float(light.get("drift_period_s", 60.0)),
            sway=None if sway is None else tuple((float(x), float(y)) for x, y in sway["polygon"]),
            sway_amplitude=0.0 if sway is None else float(sway.get("amplitude", 5)),
            figures=figures, incidents=incidents, camera=dict(raw.get("camera", {})),
            quiet=bool(raw.get("quiet", False)),
        )

    def frame_times(self) -> Iterator[float]:
        """Scene seconds of every frame."""
        n = int(self.duration_s * self.fps)
        for i in range(n):
            yield i / self.fps

    def cut(self, t: float) -> bool:
        """Whether the stream is cut at ``t``."""
        return any(i.type == "cut" and i.start <= t < i.end for i in self.incidents)
