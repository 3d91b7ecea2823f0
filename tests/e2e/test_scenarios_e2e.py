"""Scenarios through the full process set: device over TCP -> gateway process -> Mosquitto -> `vigil run` -> alerts.

Each scenario (tests/e2e/scenarios/*.yaml) first runs in process with its start moved to now, so
the expected alerts are known to hold at this time of day; then the same device input goes over
real TCP to `vigil edge jt808|hj212`, through a real Mosquitto, to `vigil run` (rules + alerting
with the shipped packs and the scenario's registry), and the alerts must appear on
vigil/v1/alerts/# as the scenario says: the same rules fire (and resolve) for the device, and no
other rule raises an alert for it. Wall-clock time is real here, so the scenarios last seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.contracts import ALERTS_FILTER, Alert, AlertStatus, decode_alert
from broker.mosquitto import MosquittoProcess, free_port, wait_for_port
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry
from scenario.gateways import hj212_frames, hj212_password, jt808_register_request, jt808_reports
from scenario.runner import format_result, run_scenario
from scenario.spec import Scenario, load_scenario

VIGIL = [sys.executable, "-m", "vigil.cli"]
SCENARIOS = Path(__file__).parent / "scenarios"
START_S = 4.0
"""Seconds from the moment the processes are up to the scenario's start (the in-process check runs meanwhile)."""


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _platform(tmp_path: Path, mosquitto: MosquittoProcess, registry: Path) -> list[str]:
    config = {"node": "e2e", "state_dir": str(tmp_path / "state"), "services": ["rules", "alerting"],
              "registry": str(registry), "mqtt": {"url": mosquitto.url}, "alerting": {"api": {"enabled": False}}}
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return [*VIGIL, "run", "--config", str(path)]


async def _wait_until(epoch: float) -> None:
    await asyncio.sleep(max(0.0, epoch - time.time()))


