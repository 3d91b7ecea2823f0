"""City grids (网格): polygons from a GeoJSON file, placing sites and vehicles' alerts in a grid.

A grid is a small area (a few streets) with its own staff who go on site. The file is a GeoJSON
FeatureCollection of Polygon / MultiPolygon features whose ``properties`` give ``id``, ``name``,
``street``, ``community``, ``unit`` (the owning department) and ``staff`` (person / user ids).
``GridBook`` reloads the file when it changes (checked at most every ``check_s`` seconds); a broken
file keeps the grids already loaded and is counted, never crashes the service. Positions are the
WGS-84 lon/lat of the registry and the terminals; the file must be drawn in the same datum.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerting.errors import AlertingError

log = logging.getLogger(__name__)

Ring = tuple[tuple[float, float], ...]


class GridError(AlertingError, ValueError):
    """A grids file is invalid; the message names the file, the feature and the problem."""


@dataclass(frozen=True, slots=True)
class Grid:
    """One grid: identity, owning unit, staff and its outline (polygons of rings, lon/lat)."""

    id: str
    name: str
    street: str = ""
    community: str = ""
    unit: str = ""
    staff: tuple[str, ...] = ()
    polygons: tuple[tuple[Ring, ...], ...] = ()
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def contains(self, lon: float, lat: float) -> bool:
        """Whether the point is inside (outer ring, not in a hole); on an edge counts as inside either way."""
        w, s, e, n = self.bbox
        if not (w <= lon <= e and s <= lat <= n):
            return False
        for rings in self.polygons:
            if rings and _in_ring(lon, lat, rings[0]) and not any(_in_ring(lon, lat, h) for h in rings[1:]):
                return True
        return False

    def centre(self) -> tuple[float, float]:
        """The middle of the bounding box (lon, lat), where the map puts the grid's label."""
        w, s, e, n = self.bbox
        return ((w + e) / 2, (s + n) / 2)

    def outline(self) -> list[list[float]]:
        """The first outer ring as ``[[lon, lat], ...]`` (for the map)."""
        return [[x, y] for x, y in self.polygons[0][0]] if self.polygons and self.polygons[0] else []


def _in_ring(x: float, y: float, ring: Ring) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def _ring(raw: Any, where: str) -> Ring:
    if not isinstance(raw, list) or len(raw) < 4:
        raise GridError(f"{where}: a ring needs at least 4 [lon, lat] positions")
    out: list[tuple[float, float]] = []
    for p in raw:
        if not (isinstance(p, list) and len(p) >= 2 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                             for v in p[:2])):
            raise GridError(f"{where}: positions are [lon, lat] numbers")
        lon, lat = float(p[0]), float(p[1])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise GridError(f"{where}: position {p[:2]} out of range")
        out.append((lon, lat))
    return tuple(out)


def parse_grids(doc: Any, source: str = "<grids>") -> list[Grid]:
    """Grids from a parsed GeoJSON FeatureCollection.

    Raises:
        GridError: naming the source, the feature index and the problem.
    """
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"),
                                                                                               list):
        raise GridError(f"{source}: not a GeoJSON FeatureCollection")
    grids: list[Grid] = []
    seen: set[str] = set()
    for i, f in enumerate(doc["features"]):
        where = f"{source}: features[{i}]"
        if not isinstance(f, dict):
            raise GridError(f"{where}: not a feature")
        props = f.get("properties") or {}
        geom = f.get("geometry") or {}
        if not isinstance(props, dict) or not isinstance(geom, dict):
            raise GridError(f"{where}: properties and geometry must be objects")
        gid = props.get("id")
        if not isinstance(gid, str) or not gid or len(gid) > 64 or not all(c.isalnum() or c in "_.:-" for c in gid):
            raise GridError(f"{where}: properties.id must be 1..64 letters, digits or _.:-")
        if gid in seen:
            raise GridError(f"{where}: duplicate grid id {gid!r}")
        seen.add(gid)
        staff = props.get("staff") or []
        if not isinstance(staff, list) or not all(isinstance(s, str) for s in staff):
            raise GridError(f"{where}: properties.staff must be a list of person ids")
        for key in ("name", "street", "community", "unit"):
            if not isinstance(props.get(key, ""), str):
                raise GridError(f"{where}: properties.{key} must be a string")
        coords = geom.get("coordinates")
        if geom.get("type") == "Polygon":
            polys_raw = [coords]
        elif geom.get("type") == "MultiPolygon" and isinstance(coords, list):
            polys_raw = coords
        else:
            raise GridError(f"{where}: geometry must be a Polygon or MultiPolygon")
        polygons: list[tuple[Ring, ...]] = []
        for poly in polys_raw:
            if not isinstance(poly, list) or not poly:
                raise GridError(f"{where}: a polygon is a list of rings")
            polygons.append(tuple(_ring(r, where) for r in poly))
        xs = [x for p in polygons for x, _ in p[0]]
        ys = [y for p in polygons for _, y in p[0]]
        grids.append(Grid(id=gid, name=str(props.get("name") or gid), street=str(props.get("street", "")),
                          community=str(props.get("community", "")), unit=str(props.get("unit", "")),
                          staff=tuple(staff), polygons=tuple(polygons), bbox=(min(xs), min(ys), max(xs), max(ys))))
    return grids


