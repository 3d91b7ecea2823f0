"""Without Mosquitto the demo falls back to an embedded amqtt broker, with a warning."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import vigil.demo as demo
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry


async def test_demo_broker_falls_back_to_amqtt_when_mosquitto_is_missing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(demo, "mosquitto_binary", lambda: None)
    broker = demo.DemoBroker(tmp_path, DeviceRegistry({}, {}, {}), None)
    await broker.start()
    try:
        assert not broker.secured and broker.embedded is not None
        assert any("falling back to the embedded amqtt broker" in r.getMessage() for r in caplog.records)
        got: list[Message] = []
        url = f"mqtt://127.0.0.1:{broker.port}?protocol=3.1.1"
        async with MqttClient(url, "sub", clean_start=True) as sub, MqttClient(url, "pub", clean_start=True) as pub:
            sub.subscribe("vigil/v1/#", got.extend)
            await asyncio.sleep(0.3)
            await pub.publish("vigil/v1/elevator/e1/telemetry", b"{}")
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
        assert [m.topic for m in got] == ["vigil/v1/elevator/e1/telemetry"]
    finally:
        await broker.stop()
