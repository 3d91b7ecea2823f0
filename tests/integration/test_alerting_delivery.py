"""Real deliveries through Apprise: a local HTTP receiver (json://), a local SMTP server (aiosmtpd),
MQTT to a real Mosquitto (mqtt://), and failover from a failing channel to the next one."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Iterator
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from alerting.config import AlertingConfig, ApiConfig, Person, Receiver, Retry, Route
from alerting.evidence import EvidenceConfig
from alerting.inbox import NotificationInbox
from alerting.sender import AppriseSender, Message
from alerting.service import AlertingService
from alerting.templates import mask_url
from broker.contracts import Kind, Severity, Transition, encode, utcnow
from broker.mosquitto import MosquittoProcess, free_port
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient


class Mailbox:
    """aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


@pytest.fixture
async def inbox() -> AsyncIterator[NotificationInbox]:
    box = await NotificationInbox(fail_paths={"/broken"}).start()
    yield box
    await box.stop()


def transition(device: str, snapshot_url: str | None = None) -> Transition:
    now = utcnow()
    return Transition(ts=now, fingerprint=f"trapped:{device}", rule="trapped_passenger", status="firing",
                      severity=Severity.CRITICAL, kind=Kind.ELEVATOR, device_id=device, site="tower-a",
                      summary="电梯困人", summary_en="Passenger trapped", source_ts=now, snapshot_url=snapshot_url)


async def wait_until(pred: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def test_email_mqtt_and_failover_through_the_service(
        mosquitto: MosquittoProcess, smtp: tuple[Mailbox, int], inbox: NotificationInbox, tmp_path: Path) -> None:
    mailbox, smtp_port = smtp
    mail_url = f"mailto://127.0.0.1:{smtp_port}?from=vigil@example.com&to=duty@example.com&mode=insecure"
    mqtt_url = f"mqtt://{mosquitto.host}:{mosquitto.port}/control-room/pager"
    cfg = AlertingConfig(
        receivers=[Receiver(name="mail", urls=[mail_url]), Receiver(name="pager", urls=[mqtt_url], locale="en")],
        people=[Person(id="op", roles=["operator"], channels=[inbox.url("/broken"), inbox.url("/op")])],
        route=Route(name="root", receivers=["mail", "pager", "person:op"], group_wait_s=0.0),
        escalation_policies=[], inhibit_rules=[], api=ApiConfig(enabled=False),
        retry=Retry(attempts=2, backoff_s=0.05, timeout_s=5.0),
        # the stand-in camera agent serving snapshots is an allow-listed evidence host
        evidence=EvidenceConfig(hosts=[f"http://127.0.0.1:{inbox.port}"]))
    pager: list[MqttMessage] = []
    listener = MqttClient(mosquitto.url, "pager-listener", clean_start=True)
    listener.subscribe("control-room/pager", pager.extend, qos=0)
    await listener.start()
    mqtt = MqttClient(mosquitto.url, "alerting-delivery", clean_start=True)
    svc = AlertingService(cfg, mqtt=mqtt, state_dir=tmp_path / "state")
    svc.attach()
    await mqtt.start()
    task = asyncio.create_task(svc.run())
    try:
        snap = f"http://127.0.0.1:{inbox.port}/snapshots/elv-1.jpg"
        svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/elv-1", encode(transition("elv-1", snap)), 1,
                                        False, 0.0)])
        await wait_until(lambda: mailbox.messages and pager and inbox.received)
        assert "电梯困人" in str(mailbox.messages[0]["Subject"])
        assert "Passenger trapped" in pager[0].payload.decode()
        assert inbox.received[0].path == "/op"
        assert inbox.received[0].attachments == 1  # the camera snapshot travels with the notification
        assert f"/alerts/{next(iter(svc.open))}" in inbox.received[0].body  # the console link
        await wait_until(lambda: len(svc.store.notifications(status="sent")) == 3)
        op_row = next(r for r in svc.store.notifications() if r.recipient == "person:op")
        attempts = svc.store.attempts(op_row.id)
        # two tries on the broken channel (retry with backoff), then failover to the second one
        assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, False), (1, True)]
        assert all("***" in a["channel"] for a in attempts)
        assert op_row.channel == mask_url(inbox.url("/op"))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await mqtt.stop()
        await listener.stop()
        svc.store.close()


async def test_sender_does_not_block_the_event_loop(inbox: NotificationInbox) -> None:
    """A slow channel (an unreachable SMTP server's connect timeout) runs in the thread pool."""
    sender = AppriseSender(Retry(attempts=1, timeout_s=2.0), threads=2)
    # a listening socket that never answers SMTP's greeting
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(5), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        slow = asyncio.create_task(sender.deliver(
            [f"mailto://127.0.0.1:{port}?from=a@example.com&to=b@example.com&mode=insecure&cto=1"],
            Message("t", "b")))
        fast = await sender.deliver([inbox.url("/fast")], Message("t", "b"))
        assert fast.ok and fast.handed_at is not None
        await asyncio.sleep(0.5)
        assert ticks >= 20  # the loop kept running while the SMTP delivery hung in its thread
        result = await slow
        assert not result.ok and result.error is not None and "127.0.0.1" not in result.error
    finally:
        t.cancel()
        server.close()
        sender.close()
