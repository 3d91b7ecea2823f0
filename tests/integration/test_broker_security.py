"""A real Mosquitto configured from the registry: credentials and ACL are enforced."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from broker.mosquitto import running_mosquitto
from broker.mqtt import Message, MqttClient, MqttError
from broker.registry import DeviceRegistry

REG = DeviceRegistry.from_data({
    "devices": [
        {"id": "elev-1", "kind": "elevator", "password": "pw-one"},
        {"id": "elev-2", "kind": "elevator", "password": "pw-two"},
    ],
    "services": [{"name": "vigil-platform", "role": "platform", "password": "platform-pw"}],
})


def _pub(port: int, user: str, password: str, topic: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1", "-u", user, "-P", password,
         "-t", topic, "-m", '{"ts":"2026-11-26T05:00:00Z","metrics":{"speed_mps":1}}'],
        capture_output=True, text=True, timeout=10,
    )


async def test_devices_publish_only_under_their_own_id_and_passwords_are_checked(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker", REG) as broker:
        url = broker.account_url("vigil-platform", "platform-pw")
        got: list[Message] = []
        async with MqttClient(url, "platform-test", clean_start=True) as platform:
            platform.subscribe("vigil/v1/#", got.extend)
            await asyncio.sleep(0.3)
            own = await asyncio.to_thread(_pub, broker.port, "elev-1", "pw-one", "vigil/v1/elevator/elev-1/telemetry")
            assert own.returncode == 0, own.stderr
            other = await asyncio.to_thread(_pub, broker.port, "elev-1", "pw-one", "vigil/v1/elevator/elev-2/telemetry")
            # MQTT 5: the broker answers the refused QoS 1 publish with "not authorized".
            assert "not authorized" in (other.stderr + other.stdout).lower()
            wrong = await asyncio.to_thread(_pub, broker.port, "elev-1", "bad-password", "vigil/v1/elevator/elev-1/telemetry")
            assert wrong.returncode != 0
            assert "not authorized" in wrong.stderr.lower() or "bad user name or password" in wrong.stderr.lower()
            await asyncio.sleep(0.5)
        assert [m.topic for m in got] == ["vigil/v1/elevator/elev-1/telemetry"]


async def test_mqtt_client_reports_refused_credentials(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker", REG) as broker:
        client = MqttClient(broker.account_url("vigil-platform", "wrong"), "bad-client")
        with pytest.raises(MqttError, match="refused"):
            await client.start(timeout=5)
        assert "wrong" not in client.address.masked()
