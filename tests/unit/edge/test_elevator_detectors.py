"""Elevator fault detectors, driven step by step with an injected clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from edge.elevator.detectors import (
    AlarmButtonDetector,
    Detector,
    DetectorThresholds,
    DoorFaultDetector,
    DoorLockBypassDetector,
    EventChange,
    FloorPositionLostDetector,
    MovingWithDoorOpenDetector,
    OverspeedDetector,
    OvertravelDetector,
    PowerLossDetector,
    SafetyCircuitDetector,
    StoppedOutsideDoorZoneDetector,
    TrappedPassengerDetector,
    UnintendedMovementDetector,
    default_detectors,
)
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals

T = DetectorThresholds()
G = ElevatorGeometry(floors=12, floor_height_m=3.0, rated_speed_mps=1.75)
IDLE = ElevatorSignals(position_m=0.0, speed_mps=0.0, direction="stopped", door="closed", door_zone=True, floor=1,
                       occupancy=0, load_kg=0.0, power="mains", mode="normal", safety_circuit_ok=True)
CATALOGUE = {"trapped_passenger", "moving_with_door_open", "stopped_outside_door_zone", "overtravel_top",
             "overtravel_bottom", "overspeed", "power_lost", "door_fail_open", "door_fail_close",
             "safety_circuit_open", "floor_position_lost", "alarm_button", "unintended_movement"}


def sig(**kw: Any) -> ElevatorSignals:
    return dataclasses.replace(IDLE, **kw)


MOVING = sig(position_m=4.5, speed_mps=1.5, direction="up", door_zone=False, floor=2, occupancy=2)


def run(det: Detector, timeline: list[tuple[float, ElevatorSignals]], step: float = 0.1) -> list[EventChange]:
    """Feed each reading repeatedly every ``step`` s until the next entry's time (the last one once)."""
    out: list[EventChange] = []
    for (t, s), nxt in zip(timeline, [*timeline[1:], None], strict=True):
        end = nxt[0] if nxt else t + step / 2
        now = t
        while now < end - 1e-9:
            out.extend(det.update(s, now))
            now = round(now + step, 6)
    return out


def brief(changes: list[EventChange]) -> list[tuple[str, str, float]]:
    return [(c.type, c.state, round(c.at, 1)) for c in changes]


def test_every_detector_emits_only_catalogue_types() -> None:
    types = {t for d in default_detectors(G, T) for t in d.event_types}
    assert types == CATALOGUE
    wired = msgspec.structs.replace(G, door_locks_in_safety_circuit=True)
    assert {t for d in default_detectors(wired, T) for t in d.event_types} == CATALOGUE | {"door_lock_bypass_suspected"}


# ---------------------------------------------------------------- trapped passengers

def test_trapped_between_floors_after_threshold_then_released_when_door_opens() -> None:
    stuck = sig(position_m=4.5, door_zone=False, floor=2, occupancy=2)
    opening = dataclasses.replace(stuck, door="opening")
    changes = run(TrappedPassengerDetector(T), [(0, MOVING), (1, stuck), (20, opening)])
    assert brief(changes) == [("trapped_passenger", "start", 11.0), ("trapped_passenger", "end", 20.0)]
    assert changes[0].data["where"] == "between_floors" and changes[0].measure == 2.0
    assert changes[0].severity.value == "critical"


@pytest.mark.parametrize("case", [
    "empty car", "short stop", "door open",
])
def test_no_trapped_event_when_the_situation_is_normal(case: str) -> None:
    stuck = sig(position_m=4.5, door_zone=False, floor=2, occupancy=2)
    if case == "empty car":
        timeline = [(0.0, MOVING), (1.0, dataclasses.replace(stuck, occupancy=0)), (60.0, IDLE)]
    elif case == "short stop":
        timeline = [(0.0, MOVING), (1.0, stuck), (9.0, MOVING)]
    else:
        timeline = [(0.0, MOVING), (1.0, dataclasses.replace(stuck, door="open")), (60.0, IDLE)]
    assert run(TrappedPassengerDetector(T), timeline) == []


def test_trapped_at_floor_requires_a_run_and_a_shut_door() -> None:
    level = sig(position_m=6.0, floor=3, occupancy=1)
    changes = run(TrappedPassengerDetector(T), [(0, MOVING), (2, level), (40, dataclasses.replace(level, door="open"))])
    assert brief(changes) == [("trapped_passenger", "start", 32.0), ("trapped_passenger", "end", 40.0)]
    assert changes[0].data["where"] == "at_floor"
    # The agent starts while someone stands in a closed car at a floor: no run, no alarm.
    assert run(TrappedPassengerDetector(T), [(0, level), (100, level)]) == []
    # The door opened after arrival (passenger stayed inside, door closed again): not trapped.
    cycled = [(0, MOVING), (2, level), (3, dataclasses.replace(level, door="open")), (5, level), (100, level)]
    assert run(TrappedPassengerDetector(T), cycled) == []