class GridMap:
    """Grids by id with point location: a bucket index of bounding boxes, then the polygons (first match in
    file order wins where grids overlap)."""

    def __init__(self, grids: list[Grid]) -> None:
        self.grids: dict[str, Grid] = {g.id: g for g in grids}
        self._order = {g.id: i for i, g in enumerate(grids)}
        sizes = sorted(max(g.bbox[2] - g.bbox[0], g.bbox[3] - g.bbox[1]) for g in grids)
        # Cells about the size of a typical grid keep a lookup to a handful of candidates.
        self._cell = max(sizes[len(sizes) // 2], 1e-6) if sizes else 1.0
        self._buckets: dict[tuple[int, int], list[Grid]] = {}
        for g in grids:
            w, s, e, n = g.bbox
            cx0, cy0, cx1, cy1 = self._key(w, s) + self._key(e, n)
            if (cx1 - cx0 + 1) * (cy1 - cy0 + 1) > 10_000:  # a huge outlier: checked everywhere instead
                self._buckets.setdefault((1 << 40, 0), []).append(g)
                continue
            for cx in range(cx0, cx1 + 1):
                for cy in range(cy0, cy1 + 1):
                    self._buckets.setdefault((cx, cy), []).append(g)

    def _key(self, lon: float, lat: float) -> tuple[int, int]:
        return math.floor(lon / self._cell), math.floor(lat / self._cell)

    def locate(self, lat: float | None, lon: float | None) -> Grid | None:
        """The grid containing a WGS-84 position, or None (no position, or outside every grid)."""
        if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        found: Grid | None = None
        for g in [*self._buckets.get(self._key(lon, lat), ()), *self._buckets.get((1 << 40, 0), ())]:
            if (found is None or self._order[g.id] < self._order[found.id]) and g.contains(lon, lat):
                found = g
        return found


@dataclass
class GridBook:
    """The grids of a file, reloaded when the file changes (never more often than ``check_s``)."""

    path: Path | None = None
    check_s: float = 5.0
    map: GridMap = field(default_factory=lambda: GridMap([]))
    reloads: int = 0
    errors: int = 0
    last_error: str = ""
    _stamp: tuple[float, int] | None = None
    _checked: float = -1e18

    @classmethod
    def load(cls, path: str | Path | None, check_s: float = 5.0) -> GridBook:
        """Load a grids file (None: no grids). Raises ``GridError`` when the first load fails."""
        book = cls(Path(path) if path else None, check_s)
        if book.path is not None:
            book.map = GridMap(book._read())
            book.reloads = 1
        return book

    def _read(self) -> list[Grid]:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GridError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise GridError(f"{self.path}: not JSON ({exc})") from None
        grids = parse_grids(doc, str(self.path))
        self._stamp = (st.st_mtime, st.st_size)
        return grids

    def maybe_reload(self, now: float) -> bool:
        """Reload if the file changed; a broken new version keeps the old grids. Returns whether it reloaded."""
        if self.path is None or now - self._checked < self.check_s:
            return False
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if self._stamp == (st.st_mtime, st.st_size):
            return False
        try:
            grids = self._read()
        except GridError as exc:
            self.errors += 1
            self._stamp = (st.st_mtime, st.st_size)  # do not re-read the same broken file every check
            self.last_error = str(exc)
            log.warning("grids: keeping the grids loaded before: %s", exc)
            return False
        self.map = GridMap(grids)
        self.reloads += 1
        log.info("grids: reloaded %d grids from %s", len(grids), self.path)
        return True

    @property
    def grids(self) -> dict[str, Grid]:
        """Grids by id."""
        return self.map.grids

    def locate(self, lat: float | None, lon: float | None) -> Grid | None:
        """The grid containing the position, or None."""
        return self.map.locate(lat, lon)
