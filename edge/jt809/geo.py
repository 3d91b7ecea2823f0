"""GCJ-02 (the national map offset) to WGS-84, for positions a lower platform sends with ENCRYPT = 1.

Vigil's contract carries WGS-84. The transform is the shared one in ``broker/gcj02.py``; these
wrappers take and give ``(lat, lon)`` as the JT/T 809 body does. The offset has no closed-form
inverse: fixed-point iterations of the forward transform bring the error well under a metre.
"""

from __future__ import annotations

from broker import gcj02


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """The GCJ-02 coordinates of a WGS-84 point (unchanged outside China)."""
    glon, glat = gcj02.wgs84_to_gcj02(lon, lat)
    return glat, glon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """The WGS-84 point whose GCJ-02 coordinates are (lat, lon), to 6 decimals (the wire's resolution)."""
    if gcj02.outside_china(lon, lat):
        return lat, lon
    wlon, wlat = gcj02.gcj02_to_wgs84(lon, lat, iterations=8)
    return round(wlat, 6), round(wlon, 6)
