"""Gateway -> engine: a simulated lower platform's frames through ``Jt809Session`` into the unchanged vehicle pack."""

from __future__ import annotations

from broker.contracts import Transition, decode_device_message
from broker.registry import DeviceRegistry
from edge.jt809.codec import encode_frame
from edge.jt809.directory import LowerPlatform, StaticPlatforms, StaticVehicles
from edge.jt809.messages import (
    DataType,
    LoginRequest,
    MsgId,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
    build_warn,
)
from edge.jt809.session import Jt809Platform
from rules.engine import RuleEngine
from rules.loader import PACKS_DIR, load_rules
from simulators.jt809_platform import LowerPlatformSim, drive

SPEC = LowerPlatformSim(vehicles=3, duration_s=3600, seed=5, outage_at_s=1800, outage_s=600, emergency_at_s=300,
                        emergency_s=120, overspeed_at_s=900, overspeed_s=300)


def test_vehicle_pack_fires_on_809_positions_and_alarms() -> None:
    spec = SPEC
    registry = DeviceRegistry.from_data({"devices": spec.registry_entries()})
    vehicles = StaticVehicles.of({(spec.plate(i), spec.colour): spec.device_id(i) for i in range(spec.vehicles)})
    platform = Jt809Platform(StaticPlatforms({spec.access_code: LowerPlatform(spec.access_code, spec.user_id,
                                                                              spec.password)}), vehicles)
    session = platform.new_session("10.0.0.1:1")
    serial = 0

    def frame(msg_id: int, body: bytes) -> bytes:
        nonlocal serial
        serial += 1
        return encode_frame(msg_id, serial, spec.access_code, body)

    assert session.feed(frame(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(spec.user_id, spec.password, "", 0))),
                        0.0).replies
    engine = RuleEngine(load_rules([PACKS_DIR]).rules, registry)
    plan = drive(spec)
    transitions: list[Transition] = []
    stored: list[tuple[int, object]] = []
    start = spec.start.timestamp()
    warns = list(plan.warns)
    for r in plan.reports:
        at = start + r.t + 2  # arrives two seconds after the fix
        if not r.live:
            stored.append((r.vehicle, r.gnss))
            continue
        wires = [frame(MsgId.UP_EXG_MSG, build_envelope(spec.plate(r.vehicle), spec.colour,
                                                        DataType.UP_EXG_MSG_REAL_LOCATION, build_gnss(r.gnss)))]
        if stored:  # the first live position after the outage: the re-sent batches go first
            for v in range(spec.vehicles):
                mine = [g for vv, g in stored if vv == v]
                for i in range(0, len(mine), 5):
                    wires.insert(-1, frame(MsgId.UP_EXG_MSG, build_envelope(
                        spec.plate(v), spec.colour, DataType.UP_EXG_MSG_HISTORY_LOCATION,
                        build_history(mine[i:i + 5]))))  # type: ignore[arg-type]
            stored.clear()
        while warns and warns[0].t <= r.t:
            w = warns.pop(0)
            wires.append(frame(MsgId.UP_WARN_MSG, build_envelope(spec.plate(w.vehicle), spec.colour,
                                                                 DataType.UP_WARN_MSG_ADPT_INFO, build_warn(w.info))))
        for wire in wires:
            out = session.feed(wire, at)
            assert not out.rejections
            messages = [decode_device_message(p.topic, p.payload, received_at=at) for p in out.publications]
            transitions += engine.process(messages, at)
        transitions += engine.tick(at)
    fired = {(t.device_id, t.rule) for t in transitions if t.status == "firing"}
    assert (spec.device_id(0), "vehicle_emergency_alarm") in fired
    assert (spec.device_id(1), "vehicle_terminal_overspeed_alarm") in fired
    assert not any(d == spec.device_id(2) and "alarm" in rule for d, rule in fired), fired
    assert engine.counters.late == 0 and engine.counters.errors == 0  # re-sent history does not upset the engine
    resolved = {(t.device_id, t.rule) for t in transitions if t.status == "resolved"}
    assert (spec.device_id(0), "vehicle_emergency_alarm") in resolved
