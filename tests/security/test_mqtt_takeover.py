"""Finding 5: an account must not take over another account's client id (and its persistent session).

Before the fix every account shared one listener with free client ids: a read-only observer that
connected as ``vigil-platform-1`` kicked the platform off and inherited its session, including the
messages queued for it while it was away.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from broker.mosquitto import MosquittoProcess, running_mosquitto
from broker.mqtt import Message, MqttClient, MqttError
from tests.security.mqtt_rig import (
    PASSWORDS,
    PLATFORM_CLIENT_ID,
    REGISTRY,
    broker_log,
    mqtt_sub,
    received_lines,
    url,
    wait_until,
)

TELEMETRY = "vigil/v1/elevator/elev-1/telemetry"


def _device_publishes(broker: MosquittoProcess, count: int, tag: str) -> None:
    lines = "\n".join(f'{{"ts":"2026-11-26T05:00:00Z","metrics":{{"n":{i}}},"tag":"{tag}"}}' for i in range(count))
    proc = subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-L", f"{url(broker, 'elev-1')}/{TELEMETRY}", "-q", "1",
                           "-l"], input=lines + "\n", capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def broker(tmp_path: Path) -> MosquittoProcess:
    with running_mosquitto(tmp_path / "broker", REGISTRY) as proc:
        yield proc  # type: ignore[misc]


async def test_no_account_can_claim_the_platform_client_id_or_its_session(broker: MosquittoProcess) -> None:
    got: list[Message] = []
    platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
    platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
    await platform.start()
    await asyncio.sleep(0.3)
    # The platform goes away for a moment (a restart): its persistent session keeps what is published.
    await platform.stop()
    await asyncio.to_thread(_device_publishes, broker, 5, "while-away")

    # Every lower account tries to resume the platform's session under its client id, on every listener.
    stolen: list[str] = []
    for attacker in ("control-room", "duty-operator", "vigil-gw-elev", "elev-2"):
        proc = await asyncio.to_thread(mqtt_sub, url(broker, attacker), "vigil/v1/#", client_id=PLATFORM_CLIENT_ID,
                                       persistent=True, seconds=1)
        stolen += received_lines(proc)
    assert stolen == [], "an attacker received messages queued for the platform's session"
    log = broker_log(broker)
    for attacker in ("control-room", "duty-operator", "vigil-gw-elev", "elev-2"):
        # Mosquitto replaced the requested client id by the account name.
        assert f"as {attacker} (p5" in log, attacker

    # Credentials of a lower account do not open the platform listener at all.
    for attacker in ("control-room", "vigil-gw-elev", "elev-1"):
        own_password = PASSWORDS[attacker]
        intruder = MqttClient(f"mqtt://{attacker}:{own_password}@127.0.0.1:{broker.platform_port}", PLATFORM_CLIENT_ID)
        with pytest.raises(MqttError, match="refused"):
            await intruder.start(timeout=5)

    # The platform comes back to its own, untouched session and stays connected while attacks go on.
    platform = MqttClient(url(broker, "vigil-platform"), PLATFORM_CLIENT_ID)
    platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
    await platform.start()
    try:
        await wait_until(lambda: len(got) >= 5, 10, "the messages queued while the platform was away")
        for attacker in ("control-room", "elev-2"):
            await asyncio.to_thread(mqtt_sub, url(broker, attacker), "vigil/v1/#", client_id=PLATFORM_CLIENT_ID,
                                    persistent=True, seconds=1)
        await asyncio.to_thread(_device_publishes, broker, 3, "after-attack")
        await wait_until(lambda: len(got) >= 8, 10, "messages published after the attack")
        assert platform.connected and platform.counters["disconnects"] == 0
    finally:
        await platform.stop()
    assert sum(b"while-away" in m.payload for m in got) == 5
    assert sum(b"after-attack" in m.payload for m in got) == 3


async def test_two_connections_of_one_field_account_do_not_share_a_session_with_others(
        broker: MosquittoProcess) -> None:
    """A device's session is its own: another device's credentials never reach its command queue."""
    command = "vigil/v1/elevator/elev-1/command"
    first = await asyncio.to_thread(mqtt_sub, url(broker, "elev-1"), command, client_id="box", persistent=True,
                                    seconds=1)
    assert first.returncode in (0, 27), first.stderr  # 27: -W timed out, the normal end here
    async with MqttClient(url(broker, "vigil-platform"), "cmd-sender", clean_start=True) as platform:
        await platform.publish(command, b'{"cmd":"reboot"}')
    # elev-2 asks for the same client id "box": it gets its own session (named elev-2), not elev-1's commands.
    other = await asyncio.to_thread(mqtt_sub, url(broker, "elev-2"), "vigil/v1/#", client_id="box", persistent=True,
                                    seconds=1)
    assert received_lines(other) == []
    mine = await asyncio.to_thread(mqtt_sub, url(broker, "elev-1"), command, client_id="box", persistent=True,
                                   seconds=1)
    assert received_lines(mine) == [f'{command} {{"cmd":"reboot"}}']
