"""The simulated monitoring box and the demo's box fleet: edge's driver interface, faults renewed per cycle."""

from __future__ import annotations

import pytest

from broker.contracts import DeviceEvent
from edge.elevator.agent import ElevatorMonitor
from edge.elevator.driver import ElevatorBoxDriver
from simulators.elevator import ElevatorSimulation, ElevatorSpec, FaultSpec, FaultType, load_scenario
from simulators.elevator_box import SimulatedBoxDriver, build_parser
from simulators.elevator_fleet import ElevatorFleet, SimulatedBoxFleet, plan_faults

T0 = 1_800_000_000.0


async def test_simulated_driver_follows_its_clock() -> None:
    now = [100.0]
    driver: ElevatorBoxDriver = SimulatedBoxDriver.from_scenario("normal", time_scale=2.0, clock=lambda: now[0])
    assert isinstance(driver, SimulatedBoxDriver)
    await driver.open()
    now[0] = 103.0
    await driver.read()
    assert driver.simulation.t == pytest.approx(6.0)
    assert driver.geometry.floors == load_scenario("normal").elevator.floors
    assert driver.scenario is not None and driver.scenario.name == load_scenario("normal").name
    await driver.close()


def test_renewed_faults_count_from_now_and_an_acting_fault_runs_its_course() -> None:
    sim = ElevatorSimulation(ElevatorSpec(), passengers_per_min=0, faults=[
        FaultSpec(type=FaultType.POWER_LOSS, at_s=1, duration_s=20),
        FaultSpec(type=FaultType.SAFETY_CIRCUIT_OPEN, at_s=50, duration_s=1)])
    sim.step(5)
    assert sim.active_faults == [FaultType.POWER_LOSS]
    sim.renew_faults([FaultSpec(type=FaultType.FLOOR_POSITION_LOST, at_s=30, duration_s=5)])
    states = {round(s.t): s for s in (sim.step(1.0) for _ in range(60))}
    assert states[10].power == "battery" and states[25].power == "mains"  # the acting power loss ended on time
    assert states[34].floor is not None and states[36].floor is None and states[41].floor is not None  # 5 + 30
    assert all(s.safety_circuit_ok for s in states.values())  # the pending fault was replaced, never acted


def test_box_fleet_starts_with_the_fleet_faults_and_renews_them_deterministically() -> None:
    ids = [f"elev-{i:05d}" for i in range(1, 13)]
    boxes = SimulatedBoxFleet(ids, seed=0, fault_fraction=0.5, cycle_s=120)
    fleet = ElevatorFleet(12, seed=0, fault_fraction=0.5, duration_s=120)
    assert boxes.faulted == [ids[i] for i in fleet.faulted] and len(boxes.faulted) == 6
    specs = [[f.spec for f in m.sim._faults] for m in fleet.members]
    assert [[f.spec for f in b.simulation._faults] for b in boxes.boxes.values()] == specs
    again = SimulatedBoxFleet(ids, seed=0, fault_fraction=0.5, cycle_s=120)
    assert boxes.renew_faults() == again.renew_faults() and boxes.cycle == 1
    planned = plan_faults(12, seed=1, fault_fraction=0.5, duration_s=120)  # cycle 1: seed + 1
    assert boxes.faulted == [ids[i] for i in sorted(planned)]
    assert [[f.spec for f in b.simulation._faults] for b in boxes.boxes.values()] == [
        planned.get(i, []) for i in range(12)]  # the cars have not moved yet: at_s counts from t = 0
    with pytest.raises(ValueError):
        SimulatedBoxFleet([], cycle_s=120)


async def test_box_fleet_faults_are_detected_by_the_edge_monitor_in_every_cycle() -> None:
    now = [0.0]
    ids = ["e1", "e2", "e3", "e4"]
    boxes = SimulatedBoxFleet(ids, seed=3, fault_fraction=1.0, cycle_s=120, clock=lambda: now[0])
    monitors = {i: ElevatorMonitor(i, boxes.boxes[i].geometry) for i in ids}
    started: list[tuple[int, str, str]] = []
    for box in boxes.boxes.values():
        await box.open()
    for cycle in range(2):
        if cycle:
            boxes.renew_faults()
        for _ in range(1200):  # one cycle at 10 Hz
            now[0] += 0.1
            for i in ids:
                out = monitors[i].observe(await boxes.boxes[i].read(), T0 + now[0])
                started += [(cycle, i, e.type) for e in out.events if isinstance(e, DeviceEvent) and e.state == "start"]
    assert {c for c, _, _ in started} == {0, 1}, started  # the renewed faults act and are detected too
    assert len({i for _, i, _ in started}) >= 3


def test_the_cli_takes_the_agent_options_and_the_old_simulate_flag() -> None:
    args = build_parser().parse_args(["--device-id", "e1", "--simulate", "overspeed", "--time-scale", "5",
                                      "--sample-hz", "20", "--floors", "9"])
    assert (args.scenario, args.time_scale, args.sample_hz, args.floors) == ("overspeed", 5.0, 20.0, 9)
    assert build_parser().parse_args(["--device-id", "e1"]).scenario == "normal"
