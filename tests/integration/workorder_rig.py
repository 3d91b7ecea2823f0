"""Shared pieces of the work-order tests: a grids file of 10 rectangles, their staff, and transitions in them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerting.config import Person
from broker.contracts import Kind, Severity, Transition

WEST, SOUTH, STEP = 120.10, 30.25, 0.01
"""Grid i (0..9) covers lon WEST + (i % 5) * STEP .. + STEP, lat SOUTH + (i // 5) * STEP .. + STEP."""


def grid_id(i: int) -> str:
    return f"g{i + 1:02d}"


def staff_id(i: int) -> str:
    return f"staff-{i + 1:02d}"


def centre(i: int) -> tuple[float, float]:
    """(lat, lon) of the middle of grid i."""
    return SOUTH + (i // 5) * STEP + STEP / 2, WEST + (i % 5) * STEP + STEP / 2


def grids_doc(n: int = 10) -> dict[str, Any]:
    feats = []
    for i in range(n):
        w, s = WEST + (i % 5) * STEP, SOUTH + (i // 5) * STEP
        feats.append({"type": "Feature", "properties": {
            "id": grid_id(i), "name": f"第{i + 1}网格", "street": "翠苑街道", "community": f"社区{i + 1}",
            "unit": "城管局", "staff": [staff_id(i)]},
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [w + STEP, s], [w + STEP, s + STEP],
                                                             [w, s + STEP], [w, s]]]}})
    return {"type": "FeatureCollection", "features": feats}


def write_grids(path: Path, n: int = 10) -> Path:
    path.write_text(json.dumps(grids_doc(n), ensure_ascii=False), encoding="utf-8")
    return path


def staff_people(n: int = 10) -> list[Person]:
    return [Person(id=staff_id(i), name=f"网格员{i + 1}", roles=["grid_staff"], channels=[f"fake://{staff_id(i)}"])
            for i in range(n)]


def case(device: str, i: int, at: float, severity: Severity = Severity.CRITICAL, category: str = "",
         dlat: float = 0.0) -> Transition:
    """A vehicle alert positioned in grid i (placed by its lat/lon values)."""
    lat, lon = centre(i)
    labels = {"category": category} if category else {}
    ts = datetime.fromtimestamp(at, UTC)
    return Transition(ts=ts, fingerprint=f"overspeed:{device}", rule="overspeed", status="firing",
                      severity=severity, kind=Kind.VEHICLE, device_id=device, labels=labels,
                      summary=f"{device} 超速", values={"lat": lat + dlat, "lon": lon, "speed_kmh": 95.0},
                      source_ts=ts, started_at=ts)


# ---------------------------------------------------------------------- the console stack (tests/support/console_stack.py)

STACK_GRIDS = {"g-cuiyuan": ((120.110, 30.285, 120.125, 30.295), ["gs-zhou"]),
               "g-xixi": ((120.080, 30.272, 120.090, 30.282), ["gs-wu"]),
               "g-east": ((120.205, 30.287, 120.220, 30.297), [])}
"""Grids around the console stack's sites: cuiyuan-3 (elev-0001), xixi-tower (elev-0002), depot-east."""
STACK_STAFF = {"gs-zhou": ("zhou-token-0001", "g-cuiyuan", "周网格员"), "gs-wu": ("wu-token-00001", "g-xixi", "吴网格员")}
CUIYUAN_3 = (30.2905, 120.1170)
XIXI_TOWER = (30.2770, 120.0850)


def stack_grids(path: Path) -> Path:
    feats = []
    for gid, ((w, s, e, n), staff) in STACK_GRIDS.items():
        feats.append({"type": "Feature", "properties": {"id": gid, "name": {"g-cuiyuan": "翠苑网格", "g-xixi": "西溪网格",
                                                                          "g-east": "东站网格"}[gid],
                                                        "street": "西湖区", "community": gid, "unit": "市场监管局",
                                                        "staff": staff},
                      "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False), encoding="utf-8")
    return path


def stack_options(folder: Path, **workorders: Any) -> dict[str, Any]:
    """``alerting_options`` for ``ConsoleStack``: its users and people plus two grid staff, work orders on."""
    from tests.support.console_stack import PEOPLE, USERS

    folder.mkdir(parents=True, exist_ok=True)
    users = [*USERS, *({"name": n, "role": "grid_staff", "token": tok, "grids": [g]}
                       for n, (tok, g, _) in STACK_STAFF.items())]
    people = [*PEOPLE, *({"id": n, "name": name, "roles": ["grid_staff"], "channels": []}
                         for n, (_, _, name) in STACK_STAFF.items())]
    wo = {"enabled": True, "grids_file": str(stack_grids(folder / "grids.json")),
          "photos_dir": str(folder / "evidence" / "workorders"), **workorders}
    return {"users": users, "people": people, "workorders": wo}
