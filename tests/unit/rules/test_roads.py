"""Road layer parsing and map matching (rules/conditions/roads.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules.conditions.roads import LAYERS, RoadLayerError, parse_layer


def feature(coords: list[list[float]], **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": {"type": "LineString", "coordinates": coords}}


LAYER = {"type": "FeatureCollection", "features": [
    feature([[120.10, 30.30], [120.20, 30.30]], name="G60", road_class="expressway", limit_kmh=120),
    feature([[120.15, 30.20], [120.15, 30.29]], name="一号路", road_class="urban", limit_kmh=50, oneway=True),
    feature([[120.40, 30.40], [120.41, 30.40]], road_class="provincial"),
]}


def test_nearest_road_within_tolerance_with_heading_agreement() -> None:
    layer = parse_layer(LAYER)
    on = layer.match(30.3002, 120.15, 90.0, 40.0, 45.0)  # ~22 m north of G60, driving east
    assert on is not None and on.road.name == "G60" and on.road.limit_kmh == 120 and 20 < on.distance_m < 25
    assert layer.match(30.3002, 120.15, 270.0, 40.0, 45.0) is not None  # two-way: westbound matches too
    assert layer.match(30.3002, 120.15, 0.0, 40.0, 45.0) is None  # crossing it on a bridge: no match
    assert layer.match(30.3010, 120.15, 90.0, 40.0, 45.0) is None  # 111 m away
    assert layer.match(30.3010, 120.15, None, 150.0, 45.0) is not None  # no heading: distance only
    # One-way street drawn south -> north: northbound matches, southbound does not.
    assert layer.match(30.25, 120.15001, 0.0, 40.0, 45.0) is not None
    assert layer.match(30.25, 120.15001, 180.0, 40.0, 45.0) is None
    assert layer.match(30.40, 120.405, 90.0, 40.0, 45.0).road.limit_kmh == 80.0  # type: ignore[union-attr]


@pytest.mark.parametrize(("doc", "why"), [
    ({"type": "Feature"}, "FeatureCollection"),
    ({"type": "FeatureCollection", "features": [feature([[120.1, 30.3]])]}, "at least two"),
    ({"type": "FeatureCollection", "features": [feature([[120.1, 30.3], [190, 30.3]])]}, "bad point"),
    ({"type": "FeatureCollection", "features": [feature([[120.1, 30.3], [120.2, 30.3]], road_class="motorway")]},
     "road_class"),
    ({"type": "FeatureCollection", "features": [feature([[120.1, 30.3], [120.2, 30.3]], limit_kmh=0)]}, "limit_kmh"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                 "geometry": {"type": "Point", "coordinates": [120, 30]}}]},
     "LineString"),
    ({"type": "FeatureCollection", "features": [feature([[100.0, 30.3], [125.0, 30.3]])]}, "longer than"),
])
def test_bad_layers_are_refused_with_the_reason(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(RoadLayerError, match=why):
        parse_layer(doc)


def test_layers_by_file_are_reread_when_changed_and_bad_ones_match_nothing(tmp_path: Path) -> None:
    path = tmp_path / "roads.geojson"
    path.write_text(json.dumps(LAYER), encoding="utf-8")
    first = LAYERS.get(str(path))
    assert first is not None and LAYERS.get(str(path)) is first
    path.write_text("{not json", encoding="utf-8")
    import os
    os.utime(path, (1, 1))
    assert LAYERS.get(str(path)) is None
    assert LAYERS.get(str(tmp_path / "missing.geojson")) is None and LAYERS.get(None) is None
    assert LAYERS.get(LAYER) is LAYERS.get(LAYER)
