"""Steps of the platform's wall clock in alerting: reopen rule, deadlines, escalation, group timers, storm windows.

The service runs on an injected wall clock that can step and a monotonic clock that cannot; deliveries
go to a recording transport.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alerting.config import (
    AlertingConfig,
    ApiConfig,
    Deadlines,
    EscalationPolicy,
    EscalationStep,
    Person,
    Receiver,
    Retry,
    Route,
    Storm,
)
from alerting.grouping import FIRING, Grouper
from alerting.lifecycle import apply_transition, change_severity
from alerting.router import Router
from alerting.sender import Message
from alerting.service import AlertingService
from alerting.stages import StormControl
from broker.clocksteps import WallClockSteps
from broker.contracts import AlertStatus, Kind, Severity, Transition, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

T0 = 1_790_000_000.0
FWD = 7200.0
BACK = -7800.0


class Clocks:
    """The platform's wall clock (steps with ``step``) and its monotonic clock (never steps)."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def __call__(self) -> float:
        return self.wall

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s

    def step(self, s: float) -> None:
        self.wall += s


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, url: str, msg: Message) -> tuple[bool, str | None]:
        self.sent.append((url, msg.title))
        return True, None

    def to(self, who: str) -> list[str]:
        return [t for u, t in self.sent if u == f"fake://{who}"]


LADDER = EscalationPolicy(name="ladder", steps=[EscalationStep(delay_s=0, targets=["role:operator"]),
                                                EscalationStep(delay_s=60, targets=["role:shift_lead"])])


def config(**kw: object) -> AlertingConfig:
    base: dict[str, object] = dict(
        receivers=[Receiver(name="room", urls=["fake://room"])],
        people=[Person(id="op", roles=["operator"], channels=["fake://op"]),
                Person(id="lead", roles=["shift_lead"], channels=["fake://lead"])],
        escalation_policies=[LADDER], inhibit_rules=[], api=ApiConfig(enabled=False),
        route=Route(name="root", receivers=["room"], group_by=["rule", "device_id"], group_wait_s=0,
                    group_interval_s=30, repeat_interval_s=0, send_resolved=True, routes=[
                        Route(name="crit", matchers=["severity=critical"], escalation="ladder", receivers=["room"])]),
        retry=Retry(attempts=1, backoff_s=0.001), users=[], storm=Storm(max_per_minute=1000),
        deadlines=Deadlines(ack_s={"major": 300.0, "critical": 600.0}, resolve_s={"major": 3600.0}),
        reopen_window_s=300.0)
    base.update(kw)
    return AlertingConfig(**base)  # type: ignore[arg-type]


def make(tmp_path: Path, clocks: Clocks, rec: Recorder, cfg: AlertingConfig | None = None) -> AlertingService:
    steps = WallClockSteps(wall=clocks, monotonic=lambda: clocks.mono)
    return AlertingService(cfg or config(), mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"),
                           state_dir=tmp_path / "state", clock=clocks, transport=rec, clock_steps=steps)


def tr(device: str, at: float, status: str = "firing", severity: Severity = Severity.MAJOR,
       rule: str = "overspeed") -> Transition:
    """A transition at device time ``at`` (devices keep the real time: their clocks do not step)."""
    ts = datetime.fromtimestamp(at, UTC)
    return Transition(ts=ts, fingerprint=f"{rule}:{device}", rule=rule, status=status,  # type: ignore[arg-type]
                      severity=severity, kind=Kind.ELEVATOR, device_id=device, site="tower", summary="x",
                      source_ts=ts)


def feed(svc: AlertingService, *transitions: Transition) -> None:
    svc.on_transitions([MqttMessage("vigil/v1/transitions/x/y", encode(t), 1, False, 0.0) for t in transitions])


async def run(svc: AlertingService) -> None:
    svc.tick()
    await svc.deliver_pending()


def overdue(rec: Recorder) -> list[str]:
    return [t for _, t in rec.sent if "Overdue" in t or "超时" in t]


# ---------------------------------------------------------------------------------------------- lifecycle


