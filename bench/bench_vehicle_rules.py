"""Vehicle pack cost per position: the shipped vehicle rules (driving time per driver over 24 h and 7 days,
road-aware speed with a road layer, alarm bits) on a week of 30-second positions, and map matching alone.

    .venv/bin/python bench/bench_vehicle_rules.py [--days 7] [--segments 40000]

The drive is stop-and-go (speed drawn from 0/40/60/70 km/h at every report from 08:00 to 15:00 each
day), the worst case for the driving-time state: a new run of samples at almost every report.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.contracts import Channel, DeviceMessage, Kind, Telemetry
from broker.registry import DeviceRegistry
from rules.conditions.roads import parse_layer
from rules.engine import RuleEngine
from rules.loader import load_rules


def _layer(segments: int, rng: random.Random) -> dict[str, Any]:
    feats = []
    for _ in range(segments // 2):
        lon, lat = 120 + rng.random() * 0.5, 30 + rng.random() * 0.5
        feats.append({"type": "Feature", "properties": {"road_class": "urban", "limit_kmh": 50},
                      "geometry": {"type": "LineString",
                                   "coordinates": [[lon, lat], [lon + 0.003, lat + 0.002], [lon + 0.006, lat + 0.001]]}})
    return {"type": "FeatureCollection", "features": feats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--segments", type=int, default=40_000)
    args = ap.parse_args()
    rng = random.Random(1)
    layer = _layer(args.segments, rng)
    t = time.perf_counter()
    parsed = parse_layer(layer)
    print(f"road layer: {len(parsed.segments)} segments parsed and indexed in {time.perf_counter() - t:.2f} s")
    points = [(30 + rng.random() * 0.5, 120 + rng.random() * 0.5) for _ in range(20_000)]
    t = time.perf_counter()
    hits = sum(1 for lat, lon in points if parsed.match(lat, lon, 90.0, 40.0, 45.0))
    print(f"map matching: {(time.perf_counter() - t) / len(points) * 1e6:.0f} us per fix ({hits} of {len(points)} "
          "on a road)")

    rules = load_rules(["rules/packs/vehicle.yaml"])
    reg = DeviceRegistry.from_data({"sites": [{"id": "city", "attributes": {"road_layer": layer}}], "devices": [
        {"id": "v1", "kind": "vehicle", "site": "city", "attributes": {"vehicle_class": "hazardous"}}]})
    engine = RuleEngine(rules.rules, reg)
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    lat, n = 30.2, args.days * 2880
    msgs = []
    for i in range(n):
        day_s = (i * 30) % 86400
        v = float(rng.choice([0, 0, 40, 60, 70])) if 8 * 3600 <= day_s < 15 * 3600 else 0.0
        lat += v / 3.6 * 30 / 111_000
        msgs.append(DeviceMessage(Kind.VEHICLE, "v1", Channel.TELEMETRY, Telemetry(
            ts=t0 + timedelta(seconds=30 * i), metrics={"speed_kmh": v, "lat": lat, "lon": 120.2, "gnss_fixed": True,
                                                        "ignition": True, "alarm_flags": 0, "heading_deg": 0})))
    t = time.perf_counter()
    for k, m in enumerate(msgs):
        engine.process([m], (t0 + timedelta(seconds=30 * k)).timestamp())
    dt = time.perf_counter() - t
    print(f"vehicle pack ({len(rules.rules)} rules): {n} positions over {args.days} days, "
          f"{dt / n * 1e6:.0f} us per position ({n / dt:.0f} positions/s on one core)")


if __name__ == "__main__":
    main()
