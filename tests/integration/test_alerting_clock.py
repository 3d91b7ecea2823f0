"""The alerting service driven step by step on a controllable clock (SQLite state, recorded deliveries).

Deliveries go through the real sender with a recording transport in place of Apprise; real Apprise
deliveries are covered by test_alerting_delivery.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.config import (
    AlertingConfig,
    ApiConfig,
    EscalationPolicy,
    EscalationStep,
    InhibitRule,
    Person,
    Receiver,
    Retry,
    Route,
    Storm,
)
from alerting.desk import Actor, DeskError
from alerting.sender import Message
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for Apprise: records (url, title); URLs containing 'fail' refuse."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.tries: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, msg: Message) -> tuple[bool, str | None]:
        with self.lock:
            self.tries.append(url)
            if "fail" in url:
                return False, "refused"
            self.sent.append((url, msg.title))
        return True, None

    def to(self, who: str) -> list[str]:
        return [t for u, t in self.sent if u == f"fake://{who}"]


def people() -> list[Person]:
    return [Person(id="op", roles=["operator"], channels=["fake://op"]),
            Person(id="lead", roles=["shift_lead"], channels=["fake://lead"]),
            Person(id="chief", roles=["duty_chief"], channels=["fake://chief"]),
            Person(id="head", roles=["unit_head"], channels=["fake://fail-head", "fake://head"])]


P135 = EscalationPolicy(name="135", steps=[
    EscalationStep(delay_s=0, targets=["role:operator"]), EscalationStep(delay_s=60, targets=["role:shift_lead"]),
    EscalationStep(delay_s=180, targets=["role:duty_chief"]), EscalationStep(delay_s=300, targets=["role:unit_head"]),
], repeat_s=60)


def config(**kw: object) -> AlertingConfig:
    base: dict[str, object] = dict(
        receivers=[Receiver(name="room", urls=["fake://room"])], people=people(), escalation_policies=[P135],
        route=Route(name="root", receivers=["room"], group_by=["rule", "site"], group_wait_s=0,
                    group_interval_s=30, repeat_interval_s=3600, routes=[
                        Route(name="crit", matchers=["severity=critical"], escalation="135", receivers=[])]),
        inhibit_rules=[], api=ApiConfig(enabled=False), retry=Retry(attempts=2, backoff_s=0.001),
        users=[], storm=Storm(max_per_minute=1000))
    base.update(kw)
    return AlertingConfig(**base)  # type: ignore[arg-type]


def make(tmp_path: Path, clock: Clock, rec: Recorder, cfg: AlertingConfig | None = None) -> AlertingService:
    mqtt = MqttClient("mqtt://127.0.0.1:1", "unused")  # never started: publishes stay local
    return AlertingService(cfg or config(), mqtt=mqtt, state_dir=tmp_path / "state", clock=clock, transport=rec)


def feed(svc: AlertingService, *transitions: Transition) -> None:
    svc.on_transitions([MqttMessage("vigil/v1/transitions/x/y", encode(t), 1, False, svc.clock())
                        for t in transitions])


def tr(device: str, status: str = "firing", at: float = T0, severity: Severity = Severity.CRITICAL,
       rule: str = "trapped_passenger", kind: Kind = Kind.ELEVATOR, site: str = "tower-a") -> Transition:
    return Transition(ts=datetime.fromtimestamp(at, UTC), fingerprint=f"{rule}:{device}", rule=rule,
                      status=status, severity=severity, kind=kind, device_id=device, site=site,  # type: ignore[arg-type]
                      summary="电梯困人", source_ts=datetime.fromtimestamp(at, UTC))


async def step(svc: AlertingService, clock: Clock, at: float) -> None:
    clock.now = at
    svc.tick(at)
    await svc.deliver_pending()


async def test_135_escalation_step_by_step_and_ack_stops(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    feed(svc, tr("elv-1"))
    await svc.deliver_pending()
    assert len(rec.to("op")) == 1 and len(rec.to("room")) == 1  # the room receiver is inherited from root
    await step(svc, clock, T0 + 59)
    assert rec.to("lead") == []
    await step(svc, clock, T0 + 60)
    assert len(rec.to("lead")) == 1 and "第 2 级" in rec.to("lead")[0]
    await step(svc, clock, T0 + 179)
    assert rec.to("chief") == []
    await step(svc, clock, T0 + 180)
    await step(svc, clock, T0 + 300)
    assert len(rec.to("chief")) == 1 and len(rec.to("head")) == 1
    assert "fake://fail-head" in rec.tries  # the head's first channel refused, the second took it
    await step(svc, clock, T0 + 360)
    assert len(rec.to("head")) == 2  # critical: repeats until acknowledged
    aid = next(iter(svc.open))
    svc.desk.acknowledge(aid, Actor("op", "operator"), "on my way")
    before = len(rec.sent)
    for t in range(361, 1200, 30):
        await step(svc, clock, T0 + t)
    assert len(rec.sent) == before
    actions = [e.action for e in svc.store.events(aid)]
    assert actions.count("escalated") == 4 and "acknowledged" in actions and "ack_overdue" in actions
    svc.store.close()


async def test_restart_mid_escalation_next_step_once_at_right_time(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    feed(svc, tr("elv-1"))
    await step(svc, clock, T0 + 60)
    assert len(rec.to("lead")) == 1
    svc.store.close()  # the process goes away between rungs
    svc2 = make(tmp_path, clock, rec)
    await step(svc2, clock, T0 + 61)
    await step(svc2, clock, T0 + 179)
    assert rec.to("chief") == [] and len(rec.to("lead")) == 1 and len(rec.to("op")) == 1
    await step(svc2, clock, T0 + 180)
    await step(svc2, clock, T0 + 181)
    assert len(rec.to("chief")) == 1
    # A crash after the rung was decided but before delivery: the next process delivers it, once.
    clock.now = T0 + 300
    svc2.tick(T0 + 300)
    svc2.store.close()
    svc3 = make(tmp_path, clock, rec)
    await svc3.deliver_pending()
    await step(svc3, clock, T0 + 301)
    assert len(rec.to("head")) == 1
    svc3.store.close()


async def test_forty_cameras_one_notification_then_one_resolved(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_by=["rule", "site"], group_wait_s=10,
                             group_interval_s=30, repeat_interval_s=600))
    svc = make(tmp_path, clock, rec, cfg)
    for i in range(40):
        clock.now = T0 + i * 0.1
        feed(svc, tr(f"cam-{i}", rule="video_loss", kind=Kind.CAMERA, site="school-1", severity=Severity.MAJOR))
    await step(svc, clock, T0 + 9)
    assert rec.sent == []
    await step(svc, clock, T0 + 10)
    assert len(rec.to("room")) == 1 and "等 40 条" in rec.to("room")[0]
    # repeat after repeat_interval, then all resolve: one resolved notification
    await step(svc, clock, T0 + 610)
    # the repeat, and one overdue notice for all 40 (acknowledge-by for major alerts is 5 minutes)
    assert len(rec.to("room")) == 3 and "仍未处理" in rec.to("room")[1] and "超时未处理" in rec.to("room")[2]
    assert "等 40 条" in rec.to("room")[2]
    clock.now = T0 + 620
    feed(svc, *[tr(f"cam-{i}", "resolved", at=T0 + 620, rule="video_loss", kind=Kind.CAMERA, site="school-1",
                   severity=Severity.MAJOR) for i in range(40)])
    await step(svc, clock, T0 + 640)
    assert len(rec.to("room")) == 4 and "已恢复" in rec.to("room")[3]
    assert svc.open == {}
    svc.store.close()


async def test_deadlines_flag_and_notify_overdue(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_wait_s=0, repeat_interval_s=0))
    svc = make(tmp_path, clock, rec, cfg)
    feed(svc, tr("stack-1", severity=Severity.MAJOR, rule="so2_exceedance", kind=Kind.EMISSION))
    await svc.deliver_pending()
    aid = next(iter(svc.open))
    await step(svc, clock, T0 + 299)
    assert not svc.open[aid].ack_overdue and len(rec.to("room")) == 1
    await step(svc, clock, T0 + 300)
    assert svc.open[aid].ack_overdue and not svc.open[aid].resolve_overdue
    assert len(rec.to("room")) == 2 and "超时" in rec.to("room")[1]
    await step(svc, clock, T0 + 4 * 3600)
    assert svc.open[aid].resolve_overdue
    assert len(rec.to("room")) == 3 and "超时" in rec.to("room")[2]
    actions = [e.action for e in svc.store.events(aid)]
    assert actions == ["created", "ack_overdue", "resolve_overdue"]
    svc.store.close()


async def test_rescue_clock_runs_out_and_escalates(tmp_path: Path) -> None:
    """A trapped-passenger alert (category rescue), acknowledged at once, still open at 30 minutes: the rescue
    clock has run out, the alert is flagged resolve-overdue and the room and the assignee are told."""
    import msgspec

    clock, rec = Clock(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_wait_s=0, repeat_interval_s=0))
    svc = make(tmp_path, clock, rec, cfg)
    trapped = msgspec.structs.replace(tr("elv-9", severity=Severity.MAJOR), labels={"category": "rescue"})
    feed(svc, trapped)
    await svc.deliver_pending()
    aid = next(iter(svc.open))
    assert svc.open[aid].resolve_by == T0 + 1800  # not the 4 h of a major alert
    svc.desk.acknowledge(aid, Actor("op", "operator"), "rescue team dispatched")
    await step(svc, clock, T0 + 1799)
    assert not svc.open[aid].resolve_overdue and len(rec.to("room")) == 1
    await step(svc, clock, T0 + 1800)
    assert svc.open[aid].resolve_overdue
    assert len(rec.to("room")) == 2 and "超时" in rec.to("room")[1]
    assert "resolve_overdue" in [e.action for e in svc.store.events(aid)]
    svc.store.close()


async def test_silence_and_inhibition_mute_but_keep_alerts(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_by=["device_id"], group_wait_s=0),
                 inhibit_rules=[InhibitRule(name="power", source=["rule=site_power_failure"],
                                            target=["kind=elevator"], equal=["site"])],
                 users=[])
    svc = make(tmp_path, clock, rec, cfg)
    svc.desk.create_silence(Actor("sup", "supervisor"), ["site=tower-b"], T0 + 3600, comment="drill")
    feed(svc, tr("elv-9", site="tower-b"))
    await svc.deliver_pending()
    assert rec.sent == [] and len(svc.open) == 1 and svc.counters["muted_silence"] >= 1
    feed(svc, tr("pm-1", rule="site_power_failure", kind=Kind.SENSOR, site="tower-a"))
    feed(svc, tr("elv-1", site="tower-a"))
    await svc.deliver_pending()
    assert len(rec.to("room")) == 1 and "pm-1" in rec.to("room")[0]
    assert svc.counters["muted_inhibition"] >= 1 and len(svc.open) == 3
    # the silence ends: the held-back alert goes out at the group's next flush, once
    await step(svc, clock, T0 + 3599)
    assert not any("elv-9" in t or "elv-1" in t for t in rec.to("room"))  # pm-1's overdue notice only
    await step(svc, clock, T0 + 3600)
    await step(svc, clock, T0 + 3630)
    firing_elv9 = [t for t in rec.to("room") if t.startswith("[紧急] 告警") and "elv-9" in t]
    assert len(firing_elv9) == 1 and not any("elv-1" in t for t in rec.to("room"))  # elv-1 stays inhibited
    n = len(rec.to("room"))
    await step(svc, clock, T0 + 3700)
    assert len(rec.to("room")) == n
    svc.store.close()


async def test_operator_permissions(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    op = Actor("zhang", "operator", unit="u1")
    with pytest.raises(DeskError) as exc:
        svc.desk.create_silence(op, ["site=tower-a"], T0 + 60)
    assert exc.value.status == 403
    mine = svc.desk.create_silence(op, ["unit=u1", "site=tower-a"], T0 + 60)
    other = svc.desk.create_silence(Actor("li", "supervisor"), ["site=x"], T0 + 60)
    with pytest.raises(DeskError):
        svc.desk.delete_silence(op, other.id)
    svc.desk.delete_silence(op, mine.id)
    with pytest.raises(DeskError) as exc:
        svc.desk.add_override(op, "r", "op", T0, T0 + 60)
    assert exc.value.status == 403
    svc.store.close()


async def test_storm_control_sends_digest(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_by=["device_id"], group_wait_s=0),
                 storm=Storm(max_per_minute=3, digest_s=60))
    svc = make(tmp_path, clock, rec, cfg)
    feed(svc, *[tr(f"elv-{i}", severity=Severity.WARNING) for i in range(5)])
    await svc.deliver_pending()
    assert len(rec.to("room")) == 3 and svc.stats()["storm_held"] == 2
    svc.store.close()  # held lines survive a restart
    svc = make(tmp_path, clock, rec, cfg)
    await step(svc, clock, T0 + 59)
    assert len(rec.to("room")) == 3
    await step(svc, clock, T0 + 60)
    assert len(rec.to("room")) == 4 and rec.to("room")[3].startswith("告警汇总 (2)")
    await step(svc, clock, T0 + 200)
    assert len(rec.to("room")) == 4
    svc.store.close()


async def test_refire_reopens_and_failed_channels_go_to_dead_letters(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    cfg = config(receivers=[Receiver(name="room", urls=["fake://fail-1", "fake://fail-2"])],
                 route=Route(name="root", receivers=["room"], group_wait_s=0))
    svc = make(tmp_path, clock, rec, cfg)
    feed(svc, tr("elv-1", severity=Severity.WARNING))
    aid = next(iter(svc.open))
    clock.now = T0 + 10
    feed(svc, tr("elv-1", "resolved", at=T0 + 10, severity=Severity.WARNING))
    clock.now = T0 + 20
    feed(svc, tr("elv-1", at=T0 + 20, severity=Severity.WARNING))
    assert list(svc.open) == [aid] and svc.open[aid].reopen_count == 1
    await svc.deliver_pending()
    dead = svc.store.notifications(status="dead")
    assert dead and dead[0].attempts == 4 and dead[0].channel == "fake://***@***"
    assert rec.tries.count("fake://fail-1") == rec.tries.count("fake://fail-2")
    svc.store.close()


async def test_bad_transitions_are_dead_lettered_not_fatal(tmp_path: Path) -> None:
    clock, rec = Clock(), Recorder()
    svc = make(tmp_path, clock, rec)
    svc.on_transitions([MqttMessage("vigil/v1/transitions/x/y", b"{not json", 1, False, 0.0),
                        MqttMessage("vigil/v1/transitions/x/y", b'{"v":1,"ts":"2026-01-01T00:00:00Z"}', 1, False, 0.0),
                        MqttMessage("vigil/v1/transitions/x/y", encode(tr("elv-1")), 1, False, 0.0)])
    assert svc.counters["rejected"] == 2 and len(svc.open) == 1
    svc.store.close()


async def test_role_targets_follow_the_roster_and_overrides(tmp_path: Path) -> None:
    from alerting.config import Roster

    clock, rec = Clock(), Recorder()
    ops = [Person(id="a", roles=["operator"], channels=["fake://a"]),
           Person(id="b", roles=["operator"], channels=["fake://b"])]
    cfg = config(people=[*people(), *ops],
                 rosters=[Roster(name="lift-ops", role="operator", unit="lifts", members=["a", "b"],
                                 rotation="daily", handovers=["08:00"], anchor="2026-01-05")],
                 route=Route(name="root", receivers=[], escalation="135", group_by=["device_id"], group_wait_s=0))
    svc = make(tmp_path, clock, rec, cfg)
    on_duty = svc.desk.on_duty(unit="lifts", role="operator")[0]["person"]
    other = "b" if on_duty == "a" else "a"
    t = tr("elv-1")
    feed(svc, Transition(**{**{f: getattr(t, f) for f in t.__struct_fields__}, "labels": {"unit": "lifts"}}))
    await svc.deliver_pending()
    assert len(rec.to(on_duty)) == 1 and rec.to(other) == [] and rec.to("op") == []
    svc.desk.add_override(Actor("sup", "supervisor"), "lift-ops", other, T0, T0 + 3600, "swap")
    t2 = tr("elv-2")
    feed(svc, Transition(**{**{f: getattr(t2, f) for f in t2.__struct_fields__}, "labels": {"unit": "lifts"}}))
    await svc.deliver_pending()
    assert len(rec.to(other)) == 1 and len(rec.to(on_duty)) == 1
    svc.store.close()
