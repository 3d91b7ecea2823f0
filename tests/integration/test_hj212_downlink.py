"""HJ 212 downlink over real TCP with a real Mosquitto: 1012 time calibration, 2061 history requests.

The simulated logger (``simulators.hj212_logger``) and an in-test logger receive the commands and
answer them; the gateway's audit file and its MQTT events record every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.contracts import DeviceEvent, Telemetry, decode_device_message
from broker.mqtt import Message, MqttClient
from edge.hj212.cli import Hj212GatewayConfig, serve
from edge.hj212.codec import (
    ExeRtn,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    QnRtn,
    encode_frame,
    execution_reply,
    parse_packet,
    request_reply,
)
from edge.hj212.downlink import AuditLog, DownlinkPolicy, DownlinkTracker
from edge.hj212.gateway import Hj212Gateway, StaticDevicePasswords
from simulators.hj212_logger import load_scenario, run_fleet

SCENARIO = Path(__file__).resolve().parents[2] / "simulators" / "scenarios" / "hj212_downlink.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")


class Collector:
    """Everything published under vigil/v1."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, batch: list[Message]) -> None:
        self.messages.extend(batch)

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.messages if m.topic.endswith(suffix)]


@pytest.fixture
async def observer(mosquitto: Any) -> AsyncIterator[Collector]:
    collector = Collector()
    async with MqttClient(mosquitto.url, "downlink-observer", clean_start=True) as client:
        client.subscribe("vigil/v1/#", collector)
        await asyncio.sleep(0.2)
        yield collector


def _events(collector: Collector) -> list[DeviceEvent]:
    out = []
    for message in collector.on("/event"):
        payload = decode_device_message(message.topic, message.payload).payload
        assert isinstance(payload, DeviceEvent) and payload.type == "hj212.command"
        out.append(payload)
    return out