def test_negative_gap_is_a_new_occurrence_not_a_reopen() -> None:
    first = apply_transition(None, None, tr("e1", T0), T0, new_id="a1", deadlines=Deadlines(), reopen_window_s=300)
    assert first.record is not None
    ended = apply_transition(first.record, None, tr("e1", T0 + 10, "resolved"), T0 + 10, new_id="x",
                             deadlines=Deadlines(), reopen_window_s=300).record
    assert ended is not None and ended.ends_at == T0 + 10
    # A firing 2 h 10 min "before" the end (the clock that stamped the end was ahead): not a re-fire.
    back = apply_transition(None, ended, tr("e1", T0 + 10 + BACK), T0, new_id="a2", deadlines=Deadlines(),
                            reopen_window_s=300)
    assert back.change == "new" and back.record is not None and back.record.id == "a2"
    # Inside the window after the end: still the same alert, re-fired.
    again = apply_transition(None, ended, tr("e1", T0 + 70), T0 + 70, new_id="a3", deadlines=Deadlines(),
                             reopen_window_s=300)
    assert again.change == "reopened" and again.record is not None and again.record.id == "a1"
    edge = apply_transition(None, ended, tr("e1", T0 + 10), T0 + 10, new_id="a4", deadlines=Deadlines(),
                            reopen_window_s=0)
    assert edge.change == "reopened"  # a gap of exactly 0 is inside a 0 s window


def test_frame_shift_moves_deadlines_and_escalation_anchor_of_a_new_alert() -> None:
    out = apply_transition(None, None, tr("e1", T0), T0 + FWD, new_id="a1", deadlines=Deadlines(),
                           reopen_window_s=300, policy="ladder", frame_shift_s=FWD)
    rec = out.record
    assert rec is not None and rec.starts_at == T0  # the device's time stays on the record
    assert rec.ack_by == T0 + FWD + 300 and rec.esc_anchor == T0 + FWD


def test_severity_changes_after_a_step_keep_the_records_frame() -> None:
    d = Deadlines(ack_s={"major": 300.0, "critical": 60.0})
    rec = apply_transition(None, None, tr("e1", T0), T0 + FWD, new_id="a1", deadlines=d, reopen_window_s=300,
                           frame_shift_s=FWD).record
    assert rec is not None and rec.wall_shift == FWD
    raised = apply_transition(rec, None, tr("e1", T0 + 5, severity=Severity.CRITICAL), T0 + FWD + 5, new_id="x",
                              deadlines=d, reopen_window_s=300).record
    assert raised is not None and raised.ack_by == T0 + FWD + 60
    by_hand, _ = change_severity(rec, "op", T0 + FWD + 5, Severity.CRITICAL, "worse", d)
    assert by_hand.ack_by == T0 + FWD + 60


# ---------------------------------------------------------------------------------------------- pure cores


def test_grouper_shift_moves_group_timers() -> None:
    plans = Router(config().route).plans
    plan = next(iter(plans.values()))
    g = Grouper(plans)
    g.update(plan, {"rule": "r", "device_id": "d"}, "a1", FIRING, T0 + FWD)
    assert len(g.due(T0 + FWD)) == 1  # group_wait 0: the first notification at once
    g.update(plan, {"rule": "r", "device_id": "d"}, "a2", FIRING, T0 + FWD + 1)
    assert g.next_due() == T0 + FWD + 30  # group_interval after the last flush
    g.shift(BACK)
    assert g.next_due() == T0 + FWD + BACK + 30
    assert len(g.due(T0 + FWD + BACK + 30)) == 1


def test_storm_windows_shift() -> None:
    s = StormControl(max_per_minute=1, digest_s=60)
    assert s.admit("r", T0)
    s.hold("r", "line", T0)
    assert s.shift(BACK) == ["r"]
    assert not s.admit("r", T0 + BACK + 59)  # the minute still runs in the stepped frame
    assert s.admit("r", T0 + BACK + 60)
    assert s.next_due() == T0 + BACK + 60


# ---------------------------------------------------------------------------------------------- the service


