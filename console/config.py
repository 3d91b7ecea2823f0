"""Configuration of the operator console (the ``console:`` key of Vigil's config file).

Defaults work for the demo: listen on 127.0.0.1:8080, Chinese, Asia/Shanghai, no basemap
offset, twelve-hour sessions. Map layers are vector features of the supervised area given in
the config or in a GeoJSON file, so the map works without internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

Locale = Literal["zh", "en"]
FeatureKind = Literal["area", "water", "park", "road", "district", "building"]


class MapFeature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A drawn feature: a polygon (areas, geofences) or a line (roads, routes) of ``[lon, lat]`` points."""

    name: str
    coordinates: list[tuple[float, float]]
    kind: FeatureKind = "area"
    color: str | None = None


DEMO_LAYERS = str(Path(__file__).parent / "maps" / "hangzhou-demo.geojson")
"""Schematic outlines of central Hangzhou shipped for the demo (hand-drawn, WGS-84)."""


class MapConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The map of the supervised area; coordinates are in the basemap's datum (see ``gcj02_basemap``)."""

    bounds: tuple[float, float, float, float] | None = None
    """West, south, east, north in degrees; computed from sites, devices and layers when unset."""
    layers_file: str | None = None
    """A GeoJSON FeatureCollection of the area (polygons and lines); ``properties.kind`` picks the style."""
    areas: list[MapFeature] = []
    geofences: list[MapFeature] = []
    routes: list[MapFeature] = []


class ConsoleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``console:`` section."""

    listen: str = "127.0.0.1:8080"
    """``host:port`` the console's web server binds (port 0 picks a free one)."""
    timezone: str = "Asia/Shanghai"
    """Times on every page are shown in this zone."""
    locale: Locale = "zh"
    """Default language; each operator can switch."""
    title: str = "Vigil 非现场监管指挥中心"
    gcj02_basemap: bool = False
    """The map layers are GCJ-02 (as most Chinese maps are): device positions (WGS-84) are converted for display."""
    session_ttl_s: float = 12 * 3600.0
    """A login lasts one shift; activity does not extend it past this."""
    secure_cookies: bool = False
    """Set when served behind HTTPS (cookies get the ``Secure`` flag)."""
    map: MapConfig = MapConfig()
    evidence_dir: str | None = None
    """Folder of evidence snapshots (the camera agents' ``evidence.dir``), served under ``/evidence/``."""
    offline_after_s: float = 300.0
    """A device without a status message counts as offline after this long without data."""
    chart_points: int = 360
    """Recent telemetry points kept per device in memory for charts."""
    track_points: int = 300
    """Recent positions kept per vehicle for its track."""
    sse_queue: int = 512
    """Events buffered per connected page; a page that falls further behind resynchronises."""
    heartbeat_s: float = 15.0
    device_push_s: float = 1.0
    """Changed devices (values, positions, online state) are pushed to pages at most this often."""
    max_page_size: int = 500
    login_failures: int = 10
    """Failed logins (or bearer tokens) allowed per (user name, client address) within ``login_window_s``."""
    login_window_s: float = 300.0
    login_failures_global: int = 200
    """Failed logins of all users and addresses together within ``login_window_s`` before every login and
    bearer token is refused until the window moves on (the ceiling on a guess spread over many addresses)."""

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"console.listen must be host:port, got {self.listen!r}")
        if self.login_failures < 1 or self.login_failures_global < self.login_failures or self.login_window_s <= 0:
            raise ValueError("console: login_failures >= 1, login_failures_global >= login_failures, "
                             "login_window_s > 0")
        if self.session_ttl_s <= 0 or self.chart_points < 10 or self.track_points < 2 or self.sse_queue < 16:
            raise ValueError("console: session_ttl_s > 0, chart_points >= 10, track_points >= 2, sse_queue >= 16")

    @property
    def host(self) -> str:
        """The address part of ``listen``."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return int(self.listen.rpartition(":")[2])