async def _drive_jt808(scenario: Scenario, spec: dict[str, Any], epoch: float, port: int) -> None:
    """A terminal over TCP: register, authenticate, then the scenario's reports at their times."""
    from edge.jt808.codec import FrameSplitter, ProtocolVersion, decode_frame, encode_frame
    from edge.jt808.messages import (
        AuthRequest,
        MsgId,
        build_auth,
        build_location,
        parse_general_reply,
        parse_register_reply,
    )

    version = ProtocolVersion.V2019 if int(spec.get("protocol", 2013)) == 2019 else ProtocolVersion.V2013
    phone = str(spec.get("phone", spec["id"]))
    registry = DeviceRegistry.from_data(scenario.registry)
    reports = jt808_reports(spec, "e2e", epoch, random.Random(f"{scenario.seed}:{spec['id']}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    splitter = FrameSplitter()
    serial = 0

    async def request(msg_id: int, body: bytes, reply_id: int) -> bytes:
        nonlocal serial
        serial += 1
        writer.write(encode_frame(msg_id, phone, serial, body, version=version))
        await writer.drain()
        while True:
            data = await asyncio.wait_for(reader.read(4096), 15)
            assert data, "the gateway closed the connection"
            for item in splitter.feed(data):
                if isinstance(item, bytes | bytearray):
                    frame = decode_frame(bytes(item))
                    if frame.header.msg_id == reply_id:
                        return frame.body

    await _wait_until(epoch + (reports[0][0] if reports else 0.0))
    reg = parse_register_reply(await request(MsgId.REGISTER, jt808_register_request(spec, registry, version),
                                             MsgId.REGISTER_REPLY))
    assert reg.result == 0, f"registration refused: {reg.result}"
    auth = parse_general_reply(await request(MsgId.AUTHENTICATE, build_auth(AuthRequest(reg.auth_code, "860000000000001",
                                                                                        "e2e-1.0"), version),
                                             MsgId.PLATFORM_GENERAL_REPLY))
    assert auth.result == 0, f"authentication refused: {auth.result}"

    async def drain() -> None:
        while await reader.read(4096):
            pass

    drainer = asyncio.create_task(drain())
    try:
        for t, report in reports:
            await _wait_until(epoch + t)
            serial += 1
            writer.write(encode_frame(MsgId.LOCATION, phone, serial, build_location(report), version=version))
            await writer.drain()
        await asyncio.sleep(1.0)
    finally:
        drainer.cancel()
        writer.close()


async def _drive_hj212(scenario: Scenario, spec: dict[str, Any], epoch: float, port: int) -> None:
    """A data logger over TCP: the scenario's frames at their times (replies are read and dropped)."""
    registry = DeviceRegistry.from_data(scenario.registry)
    frames = hj212_frames(spec, "e2e", epoch, random.Random(f"{scenario.seed}:{spec['id']}"),
                          hj212_password(spec, registry))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def drain() -> None:
        while await reader.read(4096):
            pass

    drainer = asyncio.create_task(drain())
    try:
        for t, data in frames:
            await _wait_until(epoch + t)
            writer.write(data)
            await writer.drain()
        await asyncio.sleep(1.0)
    finally:
        drainer.cancel()
        writer.close()


def _run_e2e(name: str, tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    scenario = load_scenario(SCENARIOS / name)
    assert len(scenario.devices) == 1
    spec = scenario.devices[0]
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(scenario.registry, allow_unicode=True), encoding="utf-8")
    port = free_port()
    adapter = spec["adapter"]
    gateway = [*VIGIL, "edge", adapter, "--listen", f"127.0.0.1:{port}", "--mqtt", mosquitto.url,
               "--registry", str(registry)]
    alerts: list[Alert] = []
    epoch = 0.0

    async def follow_and_drive() -> None:
        def on_alerts(batch: list[Message]) -> None:
            alerts.extend(decode_alert(m.payload) for m in batch if m.payload)

        async with MqttClient(mosquitto.url, "e2e-control-room", clean_start=True) as client:
            client.subscribe(ALERTS_FILTER, on_alerts)
            drive = _drive_jt808 if adapter == "jt808" else _drive_hj212
            await drive(scenario, spec, epoch, port)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _complete(scenario, alerts):
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # anything unexpected that was still on its way

    with _process(_platform(tmp_path, mosquitto, registry), tmp_path / "vigil.log") as platform, \
            _process(gateway, tmp_path / "gateway.log") as gw:
        wait_for_port("127.0.0.1", port, 20)
        state = tmp_path / "state" / "e2e"
        deadline = time.monotonic() + 20
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # the state folder appears before the platform has subscribed
        assert platform.poll() is None and gw.poll() is None
        # In process first, at the time the real run will happen: the expectations hold at this time of day.
        epoch = float(int(time.time() + START_S))
        scenario.start = datetime.fromtimestamp(epoch, UTC)
        result = run_scenario(scenario)
        assert result.passed, "\n".join(format_result(result, verbose=True))
        asyncio.run(follow_and_drive())
    logs = (tmp_path / "vigil.log").read_text(errors="replace")[-3000:] + \
        (tmp_path / "gateway.log").read_text(errors="replace")[-3000:]
    device = spec["id"]
    mine = [a for a in alerts if a.device_id == device]
    for e in scenario.expect.alerts:
        statuses = {a.status for a in mine if a.rule == e.rule}
        assert AlertStatus.FIRING in statuses, f"{e.rule} never fired; alerts: {mine}\n{logs}"
        if e.resolved_at is not None:
            assert AlertStatus.RESOLVED in statuses, f"{e.rule} never resolved; alerts: {mine}\n{logs}"
        else:
            assert AlertStatus.RESOLVED not in statuses, f"{e.rule} resolved; alerts: {mine}"
        if e.severity is not None:
            assert {a.severity.value for a in mine if a.rule == e.rule} == {e.severity}
    expected_rules = {e.rule for e in scenario.expect.alerts}
    assert {a.rule for a in mine} == expected_rules, f"unexpected alerts: {mine}"


def _complete(scenario: Scenario, alerts: list[Alert]) -> bool:
    for e in scenario.expect.alerts:
        want = AlertStatus.RESOLVED if e.resolved_at is not None else AlertStatus.FIRING
        if not any(a.rule == e.rule and a.device_id == e.device and a.status == want for a in alerts):
            return False
    return True


@pytest.mark.timeout(180)
def test_jt808_emergency_alarm_end_to_end(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    _run_e2e("jt808_emergency.yaml", tmp_path, mosquitto)


@pytest.mark.timeout(180)
def test_hj212_hourly_exceedance_end_to_end(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    _run_e2e("hj212_hourly_exceedance.yaml", tmp_path, mosquitto)