def test_trapped_is_suppressed_in_inspection_mode() -> None:
    det = TrappedPassengerDetector(T)
    stuck = sig(position_m=4.5, door_zone=False, floor=2, occupancy=2)
    started = run(det, [(0, MOVING), (1, stuck), (12, stuck)])
    assert brief(started) == [("trapped_passenger", "start", 11.0)]
    ended = det.suppress(13.0)
    assert brief(ended) == [("trapped_passenger", "end", 13.0)] and ended[0].data["reason"] == "mode"
    assert TrappedPassengerDetector.suppressed_in >= {"inspection", "out_of_service"}


# ---------------------------------------------------------------- door and motion

def test_moving_with_door_open_but_not_during_pre_opening_in_the_door_zone() -> None:
    det = MovingWithDoorOpenDetector(T)
    open_run = dataclasses.replace(MOVING, door="open")
    changes = run(det, [(0, MOVING), (1, open_run), (3, MOVING), (5, MOVING)])
    assert brief(changes) == [("moving_with_door_open", "start", 1.3), ("moving_with_door_open", "end", 4.0)]
    assert changes[0].severity.value == "critical"
    leveling = sig(position_m=5.98, speed_mps=0.2, direction="up", door="opening", door_zone=True)
    assert run(MovingWithDoorOpenDetector(T), [(0, leveling), (5, leveling)]) == []
    fast_in_zone = dataclasses.replace(leveling, speed_mps=0.6)
    assert [c.state for c in run(MovingWithDoorOpenDetector(T), [(0, fast_in_zone), (2, fast_in_zone)])] == ["start"]


def test_stopped_outside_door_zone_after_five_seconds() -> None:
    stuck = sig(position_m=4.5, door_zone=False, floor=2)
    changes = run(StoppedOutsideDoorZoneDetector(T), [(0, MOVING), (1, stuck), (8, MOVING)])
    assert brief(changes) == [("stopped_outside_door_zone", "start", 6.0), ("stopped_outside_door_zone", "end", 8.0)]


def test_door_fail_open_after_arrival_with_passengers() -> None:
    level = sig(position_m=6.0, floor=3, occupancy=1)
    changes = run(DoorFaultDetector(T), [(0, MOVING), (2, level), (15, dataclasses.replace(level, door="opening"))])
    assert brief(changes) == [("door_fail_open", "start", 12.0), ("door_fail_open", "end", 15.0)]
    assert run(DoorFaultDetector(T), [(0, MOVING), (2, dataclasses.replace(level, occupancy=0)), (30, IDLE)]) == []


def test_door_fail_close_by_timeout() -> None:
    held = sig(door="open", occupancy=1)
    changes = run(DoorFaultDetector(T), [(0, IDLE), (1, held), (70, IDLE)])
    assert brief(changes) == [("door_fail_close", "start", 61.0), ("door_fail_close", "end", 70.0)]
    assert changes[0].data["cause"] == "timeout"


def test_door_fail_close_by_repeated_reopening() -> None:
    timeline: list[tuple[float, ElevatorSignals]] = [(0.0, IDLE)]
    t = 1.0
    for _ in range(5):
        timeline += [(t, sig(door="closing")), (t + 1, sig(door="opening")), (t + 2, sig(door="open"))]
        t += 3
    timeline.append((t, IDLE))
    changes = run(DoorFaultDetector(T), timeline)
    assert [(c.type, c.state) for c in changes] == [("door_fail_close", "start"), ("door_fail_close", "end")]
    assert changes[0].data["cause"] == "reopening" and changes[0].data["reopens"] == 5


def test_door_faults_suppressed_for_firefighters() -> None:
    assert "fire" in DoorFaultDetector.suppressed_in


# ---------------------------------------------------------------- speed, position, power, safety

def test_overspeed_with_hysteresis_and_peak() -> None:
    fast = dataclasses.replace(MOVING, speed_mps=2.1)
    faster = dataclasses.replace(MOVING, speed_mps=2.3)
    slowing = dataclasses.replace(MOVING, speed_mps=1.9)  # above the 105 % clear level
    changes = run(OverspeedDetector(G, T), [(0, MOVING), (1, fast), (2, faster), (3, slowing), (4, MOVING)])
    assert brief(changes) == [("overspeed", "start", 1.2), ("overspeed", "end", 4.0)]
    assert changes[1].data["peak_mps"] == 2.3 and changes[0].data["rated_mps"] == 1.75
    just_under = dataclasses.replace(MOVING, speed_mps=2.0)  # 114 % of rated
    assert run(OverspeedDetector(G, T), [(0, just_under), (10, just_under)]) == []
    blip = dataclasses.replace(MOVING, speed_mps=2.5)
    assert run(OverspeedDetector(G, T), [(0, MOVING), (1, blip), (1.1, MOVING), (3, MOVING)]) == []


