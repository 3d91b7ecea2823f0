"""HJ 212 gateway over real TCP with the simulated loggers and a real Mosquitto, to the MQTT contract."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.contracts import (
    DeadLetter,
    DeviceStatus,
    Telemetry,
    decode_dead_letter,
    decode_device_message,
)
from broker.mqtt import Message, MqttClient
from edge.hj212.cli import Hj212GatewayConfig, serve
from edge.hj212.codec import Hj212Frame, Hj212FrameReader, encode_frame, parse_packet
from edge.hj212.gateway import (
    Hj212Gateway,
    ServerLimits,
    SessionPolicy,
    StaticDevicePasswords,
    dead_letter_publisher,
)
from simulators.hj212_logger import LoggerModel, load_scenario, run_fleet

SCENARIO = Path(__file__).resolve().parents[2] / "simulators" / "scenarios" / "hj212_faults.yaml"
MN = "010000A8900016F000169DC0"
REALTIME = (f"QN=20160801085857223;ST=31;CN=2011;PW=123456;MN={MN};Flag=5;"
            "CP=&&DataTime=20160801085857;a21026-Rtd=12.5,a21026-Flag=N&&")


class Collector:
    """Subscribes to everything under vigil/v1 and keeps what arrives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, batch: list[Message]) -> None:
        self.messages.extend(batch)

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, suffix: str, count: int, timeout: float = 15.0) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.on(suffix)) < count:
                await asyncio.sleep(0.05)
        return self.on(suffix)


@pytest.fixture
async def subscriber(mosquitto: Any) -> AsyncIterator[Collector]:
    collector = Collector()
    async with MqttClient(mosquitto.url, "hj212-test-subscriber", clean_start=True) as client:
        client.subscribe("vigil/v1/#", collector)
        await asyncio.sleep(0.2)
        yield collector


async def test_simulated_fleet_end_to_end_through_the_cli_wiring(mosquitto: Any, subscriber: Collector) -> None:
    scenario = load_scenario(SCENARIO)
    config = Hj212GatewayConfig(listen="127.0.0.1:0", mqtt=mosquitto.url, accept_unknown_devices=True,
                                client_id="hj212-under-test")
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    gateway = asyncio.create_task(serve(config, stop=stop, bound=lambda h, p: bound.append((h, p))))
    async with asyncio.timeout(10):
        while not bound:
            await asyncio.sleep(0.02)
    stats = await run_fleet(scenario, *bound[0])
    stop.set()
    counters = await gateway

    # What the loggers sent, decoded offline (corrupted frames dropped), is what must arrive.
    expected: Counter[str] = Counter()
    for index in range(scenario.devices):
        for timed in LoggerModel(scenario, index).frames():
            if not timed.corrupted and timed.cn in ("2011", "2051", "2061"):
                expected[scenario.mn(index)] += 1
    assert stats.connected == scenario.devices and stats.corrupted_sent > 0
    telemetry = await subscriber.wait_for("/telemetry", sum(expected.values()))
    assert len(telemetry) == sum(expected.values()) == counters.published
    got: Counter[str] = Counter()
    for message in telemetry:
        decoded = decode_device_message(message.topic, message.payload)
        assert isinstance(decoded.payload, Telemetry) and decoded.kind.value == "emission"
        got[decoded.device_id] += 1
    assert got == expected

    # Every accepted data frame asked for an acknowledgement and got a 9014.
    assert stats.replies["9014"] == counters.packets
    # Corrupted frames were refused, counted and dead-lettered, never published.
    rejected = counters.snapshot()["rejected"]
    assert rejected >= stats.corrupted_sent
    letters = [decode_dead_letter(m.payload) for m in await subscriber.wait_for("/deadletter/edge-hj212", rejected)]
    assert all(isinstance(d, DeadLetter) and d.detail.startswith("hj212 ") for d in letters)

    # The injected faults are visible in the contract messages.
    exceed = [_telemetry(m) for m in telemetry if f"/{scenario.mn(1)}/" in m.topic]
    hourly = [t for t in exceed if t.metrics["hj212.cn"] == "2061"]
    assert float(hourly[0].metrics["a21026.ZsAvg"]) > 60
    calibrating = [_telemetry(m) for m in telemetry if f"/{scenario.mn(2)}/" in m.topic]
    assert any((t.quality or {}).get("a21002") == "C" for t in calibrating)

    statuses = [decode_device_message(m.topic, m.payload).payload for m in await subscriber.wait_for("/status", 12)]
    assert Counter(s.online for s in statuses if isinstance(s, DeviceStatus)) == {True: 6, False: 6}


