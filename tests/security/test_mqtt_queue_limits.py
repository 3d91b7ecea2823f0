"""Finding 6: persistent sessions of low-role accounts must not queue the platform's traffic.

Before the fix any account could open a persistent session subscribed to ``vigil/v1/#`` and go
away: Mosquitto then kept up to 1,000,000 messages for it, for 14 days. Now read-only accounts
have QoS 0 only (an offline session queues nothing), devices and gateways can read only command
topics, sessions expire after 7 days and every session's queue is capped in bytes.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port, running_mosquitto
from broker.mqtt import Message, MqttClient
from tests.security.mqtt_rig import PLATFORM_CLIENT_ID, REGISTRY, mqtt_sub, received_lines, url, wait_until

FLOOD = 2000


async def _platform_floods(broker: MosquittoProcess, count: int, payload: bytes = b'{"v":1}') -> None:
    async with MqttClient(url(broker, "vigil-platform"), "flooder", clean_start=True, max_pending=500) as client:
        for i in range(count):
            client.publish_nowait(f"vigil/v1/elevator/elev-{1 + i % 2}/telemetry", payload)
            if i % 200 == 199:
                await client.flush()
        client.publish_nowait("vigil/v1/elevator/elev-1/command", b'{"cmd":"hold"}')
        await client.flush()


async def test_offline_low_role_sessions_queue_nothing_while_the_platform_session_keeps_everything(
        tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker", REGISTRY) as broker:
        # Each low-role account opens a persistent session on everything it can name, then leaves.
        for account, client_id in (("control-room", "cr"), ("duty-operator", "op"), ("vigil-gw-elev", "gw"),
                                   ("elev-1", "box")):
            first = await asyncio.to_thread(mqtt_sub, url(broker, account), "#", client_id=client_id,
                                            persistent=True, seconds=1)
            assert first.returncode in (0, 27), first.stderr  # 27: the -W idle timeout ended it
        # The platform's own persistent session, offline too (the positive control).
        got: list[Message] = []
        platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
        platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
        await platform.start()
        await platform.stop()

        await _platform_floods(broker, FLOOD)

        queued = {}
        for account, client_id in (("control-room", "cr"), ("duty-operator", "op"), ("vigil-gw-elev", "gw"),
                                   ("elev-1", "box")):
            proc = await asyncio.to_thread(mqtt_sub, url(broker, account), "#", client_id=client_id,
                                           persistent=True, seconds=1)
            queued[account] = received_lines(proc)
        # Observers and operators: nothing. Gateways and devices: only the command meant for them.
        assert queued["control-room"] == [] and queued["duty-operator"] == []
        assert queued["vigil-gw-elev"] == ['vigil/v1/elevator/elev-1/command {"cmd":"hold"}']
        assert queued["elev-1"] == ['vigil/v1/elevator/elev-1/command {"cmd":"hold"}']

        platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
        platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
        await platform.start()
        try:
            await wait_until(lambda: len(got) >= FLOOD, 30, "the platform's queued messages")
        finally:
            await platform.stop()
        assert len(got) == FLOOD
        conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
        assert "persistent_client_expiration 7d" in conf and "max_queued_bytes " in conf


async def test_the_byte_cap_bounds_any_offline_session(tmp_path: Path) -> None:
    """Even the platform's session cannot grow without bound: ``max_queued_bytes`` stops it."""
    cap = 64 * 1024
    layout = BrokerLayout(data_dir=tmp_path / "broker", port=free_port(), max_queued_bytes=cap,
                          max_inflight_messages=10)
    broker = MosquittoProcess(layout, REGISTRY)
    broker.start()
    try:
        got: list[Message] = []
        platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
        platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
        await platform.start()
        await platform.stop()
        payload = b'{"v":1,"pad":"' + b"x" * 1000 + b'"}'
        await _platform_floods(broker, 500, payload)  # ~500 KiB offered to the offline session
        platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
        platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
        await platform.start()
        await wait_until(lambda: len(got) > 0, 10, "the messages kept for the platform")
        await asyncio.sleep(1.0)  # the rest of what was kept follows at once; nothing more is coming
        await platform.stop()
        print(f"kept {len(got)} of 500 messages of {len(payload)} bytes under a {cap}-byte cap")
        kept = len(got)
        # What fits in the cap plus the in-flight window; the rest was dropped, not stored.
        assert 0 < kept <= cap // len(payload) + 10 + 1, kept
        assert re.search(rf"^max_queued_bytes {cap}$", (tmp_path / "broker" / "mosquitto.conf").read_text(), re.M)
    finally:
        broker.stop()
