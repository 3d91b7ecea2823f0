"""Geofences (inside / outside / enter / exit of polygons or circles, with dwell) and route corridors.

Coordinates are WGS-84 degrees written ``[lon, lat]`` (GeoJSON order). Zones are small
(a plant, a school, a district), so polygons are tested in plain lon/lat and distances
use a local flat projection around the vehicle, accurate to well under a metre at that scale.
"""

from __future__ import annotations

import math
from typing import Any, Final

from rules.conditions.base import (
    CLEAR,
    FIRE,
    BuildContext,
    Condition,
    EvalContext,
    RuleError,
    Signal,
    check_keys,
    condition_type,
    parse_duration,
    require_mapping,
)

EARTH_RADIUS_M: Final = 6_371_008.8
_MODES: Final = {"inside", "outside", "enter", "exit"}


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class Zone:
    """A named polygon or circle."""

    def __init__(self, name: str, polygon: list[tuple[float, float]] | None = None,
                 center: tuple[float, float] | None = None, radius_m: float = 0.0) -> None:
        self.name = name
        self.polygon = polygon
        self.center = center
        self.radius_m = radius_m

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the point is inside (ray casting for polygons)."""
        if self.center is not None:
            return haversine_m(lat, lon, self.center[1], self.center[0]) <= self.radius_m
        assert self.polygon is not None
        inside = False
        pts = self.polygon
        j = len(pts) - 1
        for i in range(len(pts)):
            xi, yi = pts[i]
            xj, yj = pts[j]
            if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
                inside = not inside
            j = i
        return inside


def _point(raw: Any, what: str) -> tuple[float, float]:
    if (not isinstance(raw, list | tuple) or len(raw) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)):
        raise ValueError(f"{what}: a point is [lon, lat], got {raw!r}")
    lon, lat = float(raw[0]), float(raw[1])
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"{what}: [lon, lat] out of range: {raw!r}")
    return lon, lat


def parse_zone(name: str, raw: Any) -> Zone:
    """``{polygon: [[lon, lat], ...]}`` or ``{circle: {center: [lon, lat], radius_m: 300}}``.

    Raises:
        ValueError: the zone is malformed.
    """
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(f"zone {name!r}: expected {{polygon: [...]}} or {{circle: {{center, radius_m}}}}")
    if "polygon" in raw:
        pts = raw["polygon"]
        if not isinstance(pts, list) or len(pts) < 3:
            raise ValueError(f"zone {name!r}: a polygon needs at least 3 points")
        return Zone(name, polygon=[_point(p, f"zone {name!r}") for p in pts])
    if "circle" in raw:
        c = raw["circle"]
        if not isinstance(c, dict) or "center" not in c or "radius_m" not in c:
            raise ValueError(f"zone {name!r}: a circle needs center and radius_m")
        radius = c["radius_m"]
        if not isinstance(radius, int | float) or radius <= 0:
            raise ValueError(f"zone {name!r}: radius_m must be positive")
        return Zone(name, center=_point(c["center"], f"zone {name!r}"), radius_m=float(radius))
    raise ValueError(f"zone {name!r}: unknown shape {next(iter(raw))!r} (polygon or circle)")


class _ParamCache:
    """Per-device zones or routes parsed once from a registry attribute value."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Any, Any]] = {}

    def get(self, raw: Any, parse: Any) -> Any:
        hit = self._cache.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        try:
            value = parse(raw)
        except (ValueError, TypeError, KeyError):
            value = None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[id(raw)] = (raw, value)
        return value


