"""Seam defects the scenarios found, pinned at the unit level."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerting.config import Deadlines
from alerting.lifecycle import apply_transition
from broker.contracts import AlertStatus, Channel, DeviceMessage, DeviceStatus, Kind, Telemetry
from broker.registry import DeviceRegistry
from rules.engine import RuleEngine
from rules.loader import PACKS_DIR, load_rules

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def _msg(payload: Telemetry | DeviceStatus, at: float) -> DeviceMessage:
    channel = Channel.TELEMETRY if isinstance(payload, Telemetry) else Channel.STATUS
    return DeviceMessage(Kind.ELEVATOR, "el-1", channel, payload, T0.timestamp() + at)


def test_a_store_and_forward_backlog_resolves_an_offline_alert_that_alerting_can_close() -> None:
    # Found by rules/scenarios/elevator/offline_link_down_fires.yaml: the tick fired "offline" on
    # estimated device time; the backlog delivered after the reconnect carries older timestamps and
    # resolved the alert with one of them, which alerting dropped as stale: the alert never closed.
    rules = load_rules([PACKS_DIR / "elevator.yaml"]).rules
    engine = RuleEngine(rules, DeviceRegistry.from_data({"devices": [{"id": "el-1", "kind": "elevator",
                                                                   "attributes": {"rated_speed_mps": 1.75}}]}))
    tel = {"speed_mps": 0.0, "door": "closed", "door_zone": True, "occupancy": 0, "power": "mains",
           "mode": "normal", "safety_circuit_ok": True, "position_m": 0.0}
    base = T0.timestamp()
    out = engine.process([_msg(Telemetry(ts=T0, metrics=tel), 0.0)], base)
    out += engine.process([_msg(DeviceStatus(online=False, reason="connection_lost"), 300.0)], base + 300)
    for s in range(301, 400):
        out += engine.tick(base + s)
    fired = [t for t in out if t.rule == "elevator_offline"]
    assert [t.status for t in fired] == ["firing"]
    back = engine.process([_msg(DeviceStatus(ts=T0 + timedelta(seconds=1200), online=True), 1200.0)], base + 1200)
    back += engine.process([_msg(Telemetry(ts=T0 + timedelta(seconds=301), metrics=tel), 1200.0)], base + 1200)
    resolved = [t for t in back if t.rule == "elevator_offline"]
    assert [t.status for t in resolved] == ["resolved"]
    assert resolved[0].ts >= fired[0].ts
    first = apply_transition(None, None, fired[0], base + 360, new_id="a", deadlines=Deadlines(), reopen_window_s=300)
    assert first.record is not None
    closed = apply_transition(first.record, None, resolved[0], base + 1200, new_id="b", deadlines=Deadlines(),
                              reopen_window_s=300)
    assert closed.change == "resolved" and closed.record is not None
    assert closed.record.status is AlertStatus.RESOLVED


def test_a_last_will_is_judged_on_the_device_clock_so_a_slow_box_comes_back_online() -> None:
    # Found by rules/scenarios/elevator/clock_skew_quiet.yaml: the will (no timestamp) was stamped
    # with the receive time; the box's own "online" status, stamped by its clock running 3 min slow,
    # then looked older than the will and was ignored: offline alert, and pending "for" timers
    # jumped 3 minutes ahead (a false suspected-trapped alert).
    rules = load_rules([PACKS_DIR / "elevator.yaml"]).rules
    engine = RuleEngine(rules, DeviceRegistry.from_data({"devices": [{"id": "el-1", "kind": "elevator",
                                                                   "attributes": {"rated_speed_mps": 1.75}}]}))
    tel = {"speed_mps": 0.0, "door": "closed", "door_zone": True, "occupancy": 2, "power": "mains",
           "mode": "normal", "safety_circuit_ok": True, "position_m": 0.0}
    base, skew = T0.timestamp(), -180.0
    out = []
    for s in range(0, 240):
        now = base + s
        if s == 10:
            out += engine.process([_msg(DeviceStatus(online=False, reason="connection_lost"), s)], now)
        elif s == 30:
            out += engine.process([_msg(DeviceStatus(ts=T0 + timedelta(seconds=s + skew), online=True), s)], now)
        elif s % 5 == 0 and not 10 <= s < 30:
            moving = {**tel, "speed_mps": 1.0} if s % 60 < 40 else tel  # short stops with riders: normal service
            out += engine.process([_msg(Telemetry(ts=T0 + timedelta(seconds=s + skew), metrics=moving), s)], now)
        out += engine.tick(now)
    assert [(t.rule, t.status) for t in out] == []


def test_a_new_start_of_the_same_event_type_supersedes_an_orphaned_one() -> None:
    # Found by rules/scenarios/elevator/agent_restart_while_trapped_fires.yaml: an agent restarted
    # mid-event opens a new event id; the old id is never ended, and the alert stayed open for good.
    from broker.contracts import DeviceEvent

    rules = [r for r in load_rules([PACKS_DIR / "elevator.yaml"]).rules if r.name == "elevator_trapped_passenger"]
    engine = RuleEngine(rules, DeviceRegistry.from_data({"devices": [{"id": "el-1", "kind": "elevator",
                                                                   "attributes": {"rated_speed_mps": 1.75}}]}))
    base = T0.timestamp()

    def event(at: float, state: str, event_id: str) -> DeviceMessage:
        ev = DeviceEvent(ts=T0 + timedelta(seconds=at), type="trapped_passenger", state=state,  # type: ignore[arg-type]
                         event_id=event_id)
        return DeviceMessage(Kind.ELEVATOR, "el-1", Channel.EVENT, ev, base + at)

    out = engine.process([event(10, "start", "a")], base + 10)
    out += engine.process([event(130, "start", "b")], base + 130)  # the restarted agent's own id
    assert [t.status for t in out] == ["firing"]
    out = engine.process([event(280, "end", "b")], base + 280)
    assert [t.status for t in out] == ["resolved"]
