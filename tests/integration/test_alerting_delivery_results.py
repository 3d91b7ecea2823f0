"""Delivery results through real Apprise json:// to a local HTTP receiver: a 503 is retried and then delivered,
a 401 or 400 is permanent (one request, no retry, dead letter with its reason, counted)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alerting.config import AlertingConfig, ApiConfig, Person, Receiver, Retry, Route
from alerting.inbox import NotificationInbox
from alerting.sender import AppriseSender, Delivered, Failed, Message
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, utcnow
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

RETRY = Retry(attempts=3, backoff_s=0.01, backoff_max_s=0.02, timeout_s=5.0)


@pytest.fixture
async def inbox() -> AsyncIterator[NotificationInbox]:
    box = await NotificationInbox().start()
    yield box
    await box.stop()


async def test_503_then_200_is_retried_and_delivered(inbox: NotificationInbox) -> None:
    inbox.answers["/busy"] = [503]
    sender = AppriseSender(RETRY, threads=2)
    try:
        out = await sender.deliver([inbox.url("/busy")], Message("告警", "电梯困人"))
    finally:
        sender.close()
    assert out.ok and out.failure is None
    assert inbox.hits["/busy"] == 2 and [r.path for r in inbox.received] == ["/busy"]
    first, second = out.attempts
    assert first.result == Failed("http_503", True, "http 503") and isinstance(second.result, Delivered)
    assert sender.counters["retries"] == 1 and sender.counters["failed_recoverable"] == 1


@pytest.mark.parametrize("status", [401, 400])
async def test_4xx_is_permanent_and_not_retried(inbox: NotificationInbox, status: int) -> None:
    inbox.answers["/bad"] = [status] * 5
    sender = AppriseSender(RETRY, threads=2)
    try:
        out = await sender.deliver([inbox.url("/bad")], Message("告警", "电梯困人"))
    finally:
        sender.close()
    assert not out.ok and inbox.hits["/bad"] == 1 and len(out.attempts) == 1
    assert out.failure == Failed(f"http_{status}", False, f"http {status}")
    assert out.error == f"http {status} (permanent)" and "127.0.0.1" not in out.error
    assert sender.counters["retries"] == 0 and sender.counters["failed_permanent"] == 1


async def test_permanent_failure_fails_over_to_the_next_channel(inbox: NotificationInbox) -> None:
    inbox.answers["/revoked"] = [401] * 5
    sender = AppriseSender(RETRY, threads=2)
    try:
        out = await sender.deliver([inbox.url("/revoked"), inbox.url("/sms")], Message("告警", "电梯困人"))
    finally:
        sender.close()
    assert out.ok and inbox.hits == {"/revoked": 1, "/sms": 1}
    assert [a.ok for a in out.attempts] == [False, True]


async def test_service_dead_letters_a_permanent_failure_with_its_reason(inbox: NotificationInbox,
                                                                        tmp_path: Path) -> None:
    inbox.answers["/room"] = [401] * 5
    inbox.answers["/op"] = [503]
    cfg = AlertingConfig(
        receivers=[Receiver(name="room", urls=[inbox.url("/room")])],
        people=[Person(id="op", roles=["operator"], channels=[inbox.url("/op")])],
        route=Route(name="root", receivers=["room", "person:op"], group_by=["device_id"], group_wait_s=0),
        escalation_policies=[], inhibit_rules=[], api=ApiConfig(enabled=False), retry=RETRY, users=[])
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path)
    try:
        now = utcnow()
        t = Transition(ts=now, fingerprint="trapped:e1", rule="trapped_passenger", status="firing",
                       severity=Severity.CRITICAL, kind=Kind.ELEVATOR, device_id="e1", site="tower-a",
                       summary="困人", source_ts=now)
        svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/e1", encode(t), 1, False, svc.clock())])
        assert await svc.deliver_pending() == 2
        dead = svc.store.notifications(status="dead")
        sent = svc.store.notifications(status="sent")
        assert [(n.recipient, n.attempts, n.error) for n in dead] == [("receiver:room", 1, "http 401 (permanent)")]
        assert [(n.recipient, n.attempts) for n in sent] == [("person:op", 2)]
        stats = svc.stats()
        assert stats["notifications_dead_permanent"] == 1 and stats["notifications_dead_http_401"] == 1
        assert stats["delivery_failed_permanent"] == 1 and stats["delivery_retries"] == 1
        assert inbox.hits == {"/room": 1, "/op": 2}
    finally:
        svc.sender.close()
        svc.close()
