"""WGS-84 -> GCJ-02 conversion, bounds and GeoJSON layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.geo import (
    LayerFileError,
    bounds_of,
    distance_m,
    gcj02_to_wgs84,
    load_geojson_layers,
    outside_china,
    wgs84_to_gcj02,
)


@pytest.mark.parametrize("lon,lat", [(2.35, 48.86), (-74.0, 40.7), (139.9, 35.7), (151.2, -33.9), (70.0, 30.0)])
def test_outside_china_is_unchanged(lon: float, lat: float) -> None:
    assert outside_china(lon, lat)
    assert wgs84_to_gcj02(lon, lat) == (lon, lat)


@pytest.mark.parametrize("lon,lat", [(120.117, 30.2905), (116.397, 39.909), (113.26, 23.13), (104.07, 30.67)])
def test_offset_inside_china_is_a_few_hundred_metres(lon: float, lat: float) -> None:
    glon, glat = wgs84_to_gcj02(lon, lat)
    d = distance_m(lon, lat, glon, glat)
    assert 100 < d < 800
    # Across eastern and central China the offset moves points east.
    assert glon > lon


def test_beijing_offset_matches_the_usual_figure() -> None:
    # Central Beijing moves about 0.0062 deg east and 0.0014 deg north on GCJ-02 maps.
    glon, glat = wgs84_to_gcj02(116.397, 39.909)
    assert glon - 116.397 == pytest.approx(0.0062, abs=3e-4)
    assert glat - 39.909 == pytest.approx(0.0014, abs=3e-4)


@given(st.floats(100.0, 125.0), st.floats(20.0, 45.0))
def test_inverse_round_trips_within_a_centimetre(lon: float, lat: float) -> None:
    back = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert distance_m(lon, lat, *back) < 0.01


def test_offset_varies_smoothly() -> None:
    a = wgs84_to_gcj02(120.1, 30.2)
    b = wgs84_to_gcj02(120.1001, 30.2001)
    shift_a = distance_m(120.1, 30.2, *a)
    shift_b = distance_m(120.1001, 30.2001, *b)
    assert abs(shift_a - shift_b) < 5


def test_distance_of_one_degree_of_latitude() -> None:
    assert distance_m(120.0, 30.0, 120.0, 31.0) == pytest.approx(111_195, rel=1e-3)


def test_bounds_pad_and_degenerate_cases() -> None:
    assert bounds_of([]) is None
    w, s, e, n = bounds_of([(120.0, 30.0), (120.2, 30.1)], pad=0.1)  # type: ignore[misc]
    assert w == pytest.approx(119.98) and e == pytest.approx(120.22)
    assert s == pytest.approx(29.99) and n == pytest.approx(30.11)
    w, s, e, n = bounds_of([(120.0, 30.0)])  # type: ignore[misc]
    assert w < 120.0 < e and s < 30.0 < n
    assert bounds_of([(float("nan"), 1.0)]) is None


def test_geojson_polygons_and_lines(tmp_path: Path) -> None:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "西湖", "kind": "water"},
         "geometry": {"type": "Polygon", "coordinates": [[[120.14, 30.24], [120.16, 30.24], [120.15, 30.26],
                                                          [120.14, 30.24]]]}},
        {"type": "Feature", "properties": {"name": "环城北路", "kind": "road"},
         "geometry": {"type": "LineString", "coordinates": [[120.15, 30.27], [120.19, 30.27]]}},
        {"type": "Feature", "properties": {"name": "两块", "kind": "weird"},
         "geometry": {"type": "MultiPolygon", "coordinates": [[[[1, 1], [2, 1], [2, 2]]], [[[3, 3], [4, 3], [4, 4]]]]}},
        {"type": "Feature", "properties": {"name": "点"}, "geometry": {"type": "Point", "coordinates": [1, 2]}},
    ]}
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    feats = load_geojson_layers(path)
    assert [(f.name, f.kind, len(f.coordinates)) for f in feats] == [
        ("西湖", "water", 4), ("环城北路", "road", 2), ("两块", "area", 3), ("两块", "area", 3)]


def test_geojson_errors_name_the_file_and_feature(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"features": [{"geometry": {"type": "Polygon", "coordinates": [[["x", 1]]]}}]}))
    with pytest.raises(LayerFileError, match=r"bad.geojson: features\[0\]"):
        load_geojson_layers(bad)
    with pytest.raises(LayerFileError, match=r"missing\.geojson"):
        load_geojson_layers(tmp_path / "missing.geojson")
