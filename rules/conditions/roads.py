"""Road layer (GeoJSON LineStrings with road class and posted limit), map matching, road-aware speed.

A layer is a GeoJSON ``FeatureCollection`` whose features are ``LineString`` or
``MultiLineString`` geometries (``[lon, lat]``, WGS-84) with properties ``road_class``
(expressway | national | provincial | urban | other), ``limit_kmh`` (posted limit; default by
class), optional ``name`` and ``oneway`` (true: traffic only in the drawing direction). It is
given per device or site by a registry attribute (a file path, or the mapping inline) and read
once per file version. A fix is matched to the nearest segment within ``tolerance_m`` whose
direction agrees with the vehicle's heading (either way on two-way roads); fixes without a
GNSS fix (``gnss_fixed`` false) match nothing, so they feed no rule.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rules.conditions.base import (
    CLEAR,
    FIRE,
    HOLD,
    BuildContext,
    Condition,
    EvalContext,
    RuleError,
    Signal,
    check_keys,
    condition_type,
    require_mapping,
)
from rules.conditions.geo import EARTH_RADIUS_M
from rules.errors import RulesError
from rules.expr import Expression

ROAD_CLASSES: Final = ("expressway", "national", "provincial", "urban", "other")
DEFAULT_LIMIT_KMH: Final = {"expressway": 120.0, "national": 80.0, "provincial": 80.0, "urban": 60.0, "other": 40.0}
"""Posted limit assumed for a feature without ``limit_kmh``."""
_CELL_DEG: Final = 0.01
"""Grid cell of the segment index (about 1.1 km north-south)."""
_M_PER_DEG: Final = math.pi * EARTH_RADIUS_M / 180.0


class RoadLayerError(RulesError, ValueError):
    """A road layer file or mapping is not valid."""


@dataclass(frozen=True, slots=True)
class Road:
    """One feature's attributes."""

    name: str
    road_class: str
    limit_kmh: float
    oneway: bool


@dataclass(frozen=True, slots=True)
class Match:
    """Where a fix lies on the layer."""

    road: Road
    distance_m: float
    bearing_deg: float


