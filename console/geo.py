"""Map geometry: WGS-84 to GCJ-02 for display, map bounds, and the area's vector layers from GeoJSON.

GCJ-02 is the datum Chinese basemaps are drawn in: a published, deterministic offset of up to a
few hundred metres from WGS-84 inside China and none outside. Positions from terminals are
WGS-84 (JT/T 808), so when the configured layers are GCJ-02 they are shifted before drawing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The offset itself is shared with the gateways (broker/gcj02.py); re-exported for the console.
from broker.gcj02 import gcj02_to_wgs84 as gcj02_to_wgs84
from broker.gcj02 import outside_china as outside_china
from broker.gcj02 import wgs84_to_gcj02 as wgs84_to_gcj02
from console.config import MapFeature
from console.errors import ConsoleError


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(h)))


def bounds_of(points: Iterable[tuple[float, float]], pad: float = 0.1,
              ) -> tuple[float, float, float, float] | None:
    """West, south, east, north around the points with a relative margin; None without points."""
    pts = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    w, e, s, n = min(xs), max(xs), min(ys), max(ys)
    dx = max(e - w, 0.01) * pad
    dy = max(n - s, 0.01) * pad
    return w - dx, s - dy, e + dx, n + dy


class LayerFileError(ConsoleError, ValueError):
    """The GeoJSON layer file cannot be used; the message names the file and the feature."""


def load_geojson_layers(path: Path) -> list[MapFeature]:
    """Polygons and lines of a GeoJSON FeatureCollection as map features (points are ignored).

    Raises:
        LayerFileError: unreadable file or malformed feature.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayerFileError(f"{path}: {exc}") from None
    out: list[MapFeature] = []
    for i, feat in enumerate(doc.get("features", []) if isinstance(doc, dict) else []):
        try:
            out.extend(_features(feat))
        except (KeyError, TypeError, ValueError) as exc:
            raise LayerFileError(f"{path}: features[{i}]: {exc}") from None
    return out


def _features(feat: dict[str, Any]) -> list[MapFeature]:
    props = feat.get("properties") or {}
    geom = feat["geometry"]
    gtype = geom["type"]
    name = str(props.get("name", ""))
    kind = str(props.get("kind", "area"))
    if kind not in ("area", "water", "park", "road", "district", "building"):
        kind = "area"
    color = props.get("color")

    def feature(coords: list[Any]) -> MapFeature:
        pts = [(float(c[0]), float(c[1])) for c in coords]
        return MapFeature(name=name, coordinates=pts, kind=kind, color=color)  # type: ignore[arg-type]

    if gtype == "Polygon":
        return [feature(geom["coordinates"][0])]
    if gtype == "MultiPolygon":
        return [feature(poly[0]) for poly in geom["coordinates"]]
    if gtype == "LineString":
        return [feature(geom["coordinates"])]
    if gtype == "MultiLineString":
        return [feature(line) for line in geom["coordinates"]]
    return []
