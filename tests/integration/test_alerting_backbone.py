"""Alerting end to end over a real Mosquitto: transition in, Alert out, notification delivered by Apprise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerting.config import AlertingConfig, ApiConfig, Receiver, Route
from alerting.inbox import NotificationInbox
from alerting.service import AlertingService
from broker.contracts import ALERTS_FILTER, Kind, Severity, Transition, decode_alert, encode, transition_topic
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient


def transition(status: str = "firing", device: str = "elv-1", source_ts: datetime | None = None,
               ts: datetime | None = None) -> Transition:
    now = datetime.now(UTC)
    return Transition(ts=ts or now, fingerprint=f"trapped:{device}", rule="trapped_passenger", status=status,  # type: ignore[arg-type]
                      severity=Severity.CRITICAL, kind=Kind.ELEVATOR, device_id=device, site="tower-a",
                      summary="电梯困人", summary_en="Passenger trapped", source_ts=source_ts or now)


@pytest.fixture
async def inbox() -> AsyncIterator[NotificationInbox]:
    box = await NotificationInbox().start()
    yield box
    await box.stop()


def make_config(inbox: NotificationInbox) -> AlertingConfig:
    return AlertingConfig(
        receivers=[Receiver(name="control-room", urls=[inbox.url("/room")])],
        route=Route(name="root", receivers=["control-room"], group_by=["rule", "site"], group_wait_s=0.0,
                    group_interval_s=0.5, repeat_interval_s=3600.0),
        escalation_policies=[], inhibit_rules=[], api=ApiConfig(enabled=False),
    )


async def running(svc: AlertingService) -> asyncio.Task[None]:
    return asyncio.create_task(svc.run())


async def test_transition_to_alert_and_notification(mosquitto: MosquittoProcess, inbox: NotificationInbox,
                                                    tmp_path: Path) -> None:
    mqtt = MqttClient(mosquitto.url, "alerting-test", clean_start=True)
    svc = AlertingService(make_config(inbox), mqtt=mqtt, state_dir=tmp_path / "state")
    svc.attach()
    await mqtt.start()
    observer = MqttClient(mosquitto.url, "observer", clean_start=True)
    seen: list[Message] = []
    observer.subscribe(ALERTS_FILTER, seen.extend)
    await observer.start()
    task = await running(svc)
    try:
        src = datetime.now(UTC) - timedelta(milliseconds=50)
        await observer.publish(transition_topic("elevator", "elv-1"), encode(transition(source_ts=src)))
        got = await inbox.wait_for(1)
        assert got[0].path == "/room"
        assert "电梯困人" in got[0].title
        # The alert's state arrives on MQTT (retained while open).
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.02)
        alert = decode_alert(seen[0].payload)
        assert alert.status == "firing" and alert.device_id == "elv-1"
        # The hand-off to Apprise is recorded with the device timestamp, so latency can be measured.
        async with asyncio.timeout(5):
            while not svc.store.notifications(status="sent"):
                await asyncio.sleep(0.02)
        row = svc.store.notifications(status="sent")[0]
        assert row.handed_at is not None and row.source_ts == pytest.approx(src.timestamp())
        assert 0.05 <= row.handed_at - src.timestamp() < 2.0
        assert svc.stats()["handoff_source_ms_p99"] >= 50.0
        # A late subscriber sees the open alert retained.
        late = MqttClient(mosquitto.url, "late", clean_start=True)
        retained: list[Message] = []
        late.subscribe(ALERTS_FILTER, retained.extend)
        await late.start()
        async with asyncio.timeout(5):
            while not retained:
                await asyncio.sleep(0.02)
        assert retained[0].retain and decode_alert(retained[0].payload).id == alert.id
        await late.stop()
        # Resolution: resolved state published, then the retained message cleared; a resolved notification.
        await observer.publish(transition_topic("elevator", "elv-1"), encode(transition("resolved")))
        got = await inbox.wait_for(2)
        assert "已恢复" in got[1].title
        async with asyncio.timeout(5):
            while not any(m.payload == b"" for m in seen):
                await asyncio.sleep(0.02)
        states = [decode_alert(m.payload).status for m in seen if m.payload]
        assert states[-1] == "resolved"
        late2 = MqttClient(mosquitto.url, "late2", clean_start=True)
        retained2: list[Message] = []
        late2.subscribe(ALERTS_FILTER, retained2.extend)
        await late2.start()
        await asyncio.sleep(0.3)
        assert retained2 == []
        await late2.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await observer.stop()
        await mqtt.stop()
        svc.store.close()


async def test_restart_keeps_open_alert_and_sends_nothing_twice(mosquitto: MosquittoProcess,
                                                                 inbox: NotificationInbox, tmp_path: Path) -> None:
    cfg = make_config(inbox)
    publisher = MqttClient(mosquitto.url, "pub", clean_start=True)
    await publisher.start()
    for round_ in range(2):
        mqtt = MqttClient(mosquitto.url, "alerting-restart", clean_start=round_ == 0)
        svc = AlertingService(cfg, mqtt=mqtt, state_dir=tmp_path / "state")
        svc.attach()
        await mqtt.start()
        task = await running(svc)
        try:
            if round_ == 0:
                await publisher.publish(transition_topic("elevator", "elv-2"), encode(transition(device="elv-2")))
                await inbox.wait_for(1)
                await asyncio.sleep(0.2)
            else:
                assert len(svc.open) == 1
                # The same firing again (a redelivery) is deduplicated into the open alert.
                await publisher.publish(transition_topic("elevator", "elv-2"), encode(transition(device="elv-2")))
                await asyncio.sleep(0.5)
                assert len(svc.open) == 1
                assert svc.counters["transition_updated"] == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await mqtt.stop()
            svc.store.close()
    assert len(inbox.received) == 1
    await publisher.stop()


async def test_real_time_escalation_survives_restart(mosquitto: MosquittoProcess, inbox: NotificationInbox,
                                                      tmp_path: Path) -> None:
    """The service's own timer drives the ladder; a restart between rungs sends the next rung once, on time."""
    from alerting.config import EscalationPolicy, EscalationStep, Person, Retry

    cfg = AlertingConfig(
        people=[Person(id=p, roles=[p], channels=[inbox.url(f"/{p}")]) for p in ("operator", "lead", "chief")],
        escalation_policies=[EscalationPolicy(name="fast", steps=[
            EscalationStep(delay_s=0, targets=["role:operator"]), EscalationStep(delay_s=0.6, targets=["role:lead"]),
            EscalationStep(delay_s=2.0, targets=["role:chief"])])],
        receivers=[], route=Route(name="root", escalation="fast", group_wait_s=0.0), inhibit_rules=[],
        api=ApiConfig(enabled=False), tick_s=0.1, retry=Retry(attempts=1))
    publisher = MqttClient(mosquitto.url, "pub-esc", clean_start=True)
    await publisher.start()
    started = 0.0
    for round_ in range(2):
        mqtt = MqttClient(mosquitto.url, "alerting-esc", clean_start=round_ == 0)
        svc = AlertingService(cfg, mqtt=mqtt, state_dir=tmp_path / "state")
        svc.attach()
        await mqtt.start()
        task = await running(svc)
        try:
            if round_ == 0:
                started = datetime.now(UTC).timestamp()
                await publisher.publish(transition_topic("elevator", "elv-7"),
                                        encode(transition(device="elv-7", ts=datetime.now(UTC))))
                await inbox.wait_for(1, path="/operator")
                lead = await inbox.wait_for(1, path="/lead", timeout=5)
                assert 0.5 <= lead[0].received_at - started < 1.5
            else:
                chief = await inbox.wait_for(1, path="/chief", timeout=5)
                assert 1.9 <= chief[0].received_at - started < 3.0
                await asyncio.sleep(0.5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await mqtt.stop()
            svc.store.close()
    assert [r.path for r in inbox.received] == ["/operator", "/lead", "/chief"]
    await publisher.stop()