async def test_forward_step_sends_no_false_overdue_notices(tmp_path: Path) -> None:
    clocks, rec = Clocks(), Recorder()
    svc = make(tmp_path, clocks, rec)
    feed(svc, tr("e1", T0))
    await run(svc)
    old = next(iter(svc.open))
    assert len(rec.to("room")) == 1
    clocks.advance(100)
    clocks.step(FWD)
    await run(svc)
    assert overdue(rec) == [] and svc.counters["clock_steps"] == 1
    assert svc.open[old].ack_by == T0 + FWD + 300 and svc.open[old].wall_shift == FWD
    assert svc.store.get_alert(old) == svc.open[old]  # the shifted deadlines are what a restart loads
    # A new alert after the step: its device time is 2 h "old" on the stepped clock, yet not overdue.
    feed(svc, tr("e2", T0 + 100))
    await run(svc)
    new = next(a for a in svc.open if a != old)
    assert svc.open[new].starts_at == T0 + 100 and svc.open[new].ack_by == T0 + FWD + 100 + 300
    assert overdue(rec) == [] and len(rec.to("room")) == 2
    clocks.advance(199)
    await run(svc)
    assert overdue(rec) == []
    clocks.advance(1)  # 300 s after the first alert fired, counted across the step
    await run(svc)
    assert len(overdue(rec)) == 1 and svc.open[old].ack_overdue and not svc.open[new].ack_overdue
    clocks.advance(100)
    await run(svc)
    assert len(overdue(rec)) == 2 and svc.open[new].ack_overdue
    svc.store.close()


async def test_forward_step_keeps_escalation_rungs_on_time(tmp_path: Path) -> None:
    clocks, rec = Clocks(), Recorder()
    svc = make(tmp_path, clocks, rec)
    feed(svc, tr("e1", T0, severity=Severity.CRITICAL))
    await run(svc)
    assert len(rec.to("op")) == 1
    clocks.advance(30)
    clocks.step(FWD)
    await run(svc)
    assert rec.to("lead") == []  # unshifted, the 60 s rung would go out at once
    clocks.advance(29)
    await run(svc)
    assert rec.to("lead") == []
    clocks.advance(1)
    await run(svc)
    assert len(rec.to("lead")) == 1
    svc.store.close()


async def test_backward_step_new_occurrence_is_notified_at_once(tmp_path: Path) -> None:
    """The fault suite's case: an alert resolved while the clock was ahead fires again after the step back."""
    clocks, rec = Clocks(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_by=["..."], group_wait_s=0, group_interval_s=0,
                             repeat_interval_s=86400, send_resolved=True), reopen_window_s=0.0)
    svc = make(tmp_path, clocks, rec, cfg)
    clocks.step(FWD)
    svc.clock()  # the service notices the forward step
    feed(svc, tr("e1", T0 + FWD))  # stamped on the stepped clock (the platform's own alerts are)
    await run(svc)
    clocks.advance(5)
    feed(svc, tr("e1", T0 + FWD + 5, "resolved"))
    await run(svc)
    assert len(rec.to("room")) == 2 and svc.open == {}
    clocks.advance(5)
    clocks.step(BACK)
    feed(svc, tr("e1", T0 + 10 + FWD + BACK))  # 7,790 s "before" the end: a new alert
    await run(svc)
    assert svc.counters["transition_new"] == 2 and svc.counters.get("transition_reopened", 0) == 0
    assert len(rec.to("room")) == 3
    svc.store.close()


async def test_backward_step_keeps_group_interval_short(tmp_path: Path) -> None:
    """A group that flushed while the clock was ahead sends its next change group_interval later, not 2 h later."""
    clocks, rec = Clocks(), Recorder()
    cfg = config(route=Route(name="root", receivers=["room"], group_by=["rule"], group_wait_s=0,
                             group_interval_s=30, repeat_interval_s=0))
    svc = make(tmp_path, clocks, rec, cfg)
    feed(svc, tr("e1", T0))
    await run(svc)
    assert len(rec.to("room")) == 1
    clocks.advance(10)
    clocks.step(BACK)
    feed(svc, tr("e2", T0 + 10))  # same group: waits for group_interval after the last flush
    await run(svc)
    assert len(rec.to("room")) == 1
    clocks.advance(20)
    await run(svc)
    assert len(rec.to("room")) == 2 and svc.counters["clock_steps"] == 1
    svc.store.close()


async def test_injected_clock_without_detector_never_shifts(tmp_path: Path) -> None:
    clocks, rec = Clocks(), Recorder()
    svc = AlertingService(config(), mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "s",
                          clock=clocks, transport=rec)
    assert svc.clock_steps is None
    feed(svc, tr("e1", T0))
    clocks.step(FWD)  # tests move injected clocks on purpose: that is time passing, not a step
    await run(svc)
    assert svc.counters.get("clock_steps", 0) == 0
    assert all(r.status is AlertStatus.FIRING and r.ack_overdue for r in svc.open.values())
    svc.store.close()
