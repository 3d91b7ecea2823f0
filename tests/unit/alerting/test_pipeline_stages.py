"""The alerting pipeline as a list of stages: its order, the protocol, and what each stage leaves in a batch.

The service runs on a fixed clock with an MQTT client that is never started (publishes stay local) and a
transport that records instead of Apprise; each test drives ``service.pipeline`` directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
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
)
from alerting.muting import SilenceEntry
from alerting.pipeline import Arrival, Batch, Pipeline, Stage
from alerting.sender import Delivered, Message, SendResult
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

T0 = 1_790_000_000.0
STAGES = ["dedup", "decode", "lifecycle", "grouping", "muting", "targets", "render", "storm", "outbox"]


def tr(device: str, status: str = "firing", severity: Severity = Severity.CRITICAL) -> Transition:
    at = datetime.fromtimestamp(T0, UTC)
    return Transition(ts=at, fingerprint=f"trapped:{device}", rule="trapped_passenger", status=status,  # type: ignore[arg-type]
                      severity=severity, kind=Kind.ELEVATOR, device_id=device, site="tower-a", summary="电梯困人",
                      source_ts=at)


def arrival(t: Transition) -> Arrival:
    payload = encode(t)
    return Arrival(payload, T0, None, MqttMessage("vigil/v1/transitions/elevator/x", payload, 1, False, T0))


def make(tmp_path: Path, max_per_minute: int = 1000) -> tuple[AlertingService, list[str]]:
    sent: list[str] = []

    def transport(url: str, msg: Message) -> SendResult:
        sent.append(url)
        return Delivered()

    cfg = AlertingConfig(
        receivers=[Receiver(name="room", urls=["fake://room"])],
        people=[Person(id="op", roles=["operator"], channels=["fake://op"]),
                Person(id="lead", roles=["shift_lead"], channels=["fake://lead"])],
        escalation_policies=[EscalationPolicy(name="135", steps=[
            EscalationStep(delay_s=0, targets=["role:operator"]),
            EscalationStep(delay_s=60, targets=["role:shift_lead"])])],
        route=Route(name="root", receivers=["room"], group_by=["site"], group_wait_s=0, group_interval_s=30,
                    escalation="135"),
        inhibit_rules=[], api=ApiConfig(enabled=False), retry=Retry(attempts=1), users=[],
        storm=Storm(max_per_minute=max_per_minute))
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path,
                          clock=lambda: T0, transport=transport)
    return svc, sent


def test_the_pipeline_is_a_visible_ordered_list_of_stages(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    assert svc.pipeline.names() == STAGES
    for name in STAGES:
        stage = svc.pipeline.stage(name)
        assert isinstance(stage.name, str) and callable(stage.process)
    svc.close()


def test_run_from_a_named_stage_skips_the_ones_before() -> None:
    seen: list[str] = []

    class Step:
        def __init__(self, name: str) -> None:
            self.name = name

        def process(self, batch: Batch) -> Batch:
            seen.append(self.name)
            return batch

    steps: list[Stage] = [Step("a"), Step("b"), Step("c")]
    p = Pipeline(steps)
    p.run(Batch(T0), start="b")
    assert seen == ["b", "c"]
    with pytest.raises(ValueError):
        Pipeline([Step("a"), Step("a")])
    with pytest.raises(KeyError):
        p.run(Batch(T0), start="nope")


def test_each_stage_leaves_its_items_for_the_next(tmp_path: Path) -> None:
    svc, sent = make(tmp_path)
    first = arrival(tr("e1"))
    garbage = Arrival(b"{not json", T0, None, MqttMessage("vigil/v1/transitions/x/y", b"{not json", 1, False, T0))
    batch = Batch(T0, arrivals=[first, arrival(tr("e1")), garbage, arrival(tr("e2"))])
    p = svc.pipeline
    p.stage("dedup").process(batch)
    assert len(batch.arrivals) == 3 and svc.counters["transitions_duplicate"] == 1  # the same payload twice
    p.stage("decode").process(batch)
    assert [a.transition.device_id for a in batch.arrivals if a.transition] == ["e1", "e2"]
    assert svc.counters["rejected"] == 1
    p.stage("lifecycle").process(batch)
    assert [c.change for c in batch.changes] == ["new", "new"] and len(svc.open) == 2
    p.stage("grouping").process(batch)
    assert len(batch.flushes) == 1 and sorted(batch.flushes[0].firing) == sorted(svc.open)  # one site, one group
    p.stage("muting").process(batch)
    (notice,) = batch.notices
    assert notice.kind == "firing" and notice.targets == ["room", "role:operator"] and notice.recipients is None
    p.stage("targets").process(batch)
    assert notice.recipients == ["receiver:room", "person:op"]
    p.stage("render").process(batch)
    assert [(x.recipient, x.status) for x in batch.letters] == [("receiver:room", "pending"), ("person:op", "pending")]
    assert batch.letters[0].text.title.endswith("等 2 条")  # one notification for both alerts of the group
    p.stage("storm").process(batch)
    p.stage("outbox").process(batch)
    assert len(batch.queued) == 2 and sent == []  # written to the outbox, nothing sent before the commit
    svc.commit()
    assert svc.delivery.staged == [] and svc.delivery.backlog  # no running workers here: it stays pending
    svc.close()


def test_muting_stage_takes_silenced_alerts_out_of_a_flush(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    svc.silences.put(SilenceEntry(id="s1", matchers=["site=tower-a"], starts_at=T0 - 1, ends_at=T0 + 3600,
                                  author="chen", comment="年检"))
    batch = svc.pipeline.run(Batch(T0, arrivals=[arrival(tr("e1"))]))
    assert len(batch.flushes) == 1 and batch.notices == [] and batch.queued == []
    assert svc.counters["flushes_muted"] == 1 and svc.counters["muted_silence"] == 1
    svc.close()


def test_storm_stage_holds_what_exceeds_the_rate(tmp_path: Path) -> None:
    svc, _ = make(tmp_path, max_per_minute=1)
    svc.pipeline.run(Batch(T0, arrivals=[arrival(tr("e1"))]))
    second = Transition(**{**msgspec.structs.asdict(tr("e9")), "site": "tower-b"})  # another group, same people
    batch = svc.pipeline.run(Batch(T0 + 1, arrivals=[arrival(second)]))
    assert [x.status for x in batch.letters] == ["digested", "digested"] and batch.queued == []
    assert svc.storm.held() == 2
    svc.close()


async def test_timer_notices_join_at_targets_with_their_recipients(tmp_path: Path) -> None:
    svc, sent = make(tmp_path)
    svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/e1", encode(tr("e1")), 1, False, T0)])
    await svc.deliver_pending()
    assert sorted(sent) == ["fake://op", "fake://room"]
    batch = svc.timers.collect(T0 + 60)
    (notice,) = batch.notices
    assert notice.kind == "escalation" and notice.recipients == ["person:lead"] and notice.step == 2
    svc.pipeline.run(batch, start="targets")
    assert len(batch.queued) == 1
    await svc.deliver_pending()
    assert sent[-1] == "fake://lead"
    svc.close()