class RoadLayer:
    """Segments of a road layer with a grid index for matching."""

    def __init__(self, roads: list[tuple[Road, list[tuple[float, float]]]]) -> None:
        self.segments: list[tuple[Road, float, float, float, float]] = []
        self.grid: dict[tuple[int, int], list[int]] = {}
        for road, line in roads:
            for (lon1, lat1), (lon2, lat2) in itertools.pairwise(line):
                idx = len(self.segments)
                self.segments.append((road, lon1, lat1, lon2, lat2))
                for cell in _cells(min(lon1, lon2), min(lat1, lat2), max(lon1, lon2), max(lat1, lat2)):
                    self.grid.setdefault(cell, []).append(idx)

    def match(self, lat: float, lon: float, heading: float | None, tolerance_m: float,
              heading_tolerance: float) -> Match | None:
        """The nearest segment within ``tolerance_m`` agreeing with ``heading`` (None: any direction)."""
        pad = tolerance_m / _M_PER_DEG / max(0.1, math.cos(math.radians(lat)))
        seen: set[int] = set()
        best: Match | None = None
        kx = math.cos(math.radians(lat)) * _M_PER_DEG
        for cell in _cells(lon - pad, lat - pad, lon + pad, lat + pad):
            for idx in self.grid.get(cell, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                road, lon1, lat1, lon2, lat2 = self.segments[idx]
                ax, ay = (lon1 - lon) * kx, (lat1 - lat) * _M_PER_DEG
                bx, by = (lon2 - lon) * kx, (lat2 - lat) * _M_PER_DEG
                dx, dy = bx - ax, by - ay
                length2 = dx * dx + dy * dy
                f = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
                d = math.hypot(ax + f * dx, ay + f * dy)
                if d > tolerance_m or (best is not None and d >= best.distance_m):
                    continue
                bearing = math.degrees(math.atan2(dx, dy)) % 360.0
                if heading is not None and length2 > 0:
                    diff = _angle(heading, bearing)
                    if not road.oneway:
                        diff = min(diff, _angle(heading, bearing + 180.0))
                    if diff > heading_tolerance:
                        continue
                best = Match(road, d, bearing)
        return best


def _angle(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _cells(lon1: float, lat1: float, lon2: float, lat2: float) -> list[tuple[int, int]]:
    x1, x2 = math.floor(lon1 / _CELL_DEG), math.floor(lon2 / _CELL_DEG)
    y1, y2 = math.floor(lat1 / _CELL_DEG), math.floor(lat2 / _CELL_DEG)
    if x2 - x1 > 100 or y2 - y1 > 100:
        raise RoadLayerError("a segment longer than ~100 km: split long roads into shorter LineStrings")
    return [(x, y) for x in range(x1, x2 + 1) for y in range(y1, y2 + 1)]


def _line(raw: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise RoadLayerError(f"{where}: a LineString needs at least two [lon, lat] points")
    out = []
    for p in raw:
        if (not isinstance(p, list) or len(p) < 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in p[:2])
                or not (-180 <= p[0] <= 180 and -90 <= p[1] <= 90)):
            raise RoadLayerError(f"{where}: bad point {p!r} (want [lon, lat])")
        out.append((float(p[0]), float(p[1])))
    return out


def parse_layer(doc: Any) -> RoadLayer:
    """A ``RoadLayer`` from a GeoJSON FeatureCollection mapping. Raises ``RoadLayerError``."""
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection" or not isinstance(
            doc.get("features"), list):
        raise RoadLayerError("a road layer is a GeoJSON FeatureCollection")
    roads: list[tuple[Road, list[tuple[float, float]]]] = []
    for i, feat in enumerate(doc["features"]):
        where = f"feature {i}"
        geom = feat.get("geometry") if isinstance(feat, Mapping) else None
        props = feat.get("properties") or {} if isinstance(feat, Mapping) else {}
        if not isinstance(geom, Mapping) or not isinstance(props, Mapping):
            raise RoadLayerError(f"{where}: geometry and properties are needed")
        cls = props.get("road_class", "other")
        if cls not in ROAD_CLASSES:
            raise RoadLayerError(f"{where}: road_class {cls!r} (one of {', '.join(ROAD_CLASSES)})")
        limit = props.get("limit_kmh", DEFAULT_LIMIT_KMH[cls])
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 200:
            raise RoadLayerError(f"{where}: limit_kmh {limit!r} (a number 1..200)")
        road = Road(str(props.get("name", "")), str(cls), float(limit), bool(props.get("oneway", False)))
        if geom.get("type") == "LineString":
            roads.append((road, _line(geom.get("coordinates"), where)))
        elif geom.get("type") == "MultiLineString" and isinstance(geom.get("coordinates"), list):
            roads.extend((road, _line(part, where)) for part in geom["coordinates"])
        else:
            raise RoadLayerError(f"{where}: geometry must be a LineString or MultiLineString")
    return RoadLayer(roads)


class _Layers:
    """Layers by file (re-read when the file changes) or by inline mapping."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[float, RoadLayer | None]] = {}
        self.inline: dict[int, tuple[Any, RoadLayer | None]] = {}

    def get(self, raw: Any) -> RoadLayer | None:
        if isinstance(raw, str):
            path = os.path.expanduser(raw)
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                return None
            cached = self.files.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    layer: RoadLayer | None = parse_layer(json.loads(Path(path).read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    layer = None  # a bad file matches nothing (docs/vehicles.md: check a layer with parse_layer)
                cached = self.files[path] = (mtime, layer)
            return cached[1]
        if isinstance(raw, Mapping):
            hit = self.inline.get(id(raw))
            if hit is None or hit[0] is not raw:
                try:
                    parsed: RoadLayer | None = parse_layer(raw)
                except RoadLayerError:
                    parsed = None
                if len(self.inline) > 256:
                    self.inline.clear()
                hit = self.inline[id(raw)] = (raw, parsed)
            return hit[1]
        return None


LAYERS: Final = _Layers()


class RoadSpeedCondition(Condition):
    """Speed against the matched road's limit (``limit`` may use ``road_class`` and ``posted_kmh``).

    Fires above ``limit × (1 + over_pct / 100)``, clears below that minus ``clear_margin_kmh``.
    Off the layer, ``fallback_limit`` applies if given; otherwise the condition is unknown.
    """

    type_key = "road_speed"

    def __init__(self, layer_param: str, value: str, limit: Expression, fallback: Expression | None,
                 over_pct: Expression, margin: float, tolerance_m: float, heading_tolerance: float,
                 line: int) -> None:
        self.layer_param = layer_param
        self.value = value
        self.limit = limit
        self.fallback = fallback
        self.over_pct = over_pct
        self.margin = margin
        self.tolerance_m = tolerance_m
        self.heading_tolerance = heading_tolerance
        self.metrics = frozenset({value})
        self.line = line

    def value_names(self) -> set[str]:
        """Speed and position."""
        return {self.value, "lat", "lon", "heading_deg"}

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE over the applicable limit, CLEAR under it less the margin, HOLD between."""
        m = ctx.metrics
        if m.get("gnss_fixed") is False:
            return None
        raw_speed, lat, lon = m.get(self.value), m.get("lat"), m.get("lon")
        if not isinstance(raw_speed, int | float) or isinstance(raw_speed, bool):
            return None
        speed = float(raw_speed)
        heading = m.get("heading_deg")
        # Below walking pace the heading of a GNSS fix is noise: match on distance alone.
        use_heading = float(heading) if isinstance(heading, int | float) and speed > 5 else None
        layer = LAYERS.get(ctx.params.get(self.layer_param))
        match = None
        if layer is not None and isinstance(lat, int | float) and isinstance(lon, int | float):
            match = layer.match(float(lat), float(lon), use_heading, self.tolerance_m, self.heading_tolerance)
        if match is not None:
            env = {**m, "road_class": match.road.road_class, "posted_kmh": match.road.limit_kmh}
            limit = self.limit(env, ctx.params, ctx.quality)
            ctx.computed.update(road_class=match.road.road_class, road_name=match.road.name or "?",
                                posted_kmh=match.road.limit_kmh, road_distance_m=round(match.distance_m, 1))
        elif self.fallback is not None:
            limit = self.fallback(m, ctx.params, ctx.quality)
            ctx.computed.update(road_class=str(m.get("road_class", "?")), road_name="?")
        else:
            return None
        pct = self.over_pct(m, ctx.params, ctx.quality)
        if not isinstance(limit, int | float) or not isinstance(pct, int | float):
            return None
        level = float(limit) * (1.0 + float(pct) / 100.0)
        ctx.computed["limit_kmh"] = float(limit)
        ctx.computed["over_pct"] = round((speed / float(limit) - 1.0) * 100.0, 1) if limit else 0.0
        if speed > level:
            return FIRE
        return CLEAR if speed < level - self.margin else HOLD


def _number(spec: Any, key: str, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RuleError(spec.line_of(key), f"road_speed.{key} must be a non-negative number")
    return float(value)


@condition_type("road_speed")
def build_road_speed(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``road_speed: {limit: 'min(80, posted_kmh)', fallback_limit: 80, over_pct: 20, layer_param: roads}``."""
    spec = require_mapping(spec, line, "road_speed")
    check_keys(spec, {"limit", "fallback_limit", "over_pct", "clear_margin_kmh", "value", "layer_param",
                      "tolerance_m", "heading_tolerance_deg"}, {"limit"}, "road_speed")
    layer_param = str(spec.get("layer_param", "roads"))
    if layer_param not in bc.param_names:
        raise RuleError(spec.line, f"road_speed: the rule needs a parameter {layer_param!r} "
                        "(e.g. roads: {attr: road_layer, default: null})")
    # ``road_class`` and ``posted_kmh`` in ``limit`` are looked up like metrics: the matched road's values.
    limit = bc.expr(spec["limit"], spec.line_of("limit"), "road_speed.limit")
    fallback = (bc.expr(spec["fallback_limit"], spec.line_of("fallback_limit"), "road_speed.fallback_limit")
                if "fallback_limit" in spec else None)
    return RoadSpeedCondition(
        layer_param, str(spec.get("value", "speed_kmh")), limit, fallback,
        bc.expr(spec.get("over_pct", 0), spec.line_of("over_pct"), "road_speed.over_pct"),
        _number(spec, "clear_margin_kmh", 5.0), _number(spec, "tolerance_m", 40.0),
        _number(spec, "heading_tolerance_deg", 45.0), spec.line)