def _telemetry(message: Message) -> Telemetry:
    payload = decode_device_message(message.topic, message.payload).payload
    assert isinstance(payload, Telemetry)
    return payload


async def _exchange(port: int, data: bytes, expect_frames: int) -> list[Hj212Frame]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    frames: list[Hj212Frame] = []
    decoder = Hj212FrameReader()
    async with asyncio.timeout(5):
        while len(frames) < expect_frames:
            chunk = await reader.read(4096)
            assert chunk, "gateway closed the connection"
            frames += [r for r in decoder.feed(chunk) if isinstance(r, Hj212Frame)]
    writer.close()
    await writer.wait_closed()
    return frames


@pytest.fixture
async def registry_gateway(mosquitto: Any) -> AsyncIterator[tuple[Hj212Gateway, int]]:
    async with MqttClient(mosquitto.url, "hj212-gw", clean_start=True) as mqtt:
        passwords = StaticDevicePasswords({MN: "123456"})
        gateway = Hj212Gateway(mqtt.publish, passwords=passwords, limits=ServerLimits(idle_timeout_s=1.0),
                               policy=SessionPolicy(), dead_letter=dead_letter_publisher(mqtt.publish))
        _, port = await gateway.start("127.0.0.1", 0)
        try:
            yield gateway, port
        finally:
            await gateway.close()


async def test_bad_frames_do_not_break_the_connection(registry_gateway: tuple[Hj212Gateway, int],
                                                      subscriber: Collector) -> None:
    gateway, port = registry_gateway
    good = encode_frame(REALTIME)
    junk = b"\x00\xff garbage ##12ab" + good[:-6] + b"FFFF\r\n" + b"##9999" + b"x" * 100
    [reply] = await _exchange(port, junk + good, expect_frames=1)
    assert parse_packet(reply.segment).cn == "9014"
    [message] = await subscriber.wait_for("/telemetry", 1)
    assert _telemetry(message).metrics["a21026.Rtd"] == 12.5
    snapshot = gateway.counters.snapshot()
    assert snapshot["rejected.bad_crc"] == 1 and snapshot["rejected.oversized"] == 1
    assert snapshot["published"] == 1


async def test_registry_refuses_unknown_devices_and_wrong_passwords(registry_gateway: tuple[Hj212Gateway, int],
                                                                    subscriber: Collector) -> None:
    gateway, port = registry_gateway
    unknown = encode_frame(REALTIME.replace(MN, "AAAA"))
    wrong_pw = encode_frame(REALTIME.replace("PW=123456", "PW=000000"))
    replies = await _exchange(port, unknown + wrong_pw, expect_frames=2)
    # The same answer for both: a guesser cannot tell a registered MN from an unknown one.
    assert [(parse_packet(r.segment).cn, parse_packet(r.segment).get("QnRtn")) for r in replies] == [
        ("9011", "3"), ("9011", "3")]
    letters = await subscriber.wait_for("/deadletter/edge-hj212", 2)
    assert [decode_dead_letter(m.payload).reason.value for m in letters] == ["unknown_device", "unknown_device"]
    assert subscriber.on("/telemetry") == []
    assert gateway.counters.rejected == Counter({"unknown_device": 1, "bad_password": 1})


async def test_idle_connections_are_closed(registry_gateway: tuple[Hj212Gateway, int]) -> None:
    gateway, port = registry_gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(5):
        assert await reader.read(100) == b""
    writer.close()
    assert gateway.counters.connections_open == 0
