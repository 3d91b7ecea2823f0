"""The JT/T 808 terminal simulator's pure model: scenarios, geometry, deterministic driving."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge.jt808.codec import ProtocolVersion
from edge.jt808.messages import build_location, parse_location
from simulators.jt808_terminal import (
    AREA,
    EMERGENCY,
    FATIGUE,
    FATIGUE_WARNING,
    OVERSPEED,
    RouteGeometry,
    Scenario,
    ScenarioError,
    Tick,
    bearing_deg,
    distance_m,
    drive,
    inside,
    load_scenario,
    plan,
)

SCENARIOS = Path(__file__).resolve().parents[3] / "simulators" / "scenarios"


def ticks(scenario: Scenario, index: int = 0) -> list[Tick]:
    return list(drive(scenario, plan(scenario)[index]))


def minutes_with(ts: list[Tick], bit: int) -> list[float]:
    return [t.t / 60 for t in ts if t.report.alarm_flags & bit]


@pytest.mark.parametrize("name", ["jt808_coach_night", "jt808_hazmat", "jt808_city_load"])
def test_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    terminals = plan(scenario)
    assert len(terminals) == sum(f.count for f in scenario.fleets)
    assert len({t.phone for t in terminals}) == len(terminals)
    assert all(len(t.phone) == 11 and t.device_id == t.phone for t in terminals)


def test_city_load_has_ten_thousand_terminals_in_both_protocol_versions() -> None:
    terminals = plan(load_scenario(SCENARIOS / "jt808_city_load.yaml"))
    assert len(terminals) == 10_000
    assert {t.version for t in terminals} == {ProtocolVersion.V2013, ProtocolVersion.V2019}


def test_same_seed_same_reports_other_seed_other_reports() -> None:
    path = SCENARIOS / "jt808_hazmat.yaml"
    a = [build_location(t.report) for t in ticks(load_scenario(path, duration_min=30))]
    b = [build_location(t.report) for t in ticks(load_scenario(path, duration_min=30))]
    c = [build_location(t.report) for t in ticks(load_scenario(path, duration_min=30, seed=7))]
    assert a == b and a != c


def test_reports_are_valid_wire_positions_with_realistic_motion() -> None:
    scenario = load_scenario(SCENARIOS / "jt808_coach_night.yaml", duration_min=120)
    ts = ticks(scenario)
    for prev, cur in itertools.pairwise(ts):
        parsed = parse_location(build_location(cur.report))
        assert parsed.time == cur.report.time
        dt = cur.t - prev.t
        moved = distance_m((prev.report.latitude, prev.report.longitude), (cur.report.latitude, cur.report.longitude))
        # No teleporting: never further than the faster of the two speeds allows (plus rounding).
        assert moved <= max(prev.report.speed_kmh, cur.report.speed_kmh) / 3.6 * dt + 5
        assert abs(cur.report.speed_kmh - prev.report.speed_kmh) <= 40
    assert 30.0 < ts[0].report.latitude < 30.4 and 120.1 < ts[0].report.longitude < 120.7  # around Hangzhou


def test_coach_night_speeding_fatigue_and_night_running() -> None:
    scenario = load_scenario(SCENARIOS / "jt808_coach_night.yaml")
    ts = ticks(scenario)
    over = minutes_with(ts, OVERSPEED)
    assert over and 45 <= min(over) <= 47 and max(over) <= 58
    fatigue = minutes_with(ts, FATIGUE)
    warning = minutes_with(ts, FATIGUE_WARNING)
    assert 239 <= min(fatigue) <= 242 and 224 <= min(warning) < min(fatigue)
    local_hours = {t.report.time.hour for t in ts if t.report.speed_kmh > 0}
    assert {22, 23, 0, 1, 2, 3, 4} <= local_hours  # drives through the night and 02:00-05:00


def test_rest_stops_the_vehicle_and_resets_fatigue() -> None:
    scenario = load_scenario(SCENARIOS / "jt808_coach_night.yaml")
    rested = next(t for t in plan(scenario) if t.fleet.name == "rested_coach")
    ts = list(drive(scenario, rested))
    resting = [t for t in ts if 205 <= t.t / 60 <= 224]
    assert resting and all(t.report.speed_kmh == 0 and not t.report.ignition for t in resting)
    assert min(minutes_with(ts, FATIGUE)) > 200 + 25 + 239
    assert rested.version is ProtocolVersion.V2019


def test_hazmat_zone_signal_loss_and_emergency() -> None:
    scenario = load_scenario(SCENARIOS / "jt808_hazmat.yaml")
    terminals = plan(scenario)
    tanker = list(drive(scenario, terminals[0]))
    offline = [t for t in tanker if not t.online]
    assert offline and all(t.backfill for t in offline)
    assert 49 <= offline[0].t / 60 <= 51 and len(offline) == 30  # 10 minutes at 20 s
    in_zone = [t for t in tanker if t.report.alarm_flags & AREA]
    assert in_zone and all(inside((t.report.latitude, t.report.longitude), scenario.zones[0].polygon)
                           for t in in_zone)
    entries = [t.report.extras[0x12] for t in tanker if 0x12 in t.report.extras]
    assert entries and entries[0][1:5] == (101).to_bytes(4, "big")
    button = list(drive(scenario, terminals[-1]))
    assert 29 <= min(minutes_with(button, EMERGENCY)) <= 31 and len(minutes_with(button, EMERGENCY)) == 6


def test_geometry() -> None:
    assert distance_m((30.0, 120.0), (31.0, 120.0)) == pytest.approx(111_195, rel=1e-3)
    assert bearing_deg((30.0, 120.0), (31.0, 120.0)) == 0
    assert bearing_deg((30.0, 120.0), (30.0, 121.0)) == 89  # rhumb vs great circle: just under east
    square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    assert inside((0.5, 0.5), square) and not inside((1.5, 0.5), square)


def test_open_routes_are_driven_out_and_back() -> None:
    scenario = load_scenario(SCENARIOS / "jt808_hazmat.yaml")
    geo = RouteGeometry.of(scenario.routes["banshan_xiaoshan"])
    assert geo.points[0] == geo.points[-1]
    (lat, lon), _ = geo.at(geo.length_m / 2)
    assert (lat, lon) == pytest.approx((30.1838, 120.2648))
    assert geo.at(geo.length_m * 1.25)[0] == pytest.approx(geo.at(geo.length_m * 0.25)[0])


@pytest.mark.parametrize(("patch", "key"), [
    ("fleets: []\nfleets: [{name: a, count: 1, route: nowhere}]", "fleets[0].route"),
    ("phone_prefix: 'abc'", "phone_prefix"),
    ("start: '2026-11-26T09:00:00'", "start"),
    ("surprise: 1", "surprise"),
    ("fleets: [{name: a, count: 1, route: r, colour: red}]", "colour"),
])
def test_scenario_errors_name_the_file_and_key(tmp_path: Path, patch: str, key: str) -> None:
    base = {
        "name": "x", "seed": 1, "start": "'2026-11-26T09:00:00+08:00'", "duration_min": 1,
        "routes": "{r: {points: [[30.0, 120.0], [30.1, 120.1]]}}", "fleets": "[{name: a, count: 1, route: r}]",
    }
    lines = [f"{k}: {v}" for k, v in base.items()]
    for line in patch.splitlines():
        k = line.split(":", 1)[0]
        lines = [x for x in lines if not x.startswith(k + ":")] + [line]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value) and key in str(info.value)
