"""A notification the old alerting holder sent after its last snapshot is not sent again by the new holder.

Real nats-server (JetStream KV), real alerting stages, a real HTTP receiver (Apprise ``json://``). Holder A
takes an alert's firing transition, commits it and snapshots its database while the notification is
still pending in its outbox, then sends it (recorded in ``vigil_notified``) and "dies" before any later
snapshot. Holder B restores that snapshot (the notification pending, as far as it can tell) and starts
alerting: it finds the record and marks the notification sent instead of sending it. Without the
record the new holder would send it a second time (checked too: B' without the record sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, transition_topic
from broker.mosquitto import free_port
from broker.mqtt import Message
from broker.nats_server import NatsNode, NatsNodeProcess
from tests.cluster.harness import js_connect, wait_for
from tests.faults.harness import Receiver
from vigil.cluster_alerting import DB_NAME, DatabaseSnapshots, SentNotifications, alerting_buckets
from vigil.config import parse_config


class _Quiet:
    """What alerting publishes on (alert states): nothing listens in this test."""

    def subscribe(self, *_: Any, **__: Any) -> None:
        pass

    def publish_nowait(self, *_: Any, **__: Any) -> None:
        pass


def _alerting(receiver_url: str, state: Path) -> AlertingService:
    cfg = parse_config({
        "node": "t", "services": ["alerting"],
        "alerting": {
            "locale": "en", "receivers": [{"name": "duty", "urls": [receiver_url]}], "people": [],
            "escalation_policies": [], "inhibit_rules": [], "api": {"enabled": False}, "reopen_window_s": 0,
            "retry": {"attempts": 2, "backoff_s": 0.1, "backoff_max_s": 0.2, "timeout_s": 3},
            "route": {"receivers": ["duty"], "group_by": ["..."], "group_wait_s": 0, "group_interval_s": 0,
                      "repeat_interval_s": 86400, "send_resolved": True},
        },
    })
    return AlertingService(cfg.alerting, mqtt=_Quiet(), ingest=None, state_dir=state)  # type: ignore[arg-type]


async def _run_until(service: AlertingService, done: Any, timeout: float, what: str) -> None:
    task = asyncio.get_running_loop().create_task(service.run())
    try:
        await wait_for(done, timeout, what)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(120)
async def test_a_sent_notification_is_not_sent_again_after_takeover(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    store = tmp_path / "nats" / "js"
    spec = NatsNode("solo", "127.0.0.1", free_port(), free_port(), free_port(), store)
    # One server without a cluster block (a cluster of one waits for routes forever): JetStream and MQTT.
    node = NatsNodeProcess(spec, f'server_name: solo\nlisten: 127.0.0.1:{spec.client_port}\n'
                                 f'jetstream {{\n  store_dir: "{store}"\n}}\n'
                                 f'mqtt {{\n  listen: 127.0.0.1:{spec.mqtt_port}\n}}\n')
    node.start()
    node.wait_listening()
    nc = None
    try:
        nc, js = await js_connect([node.node.url])
        snaps_kv, sent_kv = await wait_for(lambda: _buckets(js), 30, "JetStream ready")

        # Holder A: the alert fires; the snapshot is taken while its notification is pending.
        a_state = tmp_path / "a"
        a = _alerting(receiver.url("duty"), a_state)
        a.attach()
        SentNotifications(sent_kv, "a").install(a)
        t = Transition(ts=datetime.now(UTC), fingerprint="elevator/e1/level", rule="level", status="firing",
                       severity=Severity.CRITICAL, kind=Kind.ELEVATOR, device_id="e1", summary_en="level high e1",
                       started_at=datetime.now(UTC))
        a.on_transitions([Message(transition_topic(t.kind, t.device_id), encode(t), 1, False, time.time())])
        snaps = DatabaseSnapshots(snaps_kv, "a")
        snaps.open(a_state / DB_NAME)
        await snaps.save(1)
        assert [r.status for r in a.store.pending_notifications()] == ["pending"]
        await _run_until(a, lambda: len(receiver.on("duty")) == 1, 30, "holder A's notification")
        a.close()
        snaps.close()
        await asyncio.sleep(0.5)  # (a.run ended: the sent record is written before it returns)
        assert len(receiver.on("duty")) == 1

        # Holder B restores A's last snapshot: the notification looks pending there.
        seq, image = await DatabaseSnapshots(snaps_kv, "b").load()
        assert seq == 1 and image is not None
        for name, guarded in (("b", True), ("b2", False)):
            state = tmp_path / name
            state.mkdir()
            (state / DB_NAME).write_bytes(image)
            b = _alerting(receiver.url("duty"), state)
            b.attach()
            assert len(b.open) == 1
            assert [r.status for r in b.store.pending_notifications()] == ["pending"]
            if guarded:
                sent = SentNotifications(sent_kv, "b")
                sent.install(b)
                await _run_until(b, lambda: sent.counters["sent_elsewhere"] == 1, 30, "the record found")  # noqa: B023
                rows = b.store.notifications()
                assert [(r.status, r.error) for r in rows] == [("sent", "sent by an earlier alerting holder")]
                await asyncio.sleep(1.0)
                assert len(receiver.on("duty")) == 1, "sent again by the new holder"
            else:  # the same restore without the record: the duplicate the record prevents
                await _run_until(b, lambda: len(receiver.on("duty")) == 2, 30, "the unguarded second send")
            b.close()
    finally:
        if nc is not None:
            await nc.close()
        node.stop()
        await receiver.stop()


async def _buckets(js: Any) -> Any:
    try:
        return await alerting_buckets(js, 1)
    except Exception:
        return None
