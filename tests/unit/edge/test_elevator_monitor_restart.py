"""ElevatorMonitor across an agent restart: recorded open events end (same id) or go on, never start twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from broker.contracts import DeviceEvent
from edge.elevator.agent import ElevatorMonitor
from edge.elevator.signals import ElevatorSignals
from edge.runtime.outbox import RESTART_REASON, MemoryOpenEvents, OpenEvent, OpenEventFile

IDLE = ElevatorSignals(position_m=0.0, speed_mps=0.0, direction="stopped", door="closed", door_zone=True, floor=1,
                       occupancy=0, load_kg=0.0, power="mains", mode="normal", safety_circuit_ok=True)
STUCK = dataclasses.replace(IDLE, position_m=4.4, door_zone=False, floor=2, occupancy=2)
T0 = 1_800_000_000.0


def run(mon: ElevatorMonitor, s: ElevatorSignals, start: float, seconds: float) -> list[DeviceEvent]:
    return [e for i in range(int(seconds * 10)) for e in mon.observe(s, start + i / 10).events]


def test_events_that_ended_while_the_agent_was_down_end_on_the_first_reading_under_their_ids(tmp_path: Path) -> None:
    store = OpenEventFile(tmp_path / "open-events.json")
    before = ElevatorMonitor("e1", open_events=store)
    started = run(before, STUCK, T0, 12)
    assert {e.type for e in started} == {"trapped_passenger", "stopped_outside_door_zone"}
    assert {e.type for e in store.load()} == {"trapped_passenger", "stopped_outside_door_zone"}
    # The process dies; meanwhile the car is released and levels at a floor, empty.
    after = ElevatorMonitor("e1", open_events=OpenEventFile(tmp_path / "open-events.json"))
    assert after.active_events == {e.type: e.event_id for e in started}
    ended = after.observe(IDLE, T0 + 300).events
    assert sorted((e.type, e.state, e.event_id) for e in ended) == sorted((e.type, "end", e.event_id) for e in started)
    assert all(e.data["reason"] == RESTART_REASON and e.data["after_restart"] for e in ended)
    assert ended[0].data["duration_s"] > 280
    assert store.load() == [] and after.active_events == {}
    assert run(after, IDLE, T0 + 301, 5) == []


def test_events_still_going_on_continue_under_their_ids_and_end_live() -> None:
    store = MemoryOpenEvents()
    started = run(ElevatorMonitor("e1", open_events=store), STUCK, T0, 12)
    after = ElevatorMonitor("e1", open_events=store)
    assert run(after, STUCK, T0 + 60, 30) == []  # still trapped: no second start, nothing ends
    ended = run(after, dataclasses.replace(STUCK, door="opening"), T0 + 90, 1)
    trapped = next(e for e in started if e.type == "trapped_passenger")
    [end] = [e for e in ended if e.type == "trapped_passenger"]
    assert (end.state, end.event_id, end.data.get("reason")) == ("end", trapped.event_id, None)
    assert end.data["after_restart"] is True
    assert [e.type for e in store.load()] == ["stopped_outside_door_zone"]


def test_a_recorded_event_no_detector_knows_ends_on_the_first_reading() -> None:
    store = MemoryOpenEvents()
    store.save([OpenEvent("e1-retired_check-1", "retired_check", T0, severity="warning")])
    mon = ElevatorMonitor("e1", open_events=store)
    [end] = mon.observe(IDLE, T0 + 10).events
    assert (end.type, end.state, end.event_id, end.severity) == ("retired_check", "end", "e1-retired_check-1",
                                                                 "warning")
    assert end.data["reason"] == RESTART_REASON and store.load() == []


def test_without_a_store_nothing_is_kept_and_an_unreadable_file_is_no_events(tmp_path: Path) -> None:
    run(ElevatorMonitor("e1"), STUCK, T0, 12)
    assert ElevatorMonitor("e1").active_events == {}
    (tmp_path / "open-events.json").write_text("{not json")
    assert ElevatorMonitor("e1", open_events=OpenEventFile(tmp_path / "open-events.json")).active_events == {}


def test_a_store_that_cannot_be_written_costs_persistence_not_events(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    mon = ElevatorMonitor("e1", open_events=OpenEventFile(blocked / "open-events.json"))  # parent is a file
    started = mon.observe(dataclasses.replace(IDLE, power="battery"), T0).events
    assert [e.state for e in started] == ["start"] and mon.persist_failures == 1


def test_a_trapping_taken_over_ends_when_the_car_is_found_running_again() -> None:
    store = MemoryOpenEvents()
    started = run(ElevatorMonitor("e1", open_events=store), STUCK, T0, 12)
    after = ElevatorMonitor("e1", open_events=store)
    running = dataclasses.replace(STUCK, speed_mps=1.0, direction="down", occupancy=4)
    ended = after.observe(running, T0 + 400).events
    trapped = next(e for e in started if e.type == "trapped_passenger")
    assert [(e.type, e.event_id, e.data["reason"]) for e in ended if e.type == "trapped_passenger"] == [
        ("trapped_passenger", trapped.event_id, RESTART_REASON)]


def test_a_trapping_still_stuck_at_the_first_reading_is_watched_live_again() -> None:
    store = MemoryOpenEvents()
    run(ElevatorMonitor("e1", open_events=store), STUCK, T0, 12)
    after = ElevatorMonitor("e1", open_events=store)
    assert run(after, STUCK, T0 + 60, 1) == []
    moved = dataclasses.replace(STUCK, speed_mps=0.3, direction="down")  # rescue moves the car, door shut
    assert [e for e in run(after, moved, T0 + 61, 2) if e.type == "trapped_passenger"] == []
    assert "trapped_passenger" in after.active_events
