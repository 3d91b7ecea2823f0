"""The elevator simulator: physics, determinism, each scenario's faults seen by the edge monitor, the fleet."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.contracts import DeviceEvent, Telemetry, decode_device_message
from edge.elevator.agent import ElevatorMonitor
from simulators.elevator import (
    ElevatorScenario,
    ElevatorSimulation,
    ElevatorSpec,
    FaultSpec,
    FaultType,
    ScenarioError,
    load_scenario,
    scenario_names,
)
from simulators.elevator_box import SimulatedBoxDriver, signals_from_car
from simulators.elevator_fleet import ElevatorFleet, FleetFault

T0 = 1_800_000_000.0


def test_a_trip_respects_rated_speed_acceleration_and_levels_at_the_landing() -> None:
    spec = ElevatorSpec(floors=10, floor_height_m=3.0, rated_speed_mps=1.75, accel_mps2=0.8)
    sim = ElevatorSimulation(spec, passengers_per_min=0)
    sim.call(1, 8)
    states = [sim.step(0.05) for _ in range(1200)]
    speeds = [s.speed_mps for s in states]
    assert max(speeds) == pytest.approx(1.75, abs=1e-6)
    pairs = list(itertools.pairwise(states))
    accels = [abs(b.velocity_mps - a.velocity_mps) / 0.05 for a, b in pairs if b.speed_mps > 0]
    assert max(accels) <= 0.8 * 1.2  # service acceleration (the sampled braking curve overshoots slightly)
    stops = [a.speed_mps for a, b in pairs if a.speed_mps > 0 and b.speed_mps == 0]
    assert stops and max(stops) <= 0.15  # the car stops from leveling speed, not at full speed
    doors = [s.door for s in states]
    seq = [d for i, d in enumerate(doors) if i == 0 or doors[i - 1] != d]
    assert seq[:5] == ["opening", "open", "closing", "closed", "opening"]  # board at 1, travel, open at 8
    arrived = next(s for s in states if s.floor == 8 and s.speed_mps == 0 and s.door == "opening")
    assert arrived.position_m == pytest.approx(21.0, abs=0.003) and arrived.door_zone
    assert sim.passengers_served == 1
    moving = [s for s in states if s.speed_mps > 0.01]
    assert all(s.door == "closed" for s in moving)
    assert {s.direction for s in moving} == {"up"}


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not() -> None:
    def trace(seed: int) -> list[tuple[float, str, int]]:
        sim = ElevatorSimulation(ElevatorSpec(), seed=seed, passengers_per_min=6)
        return [(round(s.position_m, 6), s.door, s.occupancy) for s in (sim.step(0.1) for _ in range(3000))]

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_calls_outside_the_building_are_refused() -> None:
    sim = ElevatorSimulation(ElevatorSpec(floors=5))
    with pytest.raises(ValueError):
        sim.call(1, 6)
    with pytest.raises(ValueError):
        sim.call(3, 3)


@pytest.mark.parametrize("name", scenario_names())
def test_each_bundled_scenario_raises_its_expected_events(name: str) -> None:
    scenario = load_scenario(name)
    driver = SimulatedBoxDriver.from_scenario(scenario)
    monitor = ElevatorMonitor("e1", driver.geometry)
    sim = driver.simulation
    events: list[DeviceEvent] = []
    while sim.t < scenario.duration_s:
        car = sim.step(0.1)
        events += monitor.observe(signals_from_car(car), T0 + car.t).events
    started = {e.type for e in events if e.state == "start"}
    assert set(scenario.expect_events) <= started
    if not scenario.expect_events:
        assert events == [] and sim.passengers_served > 0
    # Every event that started also ended by the end of the scenario (the faults clear).
    open_ids = {e.event_id for e in events if e.state == "start"} - {e.event_id for e in events if e.state == "end"}
    assert open_ids == set()


def test_overspeed_fault_reaches_its_factor() -> None:
    spec = ElevatorSpec(floors=20, rated_speed_mps=2.0, accel_mps2=1.0)
    sim = ElevatorSimulation(spec, passengers_per_min=0, faults=[FaultSpec(type=FaultType.OVERSPEED, at_s=1, factor=1.3)])
    top = max(sim.step(0.1).speed_mps for _ in range(600))
    assert top == pytest.approx(2.6, abs=0.01)


def test_power_loss_stops_the_car_and_reports_battery() -> None:
    sim = ElevatorSimulation(ElevatorSpec(), passengers_per_min=0,
                             faults=[FaultSpec(type=FaultType.POWER_LOSS, at_s=4, duration_s=10)])
    sim.call(1, 12)
    states = [sim.step(0.1) for _ in range(200)]
    during = [s for s in states if 5 <= s.t <= 14]
    assert all(s.power == "battery" for s in during)
    assert all(s.speed_mps == 0 for s in during if s.t > 5)
    assert states[-1].power == "mains" and any(s.speed_mps > 0 for s in states if s.t > 14.5)


def test_floor_position_lost_and_safety_circuit_faults() -> None:
    sim = ElevatorSimulation(ElevatorSpec(), passengers_per_min=0, faults=[
        FaultSpec(type=FaultType.FLOOR_POSITION_LOST, at_s=1, duration_s=3),
        FaultSpec(type=FaultType.SAFETY_CIRCUIT_OPEN, at_s=2, duration_s=1)])
    states = {round(s.t, 1): s for s in (sim.step(0.1) for _ in range(60))}
    assert states[0.5].floor == 1 and states[2.0].floor is None and states[5.0].floor == 1
    assert states[2.5].safety_circuit_ok is False and states[3.5].safety_circuit_ok is True


def test_scenario_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no elevator scenario"):
        load_scenario("no_such_scenario")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfaults:\n  - {type: gremlins, at_s: 1}\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml.*faults\[0\]\.type"):
        load_scenario(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nelevator: {floors: 5, lifts: 2}\n")
    with pytest.raises(ScenarioError, match="lifts"):
        load_scenario(unknown)
    assert isinstance(load_scenario(load_scenario("normal").name), ElevatorScenario)


def test_fleet_messages_are_valid_contract_telemetry_with_per_device_seq() -> None:
    fleet = ElevatorFleet(30, seed=3)
    ts = datetime.fromtimestamp(T0, UTC)
    for tick in range(3):
        for i in range(30):
            msgs = fleet.messages(i, 0.1, T0 + tick * 0.1, ts)
            assert len(msgs) == 1
            topic, payload, event_type = msgs[0]
            assert event_type is None
            decoded = decode_device_message(topic, payload)
            assert isinstance(decoded.payload, Telemetry)
            assert decoded.device_id == f"sim-elev-{i + 1:05d}"
            assert decoded.payload.seq == tick + 1 and decoded.payload.ts == ts


def test_fleet_fault_placement_is_deterministic_and_detected() -> None:
    a = ElevatorFleet(200, seed=9, fault_fraction=0.1, duration_s=120)
    b = ElevatorFleet(200, seed=9, fault_fraction=0.1, duration_s=120)
    assert a.faulted == b.faulted and len(a.faulted) == 20
    explicit = ElevatorFleet(5, seed=1, detect=True, faults=[
        FleetFault(FaultSpec(type=FaultType.POWER_LOSS, at_s=1.0, duration_s=5.0), device=2)])
    assert explicit.faulted == [2]
    events = []
    for tick in range(100):
        now = T0 + tick * 0.1
        for i in range(5):
            events += [(i, t) for _, _, t in explicit.messages(i, 0.1, now, datetime.fromtimestamp(now, UTC)) if t]
    assert events == [(2, "power_lost"), (2, "power_lost")]  # start and end, only on elevator 2
    with pytest.raises(ValueError):
        ElevatorFleet(5, faults=[FleetFault(FaultSpec(type=FaultType.POWER_LOSS, at_s=1), device=5)])


def test_fault_fraction_only_hands_out_faults_the_run_is_long_enough_to_show() -> None:
    short = ElevatorFleet(400, seed=3, fault_fraction=1.0, duration_s=120)
    kinds = {f.spec.type for m in short.members for f in m.sim._faults}
    assert FaultType.DOOR_STUCK_OPEN not in kinds and len(kinds) >= 3
    long = ElevatorFleet(400, seed=3, fault_fraction=1.0, duration_s=600)
    stuck = [f.spec for m in long.members for f in m.sim._faults if f.spec.type is FaultType.DOOR_STUCK_OPEN]
    assert stuck and all(f.duration_s >= 75 for f in stuck)


def test_fleet_ends_events_still_open_when_the_run_stops() -> None:
    fleet = ElevatorFleet(3, seed=1, detect=True, faults=[
        FleetFault(FaultSpec(type=FaultType.POWER_LOSS, at_s=0.5, duration_s=600), device=1)])
    for tick in range(20):
        now = T0 + tick * 0.1
        for i in range(3):
            fleet.messages(i, 0.1, now, datetime.fromtimestamp(now, UTC))
    closing = fleet.closing_events(T0 + 2)
    assert [(i, t) for i, _, _, t in closing] == [(1, "power_lost")]
    event = decode_device_message(closing[0][1], closing[0][2]).payload
    assert isinstance(event, DeviceEvent) and event.state == "end" and event.data["reason"] == "simulation_end"
    assert fleet.closing_events(T0 + 3) == []


def test_large_steps_skip_idle_time_but_not_arrivals_or_faults() -> None:
    sim = ElevatorSimulation(ElevatorSpec(), seed=2, passengers_per_min=2,
                             faults=[FaultSpec(type=FaultType.POWER_LOSS, at_s=500, duration_s=100)])
    assert sim.step(520).power == "battery"  # armed on time inside one long step
    assert sim.passengers_served > 0  # arrivals inside the step were served
    assert sim.t == pytest.approx(520)
    idle = ElevatorSimulation(ElevatorSpec(), passengers_per_min=0)
    state = idle.step(3600)
    assert state.t == pytest.approx(3600) and state.speed_mps == 0 and state.door == "closed"
