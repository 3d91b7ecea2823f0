"""The HJ 212 PW (sent in clear by every logger) must not be the device's MQTT password.

Real Mosquitto with the registry's credentials and ACL, the gateway through its CLI wiring,
loggers over real TCP. Before the fix the gateway checked PW against the device's MQTT
password, so anyone who sniffed one logger frame could log into the broker as that device.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from hj212_harness import Collector, LoggerLink, realtime

from broker.mosquitto import running_mosquitto
from broker.mqtt import MqttClient, MqttError
from broker.registry import DeviceRegistry, RegistryError
from edge.hj212.cli import Hj212GatewayConfig, serve

MN = "010000A8900016F000169DC0"
LEGACY_MN = "010000A8900016F000169DC1"
LOGGER_PW = "7f3c9a21"
MQTT_PW = "mqtt-only-9d8c7b6a"
REGISTRY = {
    "sites": [{"id": "plant-1", "industry": "emission"}],
    "devices": [
        {"id": MN, "kind": "emission", "site": "plant-1", "password": MQTT_PW, "hj212_password": LOGGER_PW},
        # Written before hj212_password existed: its MQTT password is not accepted as PW.
        {"id": LEGACY_MN, "kind": "emission", "site": "plant-1", "password": "legacy-shared"},
    ],
    "services": [
        {"name": "vigil-gw-hj212", "role": "gateway", "kinds": ["emission"], "password": "gw-secret"},
        {"name": "vigil-platform", "role": "platform", "password": "platform-secret"},
    ],
}


async def test_a_sniffed_logger_password_does_not_open_the_broker(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(yaml.safe_dump(REGISTRY), encoding="utf-8")
    registry = DeviceRegistry.load(registry_file)
    with running_mosquitto(tmp_path / "broker", registry) as broker:
        seen = Collector()
        async with MqttClient(broker.account_url("vigil-platform", "platform-secret"), "platform-obs",
                              clean_start=True) as platform:
            platform.subscribe("vigil/v1/#", seen)
            await asyncio.sleep(0.2)
            config = Hj212GatewayConfig(listen="127.0.0.1:0", registry=str(registry_file),
                                        mqtt=broker.account_url("vigil-gw-hj212", "gw-secret"),
                                        client_id="vigil-gw-hj212", auth_delay_base_s=0.01, auth_delay_max_s=0.02)
            stop = asyncio.Event()
            bound: list[tuple[str, int]] = []
            gateway = asyncio.create_task(serve(config, stop=stop, bound=lambda h, p: bound.append((h, p))))
            async with asyncio.timeout(10):
                while not bound:
                    await asyncio.sleep(0.02)
            port = bound[0][1]

            # The logger reports with its HJ 212 PW; an eavesdropper reads PW off the wire.
            logger = await LoggerLink.open(port)
            frame = realtime(mn=MN, pw=LOGGER_PW)
            await logger.send(frame)
            assert [p.cn for p in await logger.frames(1)] == ["9014"]
            sniffed = frame.split(b"PW=")[1].split(b";")[0].decode()
            await seen.wait_for(f"/{MN}/telemetry", 1)

            # The attack: log into the broker as the device with the sniffed PW.
            with pytest.raises(MqttError, match="refused"):
                await MqttClient(broker.account_url(MN, sniffed), "sniffer").start(timeout=5)
            # The device's own MQTT credential still works, and it is not a valid HJ 212 PW.
            async with MqttClient(broker.account_url(MN, MQTT_PW), "stack-box", clean_start=True):
                pass
            for mn, pw in ((MN, MQTT_PW), (LEGACY_MN, "legacy-shared")):
                link = await LoggerLink.open(port)
                await link.send(realtime(mn=mn, pw=pw))
                assert [(p.cn, p.get("QnRtn")) for p in await link.frames(1)] == [("9011", "3")]
                await link.close()
            assert any("has no hj212_password" in r.getMessage() for r in caplog.records)
            await logger.close()
            stop.set()
            counters = await gateway
        assert counters.snapshot()["rejected.bad_password"] == 1 and counters.snapshot()["rejected.unknown_device"] == 1
        assert len(seen.on("/telemetry")) == 1


def test_registry_keeps_the_two_secrets_apart() -> None:
    registry = DeviceRegistry.from_data(REGISTRY)
    assert registry.hj212_password_of(MN) == LOGGER_PW and registry.password_of(MN) == MQTT_PW
    assert registry.hj212_password_of(LEGACY_MN) is None
    bad = {"devices": [{"id": "elev-1", "kind": "elevator", "hj212_password": "x"}]}
    with pytest.raises(RegistryError, match="only emission devices"):
        DeviceRegistry.from_data(bad)
    both = {"devices": [{"id": MN, "kind": "emission", "hj212_password": "x", "hj212_password_env": "Y"}]}
    with pytest.raises(RegistryError, match="only one of"):
        DeviceRegistry.from_data(both)