@pytest.mark.parametrize(("position", "expected"), [
    (33.0, []), (33.14, []), (33.2, ["overtravel_top"]), (-0.1, []), (-0.2, ["overtravel_bottom"]),
])
def test_overtravel_limits(position: float, expected: list[str]) -> None:
    changes = run(OvertravelDetector(G, T), [(0, sig(position_m=16.0)), (1, sig(position_m=position)),
                                             (2, sig(position_m=16.0))])
    starts = [c.type for c in changes if c.state == "start"]
    assert starts == expected
    assert len(changes) == 2 * len(expected)


def test_power_lost_immediately_and_restored() -> None:
    changes = run(PowerLossDetector(T), [(0, IDLE), (1, sig(power="battery")), (5, sig(power="lost")), (9, IDLE)])
    assert brief(changes) == [("power_lost", "start", 1.0), ("power_lost", "end", 9.0)]


def test_safety_circuit_needs_half_a_second() -> None:
    det = SafetyCircuitDetector(T)
    assert run(det, [(0, IDLE), (1, sig(safety_circuit_ok=False)), (1.3, IDLE), (2, IDLE)]) == []
    changes = run(SafetyCircuitDetector(T), [(0, IDLE), (1, sig(safety_circuit_ok=False)), (3, IDLE)])
    assert brief(changes) == [("safety_circuit_open", "start", 1.5), ("safety_circuit_open", "end", 3.0)]


def test_floor_position_lost() -> None:
    changes = run(FloorPositionLostDetector(T), [(0, IDLE), (1, sig(floor=None)), (5, IDLE)])
    assert brief(changes) == [("floor_position_lost", "start", 3.0), ("floor_position_lost", "end", 5.0)]
    assert changes[0].severity.value == "warning"


def test_thresholds_are_settings() -> None:
    quick = DetectorThresholds(trapped_between_floors_s=2.0)
    stuck = sig(position_m=4.5, door_zone=False, floor=2, occupancy=1)
    changes = run(TrappedPassengerDetector(quick), [(0, MOVING), (1, stuck), (5, stuck)])
    assert brief(changes) == [("trapped_passenger", "start", 3.0)]


# ---------------------------------------------------------------- alarm button, UCM, door-lock bypass

def test_alarm_button_held_is_a_call_a_brush_is_not() -> None:
    pressed = sig(alarm_button=True, occupancy=1)
    assert run(AlarmButtonDetector(T), [(0, IDLE), (1, pressed), (1.3, IDLE), (20, IDLE)]) == []
    changes = run(AlarmButtonDetector(T), [(0, IDLE), (1, pressed), (4, IDLE), (30, IDLE)])
    assert brief(changes) == [("alarm_button", "start", 1.5), ("alarm_button", "end", 14.0)]
    assert changes[0].data["occupancy"] == 1


def test_alarm_button_tests_during_inspection_are_suppressed() -> None:
    assert "inspection" in AlarmButtonDetector.suppressed_in


def test_unintended_movement_from_the_landing_with_the_door_open() -> None:
    opening = sig(position_m=3.0, door="opening", floor=2)
    creeping = [(1 + i * 0.5, sig(position_m=3.0 + 0.05 * i, speed_mps=0.1, direction="up", door="open",
                                  door_zone=i < 3, floor=2)) for i in range(10)]
    changes = run(UnintendedMovementDetector(T), [(0, sig(position_m=3.0, floor=2)), (0.5, opening), *creeping,
                                                  (7, sig(position_m=3.45, floor=2, door="closed", door_zone=False))])
    assert [(c.type, c.state) for c in changes] == [("unintended_movement", "start"), ("unintended_movement", "end")]
    assert changes[0].severity.value == "critical" and changes[0].data["from_m"] == 3.0
    assert changes[0].data["moved_m"] > T.ucm_distance_m


def test_releveling_with_the_door_open_is_not_unintended_movement() -> None:
    relevel = [(1 + i * 0.2, sig(position_m=3.0 - 0.02 * (i % 4), speed_mps=0.05, door="open", floor=2))
               for i in range(20)]
    assert run(UnintendedMovementDetector(T), [(0, sig(position_m=3.0, floor=2, door="opening")), *relevel,
                                               (6, sig(position_m=3.0, floor=2))]) == []
    # A normal trip: door closed before the car leaves.
    assert run(UnintendedMovementDetector(T), [(0, sig(door="open")), (1, IDLE), (2, MOVING), (4, IDLE)]) == []


def test_door_lock_bypass_when_door_open_but_circuit_closed() -> None:
    bridged = sig(door="open", safety_circuit_ok=True)
    changes = run(DoorLockBypassDetector(T), [(0, IDLE), (1, bridged), (5, IDLE), (20, IDLE)])
    assert brief(changes) == [("door_lock_bypass_suspected", "start", 3.0), ("door_lock_bypass_suspected", "end", 10.0)]
    honest = sig(door="open", safety_circuit_ok=False)
    assert run(DoorLockBypassDetector(T), [(0, IDLE), (1, honest), (9, IDLE)]) == []