def _zones_from(raw: Any, named: dict[str, Zone]) -> list[Zone]:
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(named[item])
        elif isinstance(item, dict) and "name" in item:
            out.append(parse_zone(str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        else:
            out.append(parse_zone(f"#{i}", item))
    return out


class GeofenceCondition(Condition):
    """Inside / outside / enter / exit one of several zones, held for ``dwell``."""

    stateful = True

    type_key = "geofence"

    def __init__(self, zones: list[Zone], zones_param: str | None, named: dict[str, Zone], mode: str,
                 dwell: float, lat: str, lon: str, line: int) -> None:
        self.zones = zones
        self.zones_param = zones_param
        self.named = named
        self.mode = mode
        self.dwell = dwell
        self.lat, self.lon = lat, lon
        self.metrics = frozenset([lat, lon])
        self.line = line
        self._cache = _ParamCache()

    def _device_zones(self, ctx: EvalContext) -> list[Zone] | None:
        if self.zones_param is None:
            return self.zones
        raw = ctx.params.get(self.zones_param)
        if raw is None:
            return self.zones
        extra = self._cache.get(raw, lambda r: _zones_from(r, self.named))
        return None if extra is None else self.zones + extra

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """The zone signal for the device's latest position."""
        state = slots[self.slot]
        if state is None:
            state = slots[self.slot] = {"in": None, "since": ctx.ts, "edge": False, "zone": None}
        lat, lon = ctx.metrics.get(self.lat), ctx.metrics.get(self.lon)
        if ctx.metrics.get("gnss_fixed") is False:
            return None  # a position without a GNSS fix (JT/T 808 status bit 1 clear) is not a place
        zones = self._device_zones(ctx)
        if zones is None or not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        if not zones:
            return CLEAR
        hit = next((z for z in zones if z.contains(float(lat), float(lon))), None)
        inside = hit is not None
        if ctx.sample and inside != state["in"]:
            state["edge"] = state["in"] is not None
            state["in"] = inside
            state["since"] = ctx.ts
        if hit is not None:
            state["zone"] = hit.name
        if state["zone"] is not None:
            ctx.computed["zone"] = state["zone"]
        mode = self.mode
        want_inside = mode in ("inside", "enter")
        if inside != want_inside:
            return CLEAR
        if mode in ("enter", "exit") and not state["edge"]:
            return CLEAR
        held = ctx.ts - state["since"]
        ctx.computed["dwell_s"] = held
        return FIRE if held >= self.dwell else CLEAR


def _named_zones(bc: BuildContext, line: int) -> dict[str, Zone]:
    out = {}
    for name, raw in bc.zones.items():
        try:
            out[str(name)] = parse_zone(str(name), raw)
        except ValueError as exc:
            raise RuleError(line, str(exc)) from None
    return out


@condition_type("geofence")
def build_geofence(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``geofence: {zones: [depot], mode: inside, dwell: 5min}`` or ``{zones_param: forbidden, mode: inside}``."""
    spec = require_mapping(spec, line, "geofence")
    check_keys(spec, {"zone", "zones", "zones_param", "mode", "dwell", "lat", "lon"}, {"mode"}, "geofence")
    mode = str(spec["mode"])
    if mode not in _MODES:
        raise RuleError(spec.line_of("mode"), f"geofence.mode must be one of {', '.join(sorted(_MODES))}")
    named = _named_zones(bc, spec.line)
    raw = spec.get("zones", spec.get("zone", []))
    try:
        zones = _zones_from(raw, named) if raw else []
    except KeyError as exc:
        raise RuleError(spec.line_of("zones"), f"geofence: unknown zone {exc.args[0]!r} "
                                               f"(zones in this file: {', '.join(sorted(named)) or 'none'})") from None
    except ValueError as exc:
        raise RuleError(spec.line_of("zones"), f"geofence: {exc}") from None
    param = spec.get("zones_param")
    if param is not None and param not in bc.param_names:
        raise RuleError(spec.line_of("zones_param"), f"geofence.zones_param: {param!r} is not a rule parameter")
    if not zones and param is None:
        raise RuleError(spec.line, "geofence: give zones (names or shapes) or zones_param")
    dwell = parse_duration(spec.get("dwell", 0), spec.line_of("dwell"), "geofence.dwell")
    return GeofenceCondition(zones, param, named, mode, dwell, str(spec.get("lat", "lat")),
                             str(spec.get("lon", "lon")), spec.line)


def _parse_route(raw: Any) -> list[tuple[float, float]]:
    if isinstance(raw, dict) and "route" in raw:
        raw = raw["route"]
    if not isinstance(raw, list) or len(raw) < 2:
        raise ValueError("a route is a list of at least two [lon, lat] points")
    return [_point(p, "route") for p in raw]


def distance_to_route_m(lat: float, lon: float, route: list[tuple[float, float]]) -> float:
    """Shortest distance from a point to a polyline of ``(lon, lat)`` points, in metres."""
    kx = math.cos(math.radians(lat)) * math.pi * EARTH_RADIUS_M / 180.0
    ky = math.pi * EARTH_RADIUS_M / 180.0
    best = math.inf
    px, py = 0.0, 0.0
    prev = None
    for rlon, rlat in route:
        x, y = (rlon - lon) * kx, (rlat - lat) * ky
        if prev is not None:
            ax, ay = prev
            dx, dy = x - ax, y - ay
            seg = dx * dx + dy * dy
            t = 0.0 if seg == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / seg))
            cx, cy = ax + t * dx, ay + t * dy
            best = min(best, math.hypot(cx - px, cy - py))
        prev = (x, y)
    return best


class CorridorCondition(Condition):
    """Route deviation: the vehicle is farther than ``width_m`` from its route."""

    type_key = "corridor"

    def __init__(self, route: list[tuple[float, float]] | None, route_param: str | None, width: Any,
                 clear_width: Any, lat: str, lon: str, line: int) -> None:
        self.route = route
        self.route_param = route_param
        self.width = width
        self.clear_width = clear_width
        self.lat, self.lon = lat, lon
        self.metrics = frozenset([lat, lon])
        self.line = line
        self._cache = _ParamCache()

    def evaluate(self, ctx: EvalContext, slots: list[Any]) -> Signal:
        """FIRE beyond the corridor, CLEAR back within ``clear_width_m``."""
        lat, lon = ctx.metrics.get(self.lat), ctx.metrics.get(self.lon)
        if ctx.metrics.get("gnss_fixed") is False:
            return None  # a position without a GNSS fix (JT/T 808 status bit 1 clear) is not a place
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        route = self.route
        if self.route_param is not None:
            raw = ctx.params.get(self.route_param)
            route = self._cache.get(raw, _parse_route) if raw is not None else self.route
        if route is None:
            return None
        width = self.width(ctx.metrics, ctx.params, ctx.quality)
        clear = self.clear_width(ctx.metrics, ctx.params, ctx.quality)
        if not isinstance(width, int | float) or not isinstance(clear, int | float):
            return None
        d = distance_to_route_m(float(lat), float(lon), route)
        ctx.computed["route_distance_m"] = round(d, 1)
        if d > width:
            return FIRE
        return CLEAR if d <= clear else 0


@condition_type("corridor")
def build_corridor(spec: Any, line: int, bc: BuildContext) -> Condition:
    """``corridor: {route_param: route, width_m: 500}`` or ``{route: [[lon, lat], ...], width_m: 500}``."""
    spec = require_mapping(spec, line, "corridor")
    check_keys(spec, {"route", "route_param", "width_m", "clear_width_m", "lat", "lon"}, {"width_m"}, "corridor")
    route = None
    if "route" in spec:
        try:
            route = _parse_route(spec["route"])
        except ValueError as exc:
            raise RuleError(spec.line_of("route"), f"corridor: {exc}") from None
    param = spec.get("route_param")
    if param is not None and param not in bc.param_names:
        raise RuleError(spec.line_of("route_param"), f"corridor.route_param: {param!r} is not a rule parameter")
    if route is None and param is None:
        raise RuleError(spec.line, "corridor: give route or route_param")
    width = bc.expr(spec["width_m"], spec.line_of("width_m"), "corridor.width_m")
    clear = bc.expr(spec.get("clear_width_m", spec["width_m"]), spec.line_of("clear_width_m"),
                    "corridor.clear_width_m")
    return CorridorCondition(route, param, width, clear, str(spec.get("lat", "lat")), str(spec.get("lon", "lon")),
                             spec.line)
