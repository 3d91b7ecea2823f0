"""Work-order costs: placing points in grids, figures over many orders, alert intake with work orders on vs off.

    .venv/bin/python bench/bench_workorders.py [--grids 900] [--points 100000] [--orders 50000] [--alerts 3000]

Prints figures; asserts nothing (machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerting.config import AlertingConfig, ApiConfig, Retry, Route, WorkOrdersConfig
from alerting.grids import GridMap, parse_grids
from alerting.service import AlertingService
from alerting.workorders import model
from alerting.workorders.figures import order_figures
from broker.contracts import Kind, Severity, Transition, encode
from broker.mqtt import Message, MqttClient

W, S = 120.0, 30.0


def lattice(n: int, step: float) -> dict[str, object]:
    side = int(n ** 0.5)
    feats = []
    for i in range(side * side):
        w, s = W + (i % side) * step, S + (i // side) * step
        ring = [[w, s], [w + step, s], [w + step, s + step * 0.6], [w + step / 2, s + step], [w, s + step], [w, s]]
        feats.append({"type": "Feature", "properties": {"id": f"g{i}", "staff": [f"p{i}"]},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": feats}


def bench_locate(n_grids: int, n_points: int) -> None:
    step = 0.01
    doc = lattice(n_grids, step)
    gm = GridMap(parse_grids(doc))
    side = int(n_grids ** 0.5)
    rnd = random.Random(7)
    pts = [(S + rnd.random() * side * step, W + rnd.random() * side * step) for _ in range(n_points)]
    t0 = time.perf_counter()
    hits = sum(gm.locate(lat, lon) is not None for lat, lon in pts)
    dt = time.perf_counter() - t0
    print(f"locate: {len(gm.grids)} grids, {n_points} points: {dt / n_points * 1e6:.1f} us/point "
          f"({hits / n_points:.0%} inside a grid)")


def bench_figures(n_orders: int) -> None:
    rnd = random.Random(3)
    due = {"accepted": 60.0, "en_route": 180.0, "on_site": 300.0, "handled": 1800.0}
    orders = []
    for i in range(n_orders):
        o = model.dispatch(model.WorkOrder(id=f"o{i}", created_at=0.0, updated_at=0.0, category=f"c{i % 7}",
                                           unit=f"u{i % 5}"), "system", 0.0, f"g{i % 100}", due)
        o = model.accept(o, f"p{i % 300}", rnd.uniform(5, 90))
        if i % 3:
            o = model.depart(o, o.assignee or "", 100.0)
            o = model.arrive(o, o.assignee or "", rnd.uniform(120, 400), 0, 0, 1e9, "flag")
        orders.append(o)
    t0 = time.perf_counter()
    f = order_figures(orders, 10_000.0)
    dt = time.perf_counter() - t0
    print(f"figures: {n_orders} orders, 4 dimensions: {dt * 1000:.0f} ms "
          f"(on-time accept {f['on_time_rate']['accepted']:.2f})")


def bench_intake(n_alerts: int, enabled: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        grids = Path(tmp) / "grids.json"
        grids.write_text(json.dumps(lattice(100, 0.01)))
        cfg = AlertingConfig(receivers=[], escalation_policies=[], inhibit_rules=[], users=[],
                             route=Route(name="root", receivers=[]), api=ApiConfig(enabled=False),
                             retry=Retry(attempts=1),
                             workorders=WorkOrdersConfig(enabled=enabled, grids_file=str(grids)))
        svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=Path(tmp) / "s")
        rnd = random.Random(1)
        now = datetime.now(UTC)
        batch = []
        for i in range(n_alerts):
            t = Transition(ts=now, fingerprint=f"f{i}", rule="overspeed", status="firing", severity=Severity.MAJOR,
                           kind=Kind.VEHICLE, device_id=f"truck-{i}", summary="超速",
                           values={"lat": S + rnd.random() * 0.1, "lon": W + rnd.random() * 0.1})
            batch.append(Message("vigil/v1/transitions/vehicle/x", encode(t), 1, False, 0.0))
        t0 = time.perf_counter()
        for i in range(0, n_alerts, 100):
            svc.on_transitions(batch[i:i + 100])
        dt = time.perf_counter() - t0
        svc.store.close()
        return dt / n_alerts * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", type=int, default=900)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--orders", type=int, default=50_000)
    ap.add_argument("--alerts", type=int, default=3000)
    a = ap.parse_args()
    bench_locate(a.grids, a.points)
    bench_figures(a.orders)
    off = bench_intake(a.alerts, False)
    on = bench_intake(a.alerts, True)
    print(f"intake: {a.alerts} new alerts in batches of 100: {off:.3f} ms/alert without work orders, "
          f"{on:.3f} ms/alert with (placement in 100 grids, order, dispatch, audit)")


if __name__ == "__main__":
    main()
