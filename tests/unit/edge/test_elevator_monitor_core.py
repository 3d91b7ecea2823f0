"""ElevatorMonitor: telemetry cadence, contract messages, event ids, rejected readings."""

from __future__ import annotations

import dataclasses
import math

from broker.contracts import DeviceEvent, Telemetry, decode_device_message, encode
from edge.elevator.agent import ElevatorMonitor
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals

IDLE = ElevatorSignals(position_m=0.0, speed_mps=0.0, direction="stopped", door="closed", door_zone=True, floor=1,
                       occupancy=0, load_kg=0.0, power="mains", mode="normal", safety_circuit_ok=True)
T0 = 1_800_000_000.0
CATALOGUE_METRICS = {"speed_mps", "position_m", "floor", "direction", "door", "door_zone", "occupancy", "load_kg",
                     "power", "mode", "safety_circuit_ok", "alarm_button"}


def test_telemetry_at_interval_and_at_once_on_discrete_change() -> None:
    mon = ElevatorMonitor("e1", telemetry_interval_s=1.0, site="site-a")
    sent = []
    for i in range(25):  # 2.5 s at 10 Hz, door starts opening at 1.55 s
        s = IDLE if i < 16 else dataclasses.replace(IDLE, door="opening")
        out = mon.observe(s, T0 + i * 0.1)
        if out.telemetry is not None:
            sent.append((round(i * 0.1, 1), out.telemetry))
    assert [t for t, _ in sent] == [0.0, 1.0, 1.6]
    assert [m.seq for _, m in sent] == [1, 2, 3]
    first = sent[0][1]
    assert set(first.metrics) == CATALOGUE_METRICS and first.site == "site-a"
    assert first.ts.timestamp() == T0
    assert sent[2][1].metrics["door"] == "opening"


def test_floor_metric_left_out_when_position_is_lost() -> None:
    out = ElevatorMonitor("e1").observe(dataclasses.replace(IDLE, floor=None), T0)
    assert out.telemetry is not None and "floor" not in out.telemetry.metrics


def test_messages_pass_the_platform_validation() -> None:
    mon = ElevatorMonitor("elev-7", ElevatorGeometry(rated_speed_mps=1.0))
    outs = [mon.observe(dataclasses.replace(IDLE, speed_mps=0.5 + 0.1 * i, direction="up", door_zone=False,
                                            position_m=1.0 + i * 0.1), T0 + i * 0.1) for i in range(12)]
    telemetry = [o.telemetry for o in outs if o.telemetry]
    events = [e for o in outs for e in o.events]
    assert events and telemetry
    for t in telemetry:
        msg = decode_device_message("vigil/v1/elevator/elev-7/telemetry", encode(t))
        assert isinstance(msg.payload, Telemetry)
    for e in events:
        msg = decode_device_message("vigil/v1/elevator/elev-7/event", encode(e))
        assert isinstance(msg.payload, DeviceEvent)


def test_event_start_and_end_share_an_id_and_end_carries_duration() -> None:
    mon = ElevatorMonitor("e1")
    start = mon.observe(dataclasses.replace(IDLE, power="battery"), T0 + 5)
    assert [(e.type, e.state) for e in start.events] == [("power_lost", "start")]
    assert start.telemetry is not None  # an event forces a telemetry message alongside
    assert mon.active_events == {"power_lost": start.events[0].event_id}
    assert mon.observe(dataclasses.replace(IDLE, power="battery"), T0 + 6).events == []
    end = mon.observe(IDLE, T0 + 47.5)
    assert [(e.type, e.state) for e in end.events] == [("power_lost", "end")]
    assert end.events[0].event_id == start.events[0].event_id == f"e1-power_lost-{int((T0 + 5) * 1000)}"
    assert end.events[0].data["duration_s"] == 42.5
    assert start.events[0].severity is not None and mon.active_events == {}
    assert mon.events_started == 1


def test_mode_change_ends_suppressed_events() -> None:
    mon = ElevatorMonitor("e1")
    stuck = dataclasses.replace(IDLE, position_m=4.5, door_zone=False, occupancy=1)
    mon.observe(dataclasses.replace(stuck, speed_mps=1.0, direction="up"), T0)
    started = [e.type for i in range(1, 120) for e in mon.observe(stuck, T0 + i * 0.1).events]
    assert started == ["stopped_outside_door_zone", "trapped_passenger"]
    ended = mon.observe(dataclasses.replace(stuck, mode="inspection"), T0 + 13)
    assert sorted((e.type, e.state) for e in ended.events) == [
        ("stopped_outside_door_zone", "end"), ("trapped_passenger", "end")]
    assert all(e.data.get("reason") == "mode" for e in ended.events)


def test_implausible_readings_are_counted_and_skipped() -> None:
    mon = ElevatorMonitor("e1")
    bad = [
        dataclasses.replace(IDLE, door="ajar"),
        dataclasses.replace(IDLE, direction="sideways"),
        dataclasses.replace(IDLE, power="solar"),
        dataclasses.replace(IDLE, mode="party"),
        dataclasses.replace(IDLE, speed_mps=math.nan),
        dataclasses.replace(IDLE, speed_mps=-1.0),
        dataclasses.replace(IDLE, occupancy=-2),
    ]
    results = [mon.observe(s, T0) for s in bad]
    assert all(r.telemetry is None and r.events == [] for r in results)
    assert [r.rejected for r in results] == ["bad_door_state", "bad_direction", "bad_power_source", "bad_mode",
                                             "not_finite", "negative_speed", "negative_load"]
    assert sum(mon.rejections.values()) == 7
    assert mon.observe(IDLE, T0).telemetry is not None  # good readings still flow


def test_close_all_ends_every_open_event_with_a_reason() -> None:
    mon = ElevatorMonitor("e1")
    started = mon.observe(dataclasses.replace(IDLE, power="battery", safety_circuit_ok=False), T0)
    started_events = started.events + mon.observe(dataclasses.replace(IDLE, power="battery",
                                                                      safety_circuit_ok=False), T0 + 1).events
    assert sorted(e.type for e in started_events) == ["power_lost", "safety_circuit_open"]
    ended = mon.close_all(T0 + 10, "simulation_end")
    assert sorted((e.type, e.state, e.data["reason"]) for e in ended) == [
        ("power_lost", "end", "simulation_end"), ("safety_circuit_open", "end", "simulation_end")]
    by_type = {e.type: e for e in started_events}
    for e in ended:
        assert e.event_id == by_type[e.type].event_id and e.severity == by_type[e.type].severity
    assert mon.active_events == {} and mon.close_all(T0 + 11, "again") == []
