"""Finding 10: with a registry, the platform hears only registered devices.

Before the fix ``DeviceIngest.known_device`` was never set: a gateway account (which may publish
for every device of its kinds) could invent devices, and their data reached rules and storage.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from broker.contracts import DEAD_LETTER_FILTER, RejectReason, decode_dead_letter
from broker.ingest import RegisteredDevices
from broker.mosquitto import running_mosquitto
from broker.mqtt import Message, MqttClient
from tests.security.mqtt_rig import REGISTRY, running_platform, url, wait_until

GOOD = b'{"v":1,"ts":"2026-11-26T05:00:00Z","metrics":{"speed_mps":1.0}}'


async def test_messages_of_unregistered_devices_are_counted_and_dead_lettered(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker", REGISTRY) as broker:
        letters: list[Message] = []
        async with MqttClient(url(broker, "control-room"), "dead-letter-watch", clean_start=True) as observer:
            observer.subscribe(DEAD_LETTER_FILTER, letters.extend)
            async with running_platform(broker, tmp_path / "platform") as platform, \
                    MqttClient(url(broker, "vigil-gw-elev"), "gw", clean_start=True) as gateway:
                for device in ("elev-1", "elev-999", "elev-2", "ghost-7"):
                    await gateway.publish(f"vigil/v1/elevator/{device}/telemetry", GOOD)
                await wait_until(lambda: platform.ingest.accepted + sum(platform.ingest.rejected.values()) >= 4,
                                 15, "the platform to handle four messages")
                await wait_until(lambda: len(letters) >= 2, 10, "two dead letters")
                assert platform.ingest.accepted == 2
                assert platform.ingest.rejected == {RejectReason.UNKNOWN_DEVICE: 2}
                # Registering the device (editing the registry file) lets it in without a restart.
                registry_file = tmp_path / "platform" / "registry.yaml"
                registry_file.write_text(registry_file.read_text().replace(
                    "devices:\n",
                    "devices:\n  - {id: elev-999, kind: elevator, password: new-pw, attributes: {rated_speed_mps: 1.0}}\n"))
                async def accepted_after_registration() -> None:
                    while platform.ingest.accepted < 3:
                        await gateway.publish("vigil/v1/elevator/elev-999/telemetry", GOOD)
                        await asyncio.sleep(0.5)
                await asyncio.wait_for(accepted_after_registration(), 15)
        decoded = [decode_dead_letter(m.payload) for m in letters]
        assert sorted({d.topic for d in decoded}) == ["vigil/v1/elevator/elev-999/telemetry",
                                                      "vigil/v1/elevator/ghost-7/telemetry"]
        assert {d.reason for d in decoded} == {RejectReason.UNKNOWN_DEVICE}


def test_a_broken_registry_file_keeps_the_devices_already_known(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("devices:\n  - {id: elev-1, kind: elevator}\n")
    known = RegisteredDevices(path, ["elev-1"], check_every_s=0.0)
    assert known("elev-1") and not known("elev-2")
    path.write_text("devices: [{id: elev-1, kind: toaster}]\n")  # invalid: the reload is refused
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert known("elev-1") and known.reloads == 0
    path.write_text("devices:\n  - {id: elev-1, kind: elevator}\n  - {id: elev-2, kind: elevator}\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert known("elev-2") and known.reloads == 1
