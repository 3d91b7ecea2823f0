"""Alert actions that command a vehicle terminal, over real HTTP and a real Mosquitto: acknowledging or closing a
clear-on-ack alarm alert publishes ``jt808.alarm_ack`` (0x8203), ``driver-text`` publishes ``jt808.text`` (0x8300)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerting.config import AlertingConfig, ApiConfig, Receiver, Retry, Route, User
from alerting.service import AlertingService
from broker.contracts import DeviceCommand, Kind, Severity, Transition, decode_command, encode, utcnow
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient


class Rig:
    def __init__(self, svc: AlertingService, http: aiohttp.ClientSession, commands: list[tuple[str, DeviceCommand]]):
        self.svc, self.http, self.commands = svc, http, commands
        self.base = f"http://127.0.0.1:{svc.api_port}"

    async def call(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(self.base + path, json=body, headers={"Authorization": "Bearer tok-op"}) as r:
            return r.status, await r.json()

    def fire(self, rule: str, kind: Kind, device: str) -> str:
        now = utcnow()
        t = Transition(ts=now, fingerprint=f"f:{rule}:{device}", rule=rule, status="firing", severity=Severity.MAJOR,
                       kind=kind, device_id=device, site=None, labels={}, summary=rule, source_ts=now)
        self.svc.on_transitions([MqttMessage(f"vigil/v1/transitions/{kind}/{device}", encode(t), 1, False, 0.0)])
        return self.svc.by_fingerprint[f"f:{rule}:{device}"]

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.commands) < n:
                await asyncio.sleep(0.05)


@pytest.fixture
async def rig(mosquitto: MosquittoProcess, tmp_path: Path) -> AsyncIterator[Rig]:
    cfg = AlertingConfig(
        receivers=[Receiver(name="room", urls=["json://127.0.0.1:9/none"])],
        route=Route(name="root", receivers=["room"], group_wait_s=0.0), escalation_policies=[], inhibit_rules=[],
        retry=Retry(attempts=1, backoff_s=0.01, timeout_s=1.0), api=ApiConfig(enabled=True, port=0),
        users=[User(name="zhang", role="operator", token="tok-op")])
    commands: list[tuple[str, DeviceCommand]] = []

    def on_command(batch: list[MqttMessage]) -> None:
        commands.extend((m.topic, decode_command(m.payload)) for m in batch)

    async with MqttClient(mosquitto.url, "alerting-test", clean_start=True) as mqtt, \
            MqttClient(mosquitto.url, "gateway-side", clean_start=True) as gateway_side:
        gateway_side.subscribe("vigil/v1/+/+/command", on_command)
        await asyncio.sleep(0.3)
        svc = AlertingService(cfg, mqtt=mqtt, state_dir=tmp_path / "s")
        task = asyncio.create_task(svc.run())
        async with asyncio.timeout(5):
            while svc.api_port is None:
                await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            yield Rig(svc, http, commands)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        svc.store.close()


async def test_acknowledging_a_clear_on_ack_alarm_confirms_it_on_the_terminal(rig: Rig) -> None:
    emergency = rig.fire("vehicle_emergency_alarm", Kind.VEHICLE, "13957200001")
    assert (await rig.call(f"/api/alerts/{emergency}/ack", {"note": "联系司机"}))[0] == 200
    await rig.wait(1)
    topic, cmd = rig.commands[0]
    assert topic == "vigil/v1/vehicle/13957200001/command"
    assert cmd.command == "jt808.alarm_ack" and cmd.params["bits"] == [0] and cmd.params["alert_id"] == emergency
    ignition = rig.fire("vehicle_illegal_ignition", Kind.VEHICLE, "13957200002")
    assert (await rig.call(f"/api/alerts/{ignition}/resolve", {"reason": "司机确认"}))[0] == 200
    await rig.wait(2)
    assert rig.commands[1][1].params["bits"] == [27] and rig.commands[1][0].endswith("/13957200002/command")
    area = rig.fire("vehicle_terminal_area_route_alarm", Kind.VEHICLE, "13957200005")
    assert (await rig.call(f"/api/alerts/{area}/ack", {}))[0] == 200
    await rig.wait(3)
    assert rig.commands[2][1].params["bits"] == [20, 21, 22]
    # Alarms the terminal clears by itself, and other kinds of device, send nothing.
    speeding = rig.fire("vehicle_hazardous_overspeed", Kind.VEHICLE, "13957200003")
    lift = rig.fire("trapped_passenger", Kind.ELEVATOR, "el-1")
    for aid in (speeding, lift):
        assert (await rig.call(f"/api/alerts/{aid}/ack", {}))[0] == 200
    await asyncio.sleep(0.5)
    assert len(rig.commands) == 3


async def test_driver_text_is_sent_and_recorded_in_the_timeline(rig: Rig) -> None:
    aid = rig.fire("vehicle_continuous_driving", Kind.VEHICLE, "13957200004")
    status, body = await rig.call(f"/api/alerts/{aid}/driver-text", {"text": "您已连续驾驶4小时, 请就近休息"})
    assert status == 200 and body["command_id"].startswith("text-")
    await rig.wait(1)
    topic, cmd = rig.commands[0]
    assert topic.endswith("/13957200004/command") and cmd.command == "jt808.text"
    assert cmd.params["text"] == "您已连续驾驶4小时, 请就近休息" and cmd.command_id == body["command_id"]
    async with rig.http.get(f"{rig.base}/api/alerts/{aid}", headers={"Authorization": "Bearer tok-op"}) as r:
        timeline = (await r.json())["timeline"]
    assert any(body["command_id"] in str(e["detail"]) and e["actor"] == "zhang" for e in timeline), timeline
    lift = rig.fire("trapped_passenger", Kind.ELEVATOR, "el-2")
    for target, payload in ((aid, {"text": ""}), (aid, {"text": "长" * 201}), (lift, {"text": "hi"})):
        status, err = await rig.call(f"/api/alerts/{target}/driver-text", payload)
        assert status == 400, err
    await asyncio.sleep(0.3)
    assert len(rig.commands) == 1
