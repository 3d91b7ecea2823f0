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

from console.config import MapFeature

# Krasovsky 1940 ellipsoid, on which the GCJ-02 offset is defined.
_A = 6378245.0
_EE = 0.00669342162296594323


def outside_china(lon: float, lat: float) -> bool:
    """Whether a position lies outside the rectangle where GCJ-02 applies an offset."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _offset_lat(x: float, y: float) -> float:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _offset_lon(x: float, y: float) -> float:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """A WGS-84 position as GCJ-02 ``(lon, lat)``; unchanged outside China."""
    if outside_china(lon, lat):
        return lon, lat
    dlat = _offset_lat(lon - 105.0, lat - 35.0)
    dlon = _offset_lon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon: float, lat: float, iterations: int = 6) -> tuple[float, float]:
    """The inverse by fixed-point iteration (error well under a centimetre after a few steps)."""
    wlon, wlat = lon, lat
    for _ in range(iterations):
        glon, glat = wgs84_to_gcj02(wlon, wlat)
        wlon, wlat = wlon - (glon - lon), wlat - (glat - lat)
    return wlon, wlat


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


class LayerFileError(ValueError):
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
