"""alerting.surface against a real alerting service and its real SQLite store (no fakes for the store).

Transitions go in through ``on_local_transitions`` (the in-process hand-off the rules stage uses); the
MQTT client is never connected, its publications stay queued.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.config import AlertingConfig, ApiConfig, Person, Roster, Route, User
from alerting.service import AlertingService
from alerting.surface import (
    Actor,
    AlertingError,
    AlertingSurface,
    AlertingUnavailable,
    AlertQuery,
    AlertRecord,
    AuditEvent,
    Conflict,
    DeliveryAttempt,
    DeskError,
    DutyShift,
    EscalationView,
    Forbidden,
    Invalid,
    MaintenanceWindowView,
    NotFound,
    NotificationQuery,
    UpcomingShift,
    as_json,
    make_actor,
)
from broker.contracts import AlertStatus, Kind, Severity, Transition, encode
from broker.mqtt import MqttClient

OP_U1 = Actor("op", "operator", "u1")
OP_U2 = Actor("other", "operator", "u2")
LEAD = Actor("lead", "supervisor")


def service(folder: Path) -> AlertingService:
    cfg = AlertingConfig(users=[User(name="op", token="t", unit="u1")], api=ApiConfig(enabled=False), receivers=[],
                         people=[Person(id="op", name="王芳", roles=["operator"], unit="u1"),
                                 Person(id="zhao", name="赵敏", roles=["operator"], unit="u1")],
                         rosters=[Roster(name="desk", role="operator", members=["op", "zhao"], unit="u1")],
                         route=Route(name="root", escalation="135"), inhibit_rules=[])
    return AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "surface-test"), state_dir=folder)


def fire(svc: AlertingService, device: str, kind: Kind = Kind.ELEVATOR, severity: Severity = Severity.CRITICAL,
         ) -> str:
    t = Transition(ts=datetime.now(UTC), fingerprint=f"fp-{device}", rule="r1", status="firing", severity=severity,
                   kind=kind, device_id=device, site="s1", summary="测试", labels={"unit": "u1"})
    svc.on_local_transitions([(t, encode(t))])
    return svc.by_fingerprint[f"fp-{device}"]


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[tuple[AlertingService, AlertingSurface]]:
    svc = service(tmp_path / "alerting")
    yield svc, AlertingSurface.of(svc)
    svc.close()


def test_queries_are_checked_when_built() -> None:
    for bad in (dict(status=("open",)), dict(filters=(("colour", "red"),)), dict(filters=(("severity", "huge"),)),
                dict(limit=0), dict(limit=5001), dict(offset=-1)):
        with pytest.raises(Invalid) as err:
            AlertQuery(**bad)
        assert err.value.status == 400 and err.value.code == "invalid"
        assert isinstance(err.value, DeskError) and isinstance(err.value, AlertingError)
    with pytest.raises(Invalid, match="status must be one of"):
        NotificationQuery(status="lost")
    assert AlertQuery(status=("firing", "acknowledged")).open_only
    assert not AlertQuery(status=("firing",), since=0.0).open_only and not AlertQuery().open_only


def test_only_an_alerting_stage_has_a_surface(stage: tuple[AlertingService, AlertingSurface]) -> None:
    _svc, surface = stage
    with pytest.raises(AlertingUnavailable) as err:
        AlertingSurface.of(object())
    assert isinstance(err.value, AlertingError)
    assert AlertingSurface.of(surface) is surface
    with pytest.raises(Forbidden):
        make_actor("x", "root")
    assert make_actor("op", "operator", "u1") == OP_U1


def test_reads_are_typed_and_history_comes_from_the_store(stage: tuple[AlertingService, AlertingSurface]) -> None:
    svc, surface = stage
    a, b = fire(svc, "e1"), fire(svc, "e2", severity=Severity.MAJOR)
    rec = surface.alert(a)
    assert isinstance(rec, AlertRecord) and rec.status is AlertStatus.FIRING and rec.device_id == "e1"
    assert {r.id for r in surface.open_alerts()} == {a, b} == surface.open_ids()
    with pytest.raises(NotFound) as err:
        surface.alert("no-such-alert")
    assert err.value.status == 404 and surface.find_alert("no-such-alert") is None

    assert [r.id for r in surface.alerts(AlertQuery(status=("firing",), filters=(("severity", "major"),)))] == [b]
    surface.close(b, OP_U1, "checked on site")
    # Resolved alerts are no longer in memory: answered by the SQLite store.
    assert surface.find_alert(b) is not None and b not in surface.open_ids()
    resolved = AlertQuery(status=("resolved",))
    assert [r.id for r in surface.alerts(resolved)] == [b] and surface.count_alerts(resolved) == 1
    assert surface.count_alerts(AlertQuery()) == 2
    assert surface.count_alerts(AlertQuery(filters=(("device_id", "e1"),))) == 1
    assert {r.id for r in surface.alerts_started(time.time() - 60)} == {a, b}

    events = surface.timeline(b)
    assert all(isinstance(e, AuditEvent) for e in events)
    assert [e.action for e in events][-1] == "closed" and events[-1].actor == "op"
    body = surface.alert_json(surface.alert(b))
    assert body["status"] == "resolved" and body["resolved_by"] == "op" and body["muted"] is None


def test_commands_check_who_acts_and_persist(tmp_path: Path) -> None:
    svc = service(tmp_path / "alerting")
    surface = AlertingSurface.of(svc)
    a = fire(svc, "e1")
    assert [e.alert.id for e in surface.escalations()] == [a]
    assert all(isinstance(e, EscalationView) for e in surface.escalations())
    with pytest.raises(Forbidden) as err:
        surface.acknowledge(a, OP_U2)  # another unit's operator
    assert err.value.status == 403
    assert surface.acknowledge(a, OP_U1, "on my way").status is AlertStatus.ACKNOWLEDGED
    assert surface.escalations() == []  # acknowledged: the ladder stopped

    with pytest.raises(Invalid, match="scope"):
        surface.silence_alert(a, OP_U1, "everything", 30)
    with pytest.raises(Invalid, match="vehicle"):
        surface.text_driver(a, OP_U1, "请靠边停车")
    s = surface.silence_alert(a, OP_U1, "device", 30)
    assert "unit=u1" in s.matchers and "device_id=e1" in s.matchers  # an operator silences only their unit
    reason = surface.mute_reason(surface.alert(a))
    assert reason is not None and reason.kind == "silence" and reason.id == s.id
    assert surface.timeline(a)[-1].action == "commented"
    with pytest.raises(Forbidden):
        surface.create_maintenance(OP_U1, "lift-service", ["site=s1"], [0, 3], "02:00", 90)
    m = surface.create_maintenance(LEAD, "lift-service", ["site=s1"], [0, 3], "02:00", 90)
    with pytest.raises(Conflict) as conflict:
        surface.create_maintenance(LEAD, "lift-service", ["site=s2"], [1], "03:00", 60)
    assert conflict.value.status == 409
    windows = surface.maintenance_windows()
    assert [(w.id, w.source, w.weekdays, w.open) for w in windows] == [(m.id, "runtime", (0, 3), windows[0].open)]
    assert isinstance(windows[0], MaintenanceWindowView) and as_json(windows[0])["matchers"] == ["site=s1"]
    o = surface.add_override(LEAD, "desk", "zhao", time.time() - 10, time.time() + 3600, "swap")
    with pytest.raises(Forbidden):
        surface.delete_override(OP_U1, o.id)
    svc.close()

    # A new service on the same folder finds what the commands committed.
    svc = service(tmp_path / "alerting")
    surface = AlertingSurface.of(svc)
    assert [x.id for x in surface.silences()] == [s.id]
    assert surface.alert(a).status is AlertStatus.ACKNOWLEDGED
    assert [x.id for x in surface.overrides(active_at=time.time())] == [o.id]
    assert [w.name for w in surface.maintenance_windows()] == ["lift-service"]
    assert surface.delete_maintenance(LEAD, m.id).name == "lift-service" and surface.maintenance_windows() == []
    surface.delete_silence(OP_U1, s.id)
    assert surface.silences() == []
    svc.close()


def test_duty_and_notifications(stage: tuple[AlertingService, AlertingSurface]) -> None:
    svc, surface = stage
    now = time.time()
    shifts = surface.on_duty(now, unit="u1", role="operator")
    assert len(shifts) == 1 and isinstance(shifts[0], DutyShift) and shifts[0].roster == "desk"
    assert shifts[0].name in ("王芳", "赵敏") and shifts[0].override is None
    coming = surface.upcoming_shifts("desk", now, count=3)
    assert len(coming) == 3 and all(isinstance(u, UpcomingShift) for u in coming)
    assert [u.starts_at for u in coming] == sorted(u.starts_at for u in coming)
    assert as_json(coming[0])["person"] == coming[0].person
    with pytest.raises(NotFound):
        surface.upcoming_shifts("nobody", now)

    a = fire(svc, "e3")
    rows = surface.notifications(NotificationQuery(alert_id=a))
    assert rows and all(a in r.alert_ids for r in rows)  # the "135" rung 0 reaches the on-duty operator
    assert surface.notification(rows[0].id).id == rows[0].id
    assert surface.attempts(rows[0].id) == [] or isinstance(surface.attempts(rows[0].id)[0], DeliveryAttempt)
    with pytest.raises(NotFound):
        surface.notification(10**9)
