"""Work orders on a controllable clock: 50 cases across 10 grids, one escalation, one returned case, figures.

Deliveries go through the real sender with a recording transport (as in test_alerting_clock.py).
The clock starts on 2026-09-30 10:00 (Beijing), the day before the National Day holiday, so the
working-day limits of a 12345-style case must skip 1-7 October and count Saturday 10 October (a make-up day).
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from alerting.config import (
    AlertingConfig,
    ApiConfig,
    EscalationPolicy,
    EscalationStep,
    Person,
    Receiver,
    Retry,
    Route,
    Storm,
    User,
    WorkOrdersConfig,
)
from alerting.desk import Actor, DeskError
from alerting.sender import Message
from alerting.service import AlertingService
from broker.contracts import Alert, Severity, decode_alert, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from tests.integration.workorder_rig import case, centre, grid_id, staff_id, staff_people, write_grids

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 9, 30, 10, 0, tzinfo=TZ).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for Apprise: records (url, title, body)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, msg: Message) -> tuple[bool, str | None]:
        with self.lock:
            self.sent.append((url, msg.title, msg.body))
        return True, None

    def to(self, who: str) -> list[tuple[str, str]]:
        return [(t, b) for u, t, b in self.sent if u == f"fake://{who}"]


def make(tmp_path: Path, clock: Clock, rec: Recorder) -> AlertingService:
    people = [*staff_people(), Person(id="op", roles=["operator"], channels=["fake://op"]),
              Person(id="lead", roles=["shift_lead"], channels=["fake://lead"]),
              Person(id="chief", roles=["duty_chief"], channels=["fake://chief"])]
    p135 = EscalationPolicy(name="135", steps=[EscalationStep(delay_s=0, targets=["role:operator"]),
                                               EscalationStep(delay_s=60, targets=["role:shift_lead"])])
    cfg = AlertingConfig(
        receivers=[Receiver(name="room", urls=["fake://room"]), Receiver(name="g01-desk", urls=["fake://g01-desk"])],
        people=people, escalation_policies=[p135],
        route=Route(name="root", receivers=["room"], group_by=["..."], group_wait_s=0, group_interval_s=30,
                    repeat_interval_s=3600, routes=[
                        Route(name="grid-1", matchers=["grid=g01"], receivers=["g01-desk"], escalation="135",
                              continue_=True),
                        Route(name="crit", matchers=["severity=critical"],
                                                          escalation="135")]),
        inhibit_rules=[], api=ApiConfig(enabled=False), retry=Retry(attempts=1, backoff_s=0.001),
        storm=Storm(max_per_minute=10_000), console_url="https://vigil.example",
        users=[User(name=staff_id(i), role="grid_staff", token=f"t{i}", grids=[grid_id(i)]) for i in range(10)]
        + [User(name="op", role="operator", token="top")],
        workorders=WorkOrdersConfig(enabled=True, grids_file=str(write_grids(tmp_path / "grids.json")),
                                    arrive_max_m=300, arrive_mode="refuse"))
    return AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "state",
                           clock=clock, transport=rec)


def staff(i: int) -> Actor:
    return Actor(staff_id(i), "grid_staff")


OP = Actor("op", "operator")


async def at(svc: AlertingService, clock: Clock, t: float) -> None:
    clock.now = T0 + t
    svc.tick(clock.now)
    await svc.deliver_pending()


async def test_fifty_cases_ten_grids_escalation_return_and_figures(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    published: list[Alert] = []
    real_publish = svc.mqtt.publish_nowait

    def spy(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if topic.startswith("vigil/v1/alerts/") and payload:
            published.append(decode_alert(payload))
        real_publish(topic, payload, qos=qos, retain=retain)

    svc.mqtt.publish_nowait = spy  # type: ignore[method-assign]
    wo = svc.workorders
    assert wo is not None
    # 50 cases, 5 per grid: 30 critical ("135"), 19 major ("standard"), 1 hotline case (working days).
    ids: list[str] = []
    for k in range(50):
        sev = Severity.CRITICAL if k < 30 else Severity.MAJOR
        t = case(f"truck-{k:03d}", k % 10, T0, sev, category="hotline" if k == 49 else "")
        svc.on_transitions([MqttMessage("vigil/v1/transitions/vehicle/x", encode(t), 1, False, T0)])
        ids.append(svc.by_fingerprint[t.fingerprint])
    await svc.deliver_pending()
    orders = [wo.get(OP, i) for i in ids]
    assert [o.grid for o in orders] == [grid_id(k % 10) for k in range(50)]
    assert all(o.stage == "dispatched" for o in orders)
    assert [o.policy for o in orders[:30]] == ["135"] * 30 and orders[30].policy == "standard"
    assert orders[0].due["accepted"] == T0 + 60 and orders[0].due["on_site"] == T0 + 300
    hotline = orders[49]
    assert hotline.policy == "hotline-12345"
    # 3 working days after 30 Sep skip the holiday week and land on Saturday 10 Oct, a make-up working day.
    assert hotline.due["handled"] == datetime(2026, 10, 10, 10, 0, tzinfo=TZ).timestamp()
    # Every grid's staff member was told, with a link to the case on the phone page.
    for i in range(10):
        told = rec.to(staff_id(i))
        assert len(told) == 5 and all("【派单】" in t and "https://vigil.example/h5/#case/" in b for t, b in told)
    assert all(a.labels.get("grid") for a in published)
    # Routing matches on the grid: grid 1's desk got its five cases and nothing else.
    desk = rec.to("g01-desk")
    assert sorted(t.split(" - ")[-1] for t, _ in desk) == [f"truck-{k:03d}" for k in range(0, 50, 10)]
    assert published[-1].work_order is not None and published[-1].work_order.stage == "dispatched"

    # Grid staff see only their grid: another grid's case is 404, a centre step is 403, an illegal step 409.
    with pytest.raises(DeskError) as e:
        wo.get(staff(1), ids[0])
    assert e.value.status == 404
    with pytest.raises(DeskError) as e:
        wo.act(staff(0), ids[0], "verify", {})
    assert e.value.status == 403
    with pytest.raises(DeskError) as e:
        wo.act(staff(0), ids[0], "depart", {})
    assert e.value.status == 409
    assert {o.id for o in wo.orders(staff(3))} == {ids[k] for k in range(50) if k % 10 == 3}

    # Case 0: nobody accepts within a minute -> "accepted" overdue, escalated to the grid staff and the shift lead.
    late = {0, 1}
    for k in range(1, 50):
        if k == 1:
            continue
        wo.act(staff(k % 10), ids[k], "accept", {})
    # Each step is published on the alerts topic with the order's state (and acknowledges the alert).
    accepted_msgs = [a for a in published if a.id == ids[2] and a.work_order and a.work_order.stage == "accepted"]
    assert accepted_msgs and accepted_msgs[-1].status.value == "acknowledged"
    assert accepted_msgs[-1].work_order.assignee == staff_id(2)  # type: ignore[union-attr]
    await at(svc, clock, 61)
    assert wo.get(OP, ids[0]).overdue == ["accepted"]
    over = [a for a in published if a.id == ids[0] and a.work_order and a.work_order.overdue == ["accepted"]]
    assert over, "the overdue milestone was not published"
    overdue_to_staff = [t for t, _ in rec.to(staff_id(0)) if "超时" in t]
    assert len(overdue_to_staff) == 1 and any("超时" in t for t, _ in rec.to("lead"))
    assert any(e.action == "wo_overdue" for e in svc.store.events(ids[0]))
    wo.act(staff(0), ids[0], "accept", {})
    await at(svc, clock, 90)
    # Case 1: returned by grid 2 (not theirs), reassigned by the centre to grid 3, whose staff take it.
    wo.act(staff(1), ids[1], "return", {"reason": "地址属第3网格"})
    with pytest.raises(DeskError) as e:
        wo.act(staff(1), ids[1], "accept", {})
    assert e.value.status == 409
    wo.act(OP, ids[1], "dispatch", {"grid": grid_id(2), "reason": "退单改派"})
    with pytest.raises(DeskError):
        wo.get(staff(1), ids[1])  # no longer theirs
    wo.act(staff(2), ids[1], "accept", {})
    accepted_at = {k: (T0 + 90 if k == 1 else T0 + 61 if k == 0 else T0) for k in range(50)}

    await at(svc, clock, 120)
    for k in range(50):
        g = 2 if k == 1 else k % 10
        wo.act(staff(g), ids[k], "depart", {})
    await at(svc, clock, 240)
    # Too far from the case (arrive_mode refuse): 400; then at the place.
    lat, lon = centre(0)
    with pytest.raises(DeskError) as e:
        wo.act(staff(0), ids[0], "arrive", {"lat": lat + 0.01, "lon": lon})
    assert e.value.status == 400 and e.value.code == "too_far"
    for k in range(50):
        g = 2 if k == 1 else k % 10
        lat, lon = centre(k % 10)
        wo.act(staff(g), ids[k], "arrive", {"lat": lat + 0.001, "lon": lon})
    await at(svc, clock, 600)
    for k in range(45):  # cases 45..49 stay on site (open)
        g = 2 if k == 1 else k % 10
        wo.act(staff(g), ids[k], "handle", {"notes": "已处置，车辆减速"})
    await at(svc, clock, 900)
    for k in range(45):
        wo.act(OP, ids[k], "verify", {"passed": True})
        wo.act(OP, ids[k], "close", {"note": "办结"})
    for k in range(10):
        wo.act(OP, ids[k], "satisfaction", {"result": "unsatisfied" if k < 2 else "satisfied"})
    await at(svc, clock, 1000)

    closed = [wo.get(OP, i) for i in ids[:45]]
    assert all(o.stage == "closed" for o in closed)
    assert all(svc.store.get_alert(i).status.value == "resolved" for i in ids[:45])  # type: ignore[union-attr]
    f = wo.figures(OP, None, None)
    assert f["total"] == 50 and f["closed"] == 45 and f["closure_rate"] == pytest.approx(0.9)
    # Case 1 was first dispatched at T0 and first accepted at T0+90 (after the re-dispatch).
    expected_response = sum((accepted_at[k] - T0) for k in range(50)) / 50
    assert f["mean_response_s"] == pytest.approx(expected_response)
    assert f["mean_arrival_s"] == pytest.approx(240.0)
    assert f["mean_closure_s"] == pytest.approx(900.0)
    # Cases 0 and 1 were not accepted within the minute (case 1 then went back and forth).
    assert f["on_time_rate"]["accepted"] == pytest.approx(48 / 50)
    assert f["on_time_rate"]["on_site"] == pytest.approx(1.0)
    assert f["returned"] == 1 and f["reassigned"] == 0
    assert f["satisfaction_rate"] == pytest.approx(0.8)
    assert f["by"]["grid"][grid_id(1)]["total"] == 4 and f["by"]["grid"][grid_id(2)]["total"] == 6
    assert f["by"]["person"][staff_id(0)]["on_time_rate"]["accepted"] == pytest.approx(4 / 5)
    assert f["by"]["category"]["hotline"]["total"] == 1
    # Grid staff figures cover only their grid.
    assert wo.figures(staff(5), None, None)["total"] == 5
    # The 135 ladder of case 0's alert went to the shift lead at one minute, then accepting acknowledged it.
    actions = [e.action for e in svc.store.events(ids[0])]
    assert "escalated" in actions and "acknowledged" in actions and actions[-1] == "wo_satisfaction"
    for k in late:
        assert "accepted" in wo.get(OP, ids[k]).late
    svc.store.close()


async def test_orders_survive_a_restart_and_grids_reload(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    t = case("truck-x", 4, T0)
    svc.on_transitions([MqttMessage("vigil/v1/transitions/vehicle/x", encode(t), 1, False, T0)])
    aid = svc.by_fingerprint[t.fingerprint]
    assert svc.workorders is not None
    svc.workorders.act(staff(4), aid, "accept", {})
    svc.store.close()
    svc2 = make(tmp_path, clock, rec)
    assert svc2.workorders is not None
    o = svc2.workorders.get(OP, aid)
    assert o.stage == "accepted" and o.assignee == staff_id(4)
    # A broken grids file keeps the grids; a good new one replaces them.
    path = tmp_path / "grids.json"
    path.write_text("{broken", encoding="utf-8")
    await at(svc2, clock, 10)
    assert len(svc2.workorders.grids.grids) == 10 and svc2.workorders.grids.errors == 1
    write_grids(path, 3)
    await at(svc2, clock, 20)
    assert len(svc2.workorders.grids.grids) == 3
    svc2.store.close()


async def test_a_grid_roster_chooses_who_is_told_and_grid_targets_resolve(tmp_path: Path) -> None:
    import msgspec

    from alerting.config import Roster

    clock, rec = Clock(), Recorder()
    (tmp_path / "probe").mkdir()
    probe = make(tmp_path / "probe", clock, rec)
    base = probe.config
    probe.store.close()
    # Grid g03 has two staff members in a daily rotation; the other grids have none.
    cfg = msgspec.structs.replace(
        base, people=[*base.people, Person(id="staff-03b", roles=["grid_staff"], channels=["fake://staff-03b"])],
        rosters=[Roster(name="g03-duty", role="grid_staff", unit=grid_id(2), members=["staff-03b", staff_id(2)],
                        rotation="daily", anchor="2026-09-30")])
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "state",
                          clock=clock, transport=rec)
    assert svc.workorders is not None
    svc.on_transitions([MqttMessage("t", encode(case("truck-a", 2, T0)), 1, False, T0)])
    svc.on_transitions([MqttMessage("t", encode(case("truck-b", 3, T0)), 1, False, T0)])
    await svc.deliver_pending()
    # 30 Sep is the anchor: the roster's first member is on duty in g03 and alone gets the dispatch.
    assert len(rec.to("staff-03b")) == 1 and rec.to(staff_id(2)) == []
    assert len(rec.to(staff_id(3))) == 1  # g04 has no roster: all its staff
    assert svc.resolve_targets(["grid:duty"], "", T0, grid_id(2)) == ["person:staff-03b"]
    assert svc.resolve_targets(["grid:staff"], "", T0, grid_id(2)) == [f"person:{staff_id(2)}"]
    assert svc.resolve_targets(["grid:duty", "grid:staff"], "", T0, "") == []
    # The next day (after the 08:00 handover) the other member is on duty.
    assert svc.workorders.on_duty_in(grid_id(2), T0 + 86400) == [staff_id(2)]
    svc.store.close()


async def test_late_verification_tells_the_centre_and_a_reopened_alert_restarts_its_case(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    wo = svc.workorders
    assert wo is not None
    t = case("truck-r", 7, T0)
    svc.on_transitions([MqttMessage("t", encode(t), 1, False, T0)])
    aid = svc.by_fingerprint[t.fingerprint]
    me = staff(7)
    lat, lon = centre(7)
    for action, body in (("accept", {}), ("depart", {}), ("arrive", {"lat": lat, "lon": lon}),
                         ("handle", {"notes": "ok"})):
        wo.act(me, aid, action, body)
    await svc.deliver_pending()
    sent_to_staff = len(rec.to(staff_id(7)))
    # "135": the centre must verify within 2 hours; late, the shift lead and duty chief hear of it, not the grid.
    await at(svc, clock, 7201)
    assert wo.get(OP, aid).overdue == ["verified"]
    assert any("超时" in t for t, _ in rec.to("lead")) and any("超时" in t for t, _ in rec.to("chief"))
    assert len(rec.to(staff_id(7))) == sent_to_staff
    wo.act(OP, aid, "verify", {})
    wo.act(OP, aid, "close", {})
    assert not svc.store.get_alert(aid).is_open  # type: ignore[union-attr]
    # The rule fires again within the reopen window: the same alert reopens and its case is dispatched again.
    again = case("truck-r", 7, T0 + 7300)
    clock.now = T0 + 7300
    svc.on_transitions([MqttMessage("t", encode(again), 1, False, clock.now)])
    assert svc.by_fingerprint[again.fingerprint] == aid
    o = wo.get(OP, aid)
    assert o.stage == "dispatched" and o.reopens == 1 and o.due["accepted"] == T0 + 7360
    assert [e.action for e in svc.store.events(aid)][-2:] == ["wo_reopened", "wo_dispatched"]
    assert wo.figures(OP, None, None)["reopened"] == 1
    svc.store.close()
