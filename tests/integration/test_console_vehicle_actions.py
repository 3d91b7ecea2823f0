"""The console's vehicle actions on the full stack (Mosquitto, rules, alerting, console over HTTP): texting the
driver of a vehicle alert and acknowledging a clear-on-ack alarm publish JT/T 808 commands for the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alerting.desk import AlertDesk
from broker.contracts import DeviceCommand, decode_command
from broker.mqtt import Message, MqttClient
from tests.support.console_stack import ConsoleStack, wait_until


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path / "stack") as st:
        yield st


async def test_console_texts_the_driver_and_confirms_the_emergency_alarm(stack: ConsoleStack) -> None:
    commands: list[DeviceCommand] = []

    def on_command(batch: list[Message]) -> None:
        commands.extend(decode_command(m.payload) for m in batch if m.topic == "vigil/v1/vehicle/truck-0001/command")

    async with MqttClient(stack.broker.url, "gateway-side", clean_start=True) as gw:  # type: ignore[union-attr]
        gw.subscribe("vigil/v1/vehicle/+/command", on_command)
        await asyncio.sleep(0.3)
        await stack.event("vehicle", "truck-0001", "emergency")
        new = await wait_until(lambda: {a for a, r in stack.alerting.open.items()
                                        if r.rule == "vehicle_emergency_alarm"}, 5, "the emergency alert")
        aid = next(iter(new))
        async with stack.http() as other_unit, stack.http() as http:
            # An operator of another unit may not handle the alert: nothing reaches the vehicle.
            other_csrf = await stack.login(other_unit, "op-wang")
            async with other_unit.post(f"{stack.url}/api/alerts/{aid}/driver_text", json={"text": "越权"},
                                       headers={"X-CSRF-Token": other_csrf}) as r:
                assert r.status == 403
            csrf = await stack.login(http, "lead-li")

            async def act(action: str, body: dict[str, object]) -> tuple[int, object]:
                async with http.post(f"{stack.url}/api/alerts/{aid}/{action}", json=body,
                                     headers={"X-CSRF-Token": csrf}) as r:
                    return r.status, json.loads(await r.text())

            assert (await act("driver_text", {"text": ""}))[0] == 400
            status, body = await act("driver_text", {"text": "请立即靠边停车并回电"})
            assert status == 200, body
            status, body = await act("ack", {"note": "已联系"})
            assert status == 200, body
        await wait_until(lambda: len(commands) >= 2, 5, "two commands")
    assert [c.command for c in commands] == ["jt808.text", "jt808.alarm_ack"]
    assert commands[0].params["text"] == "请立即靠边停车并回电" and commands[0].params["by"] == "lead-li"
    assert commands[1].params["bits"] == [0] and commands[1].params["alert_id"] == aid
    timeline = [(e.actor, str(e.detail)) for e in AlertDesk(stack.alerting).timeline(aid)]
    assert any(actor == "lead-li" and str(commands[0].command_id) in d for actor, d in timeline), timeline