async def test_simulated_logger_gets_1012_and_resends_the_missing_hour(mosquitto: Any, observer: Collector,
                                                                       tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    mn = scenario.mn(0)
    data_dir = tmp_path / "gw"
    config = Hj212GatewayConfig(listen="127.0.0.1:0", mqtt=mosquitto.url, accept_unknown_devices=True,
                                data_dir=str(data_dir))
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    gateway = asyncio.create_task(serve(config, stop=stop, bound=lambda h, p: bound.append((h, p))))
    async with asyncio.timeout(10):
        while not bound:
            await asyncio.sleep(0.02)
    before = datetime.now(UTC)
    stats = await run_fleet(scenario, *bound[0])
    after = datetime.now(UTC)
    async with asyncio.timeout(15):
        while len([e for e in _events(observer) if e.data["event"] == "done"]) < 2:
            await asyncio.sleep(0.05)
    stop.set()
    counters = await gateway

    # The logger heard a 1012 and a 2061 history request and answered both as the standard says.
    assert stats.platform_commands == {"1012": 1, "2061": 1}
    assert stats.answers == {"9011": 2, "9012": 2, "2061": 1}
    assert stats.replies["9013"] == 1 and counters.downlink_sent == 2

    # The audit file, in the gateway's data dir, has every step with the QN the logger answered.
    records = [json.loads(line) for line in (data_dir / "hj212-commands.jsonl").read_text().splitlines()]
    by_cn: dict[str, list[str]] = {}
    for record in records:
        assert record["mn"] == mn
        by_cn.setdefault(record["cn"], []).append(record["event"])
    assert by_cn["1012"] == ["queued", "sent", "reply_9011", "reply_9012", "done"]
    assert by_cn["2061"] == ["queued", "sent", "reply_9011", "reply_9012", "done"]
    history = next(r for r in records if r["cn"] == "2061" and r["event"] == "sent")
    assert history["cp"] == "BeginTime=20261126090000;EndTime=20261126090000"
    calibration = next(r for r in records if r["cn"] == "1012" and r["event"] == "sent")
    # SystemTime is the platform's clock in Asia/Shanghai local time (the standard's SystemTime).
    system_time = datetime.strptime(calibration["cp"].removeprefix("SystemTime="), "%Y%m%d%H%M%S")
    sent_at = system_time.replace(tzinfo=SHANGHAI).astimezone(UTC)
    assert before.replace(microsecond=0) <= sent_at <= after

    # The same steps reached the platform as events; the re-sent hour is marked on its telemetry.
    assert [e.data["event"] for e in _events(observer)] == [r["event"] for r in records]
    hourly = []
    for message in observer.on(f"/{mn}/telemetry"):
        payload = decode_device_message(message.topic, message.payload).payload
        assert isinstance(payload, Telemetry)
        if payload.metrics["hj212.cn"] == "2061":
            hourly.append((payload.ts.astimezone(SHANGHAI).strftime("%H:%M"), payload.metrics.get("hj212.resent")))
    assert sorted(hourly) == [("08:00", None), ("09:00", True), ("10:00", None)]


async def test_commands_are_resent_without_9011_and_a_jump_in_2061_is_asked_for(mosquitto: Any,
                                                                                observer: Collector,
                                                                                tmp_path: Path) -> None:
    mn, pw = "5A1400000000000000000009", "c0ffee42"
    policy = DownlinkPolicy(reply_timeout_s=0.3, retries=2, gap_grace_s=86400)
    audit = AuditLog(tmp_path / "audit.jsonl")
    async with MqttClient(mosquitto.url, "downlink-gw", clean_start=True) as mqtt:
        gateway = Hj212Gateway(mqtt.publish, passwords=StaticDevicePasswords({mn: pw}),
                               downlink=DownlinkTracker(policy), audit=audit)
        _, port = await gateway.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = Hj212FrameReader()
        pending: list[Hj212Packet] = []

        async def next_frame(cn: str) -> Hj212Packet:
            async with asyncio.timeout(10):
                while True:
                    while pending:
                        packet = pending.pop(0)
                        if packet.cn == cn:
                            return packet
                    chunk = await reader.read(65536)
                    assert chunk, "gateway closed the connection"
                    pending.extend(parse_packet(r.segment) for r in decoder.feed(chunk) if isinstance(r, Hj212Frame))

        def hourly(hour: int, qn: str) -> bytes:
            return encode_frame(f"QN={qn};ST=31;CN=2061;PW={pw};MN={mn};Flag=9;CP=&&DataTime=20261126{hour:02d}0000;"
                                "a21026-ZsAvg=20.0,a21026-Flag=N&&")

        try:
            # A 2025 logger (Flag=9): hourly records of 08:00, then 11:00 - 09:00 and 10:00 are missing.
            writer.write(hourly(8, "20261126090000001") + hourly(11, "20261126120000001"))
            assert (await next_frame("9014")).flag == 8 and (await next_frame("9014")).qn == "20261126120000001"
            first = await next_frame("2061")
            assert first.flag == 9 and first.pw == pw and first.st == "31"
            assert (first.get("BeginTime"), first.get("EndTime")) == ("20261126090000", "20261126100000")
            # The logger misses it; the gateway sends it again with the same QN.
            again = await next_frame("2061")
            assert again.qn == first.qn
            writer.write(request_reply(again, QnRtn.READY) + hourly(9, "20261126120500001")
                         + hourly(10, "20261126120500002") + execution_reply(again, ExeRtn.SUCCESS))
            async with asyncio.timeout(10):
                while not any(r.event == "done" for r in _records(audit.path)):
                    await asyncio.sleep(0.05)
            # A 1013 is answered with 9013 and then a 1012; this logger refuses it (QnRtn=2).
            writer.write(encode_frame(f"QN=20261126120600001;ST=31;CN=1013;PW={pw};MN={mn};Flag=9;CP=&&&&"))
            assert (await next_frame("9013")).qn == "20261126120600001"
            calibrate = await next_frame("1012")
            assert calibrate.get("SystemTime") is not None and calibrate.get("PolId") is None
            writer.write(request_reply(calibrate, QnRtn.REFUSED))
            async with asyncio.timeout(10):
                while not any(r.event == "refused" for r in _records(audit.path)):
                    await asyncio.sleep(0.05)
        finally:
            writer.close()
            await gateway.close()
    events = [(r.cn, r.event, r.attempt) for r in _records(audit.path)]
    assert events == [("2061", "queued", 0), ("2061", "sent", 1), ("2061", "resent", 2), ("2061", "reply_9011", 2),
                      ("2061", "reply_9012", 2), ("2061", "done", 2), ("1012", "queued", 0), ("1012", "sent", 1),
                      ("1012", "reply_9011", 1), ("1012", "refused", 1)]
    resent = [decode_device_message(m.topic, m.payload).payload for m in observer.on(f"/{mn}/telemetry")]
    marks = sorted((t.ts.astimezone(SHANGHAI).hour, t.metrics.get("hj212.resent"))
                   for t in resent if isinstance(t, Telemetry))
    assert marks == [(8, None), (9, True), (10, True), (11, None)]


class _Record:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.cn: str = raw["cn"]
        self.event: str = raw["event"]
        self.attempt: int = raw["attempt"]


def _records(path: Path) -> list[_Record]:
    if not path.exists():
        return []
    return [_Record(json.loads(line)) for line in path.read_text().splitlines()]


async def test_platform_command_over_mqtt_reaches_the_logger_and_only_the_platform_may_send_it(
        tmp_path: Path) -> None:
    from broker.contracts import DeviceCommand, encode
    from broker.mosquitto import running_mosquitto
    from broker.registry import DeviceRegistry

    mn, pw = "5A1400000000000000000007", "b16b00b5"
    registry = DeviceRegistry.from_data({
        "devices": [{"id": mn, "kind": "emission", "hj212_password": pw, "password": "stack-mqtt-pw"}],
        "services": [{"name": "vigil-gw-hj212", "role": "gateway", "kinds": ["emission"], "password": "gw-pw"},
                     {"name": "vigil-platform", "role": "platform", "password": "platform-pw"}],
    })
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(json.dumps({"devices": [{"id": mn, "kind": "emission", "hj212_password": pw,
                                                      "password": "stack-mqtt-pw"}]}), encoding="utf-8")
    topic = f"vigil/v1/emission/{mn}/command"
    history = DeviceCommand(ts=datetime.now(UTC), command="hj212.history", command_id="op-42",
                            params={"cn": "2061", "begin": "20261126080000", "end": "20261126090000"})
    with running_mosquitto(tmp_path / "broker", registry) as broker:
        seen = Collector()
        async with MqttClient(broker.account_url("vigil-platform", "platform-pw"), "platform-ops",
                              clean_start=True) as platform:
            platform.subscribe("vigil/v1/#", seen)
            config = Hj212GatewayConfig(listen="127.0.0.1:0", registry=str(registry_file), client_id="vigil-gw-hj212",
                                        mqtt=broker.account_url("vigil-gw-hj212", "gw-pw"),
                                        audit_file=str(tmp_path / "audit.jsonl"))
            stop = asyncio.Event()
            bound: list[tuple[str, int]] = []
            gateway = asyncio.create_task(serve(config, stop=stop, bound=lambda h, p: bound.append((h, p))))
            async with asyncio.timeout(10):
                while not bound:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the gateway's subscription is in place
            reader, writer = await asyncio.open_connection("127.0.0.1", bound[0][1])
            writer.write(encode_frame(f"QN=20261126100000001;ST=31;CN=2011;PW={pw};MN={mn};Flag=5;"
                                      "CP=&&DataTime=20261126100000;a21026-Rtd=1,a21026-Flag=N&&"))
            decoder = Hj212FrameReader()

            async def next_command() -> Hj212Packet:
                async with asyncio.timeout(10):
                    while True:
                        chunk = await reader.read(65536)
                        assert chunk, "gateway closed the connection"
                        for result in decoder.feed(chunk):
                            if isinstance(result, Hj212Frame) and parse_packet(result.segment).cn != "9014":
                                return parse_packet(result.segment)

            # The logger's own MQTT account may not command it (the ACL gives devices read-only command topics;
            # gateways likewise, but connecting as the gateway's account here would take over its session).
            async with MqttClient(broker.account_url(mn, "stack-mqtt-pw"), mn, clean_start=True) as device:
                with contextlib.suppress(Exception):
                    await device.publish(topic, encode(history))
            invalid = DeviceCommand(ts=datetime.now(UTC), command="hj212.history", params={"cn": "9999"})
            await platform.publish(topic, encode(invalid))
            await platform.publish(topic, encode(history))
            command = await next_command()
            assert (command.cn, command.get("BeginTime"), command.get("EndTime")) == (
                "2061", "20261126080000", "20261126090000")
            writer.write(request_reply(command, QnRtn.READY) + execution_reply(command, ExeRtn.NO_DATA))
            async with asyncio.timeout(10):
                while not any(e.data["event"] == "done" for e in _events(seen)):
                    await asyncio.sleep(0.05)
            writer.close()
            stop.set()
            await gateway
        events = [(e.data["event"], e.data["detail"]) for e in _events(seen)]
    # Exactly one command was queued (the platform's); the invalid one was audited, the others never arrived.
    assert [e for e, _ in events] == ["invalid", "queued", "sent", "reply_9011", "reply_9012", "done"]
    assert "op-42" in events[1][1] and "cn must be one of" in events[0][1]
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == [e for e, _ in events]
