"""A JT/T 808 gateway killed while a terminal's fatigue alarm is on ends it, after its restart, under the same id.

Real processes and sockets: `vigil edge jt808 --data-dir` in a subprocess, killed with SIGKILL and
started again on the same folder; a terminal over real TCP; a real Mosquitto; an MQTT observer.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from broker.contracts import DeviceEvent, decode_device_message, device_filter
from broker.mosquitto import MosquittoProcess, free_port
from broker.mqtt import Message, MqttClient
from edge.jt808.alarms import ALARMS_FILE, RECONCILED_REASON
from edge.jt808.codec import FrameSplitter, ProtocolVersion, decode_frame, encode_frame
from edge.jt808.messages import (
    AuthRequest,
    LocationReport,
    MsgId,
    RegisterRequest,
    build_auth,
    build_location,
    build_register,
    parse_general_reply,
    parse_register_reply,
)

ROOT = Path(__file__).resolve().parents[2]
VIGIL = [str(Path(sys.executable).with_name("vigil"))]
PHONE = "013957209001"
DEVICE = "13957209001"
FATIGUE = 1 << 2
V2013 = ProtocolVersion.V2013


def start_gateway(port: int, mqtt_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*VIGIL, "edge", "jt808", "--listen", f"127.0.0.1:{port}", "--mqtt", mqtt_url,
                             "--accept-unknown-devices", "--data-dir", str(data_dir)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "gateway exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("vigil edge jt808 did not start listening")


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


class Terminal:
    """A terminal on one TCP connection: request, then read the platform's answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.splitter, self.serial = reader, writer, FrameSplitter(), 0

    @classmethod
    async def connect(cls, port: int) -> Terminal:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def ask(self, msg_id: int, body: bytes) -> bytes:
        self.serial += 1
        self.writer.write(encode_frame(msg_id, PHONE, self.serial, body, version=V2013))
        await self.writer.drain()
        async with asyncio.timeout(10):
            while True:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionError("closed by the gateway")
                for item in self.splitter.feed(data):
                    if isinstance(item, bytes):
                        return decode_frame(item).body

    async def position(self, flags: int, at: datetime) -> None:
        report = LocationReport(alarm_flags=flags, status_flags=3, latitude=30.25, longitude=120.05, altitude_m=12,
                                speed_kmh=0.0, heading_deg=270, time=at)
        assert parse_general_reply(await self.ask(MsgId.LOCATION, build_location(report))).result == 0

    def close(self) -> None:
        self.writer.close()


async def test_fatigue_alarm_open_at_a_sigkill_ends_with_its_original_id_after_the_restart(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    events: list[DeviceEvent] = []

    def on_event(messages: list[Message]) -> None:
        for m in messages:
            payload = decode_device_message(m.topic, m.payload).payload
            assert isinstance(payload, DeviceEvent)
            events.append(payload)

    port, data_dir = free_port(), tmp_path / "jt808"
    async with MqttClient(mosquitto.url, "jt808-restart-observer", clean_start=True) as observer:
        observer.subscribe(device_filter("event", "vehicle"), on_event)
        await asyncio.sleep(0.3)
        gateway = start_gateway(port, mosquitto.url, data_dir)
        try:
            await wait_listening(port, gateway)
            term = await Terminal.connect(port)
            reply = parse_register_reply(await term.ask(MsgId.REGISTER, build_register(
                RegisterRequest(33, 100, "VIGIL", "SIM-808", "T009001", 2, "浙A39001"), V2013)))
            assert reply.result == 0
            code = reply.auth_code
            assert parse_general_reply(await term.ask(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), V2013))).result == 0
            await term.position(FATIGUE, datetime(2026, 12, 3, 1, 0, tzinfo=UTC))
            await until(lambda: any(e.state == "start" for e in events))
            [start] = [e for e in events if e.state == "start"]
            assert start.type == "fatigue_driving"

            gateway.send_signal(signal.SIGKILL)  # no clean stop: nothing is ended on the way out
            gateway.wait(timeout=10)
            term.close()
            assert (data_dir / ALARMS_FILE).is_file()

            gateway = start_gateway(port, mosquitto.url, data_dir)
            await wait_listening(port, gateway)
            term = await Terminal.connect(port)
            # The registration survived too: the terminal authenticates with the code it has.
            assert parse_general_reply(await term.ask(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), V2013))).result == 0
            await term.position(0, datetime(2026, 12, 3, 1, 2, tzinfo=UTC))  # the driver rested meanwhile
            await until(lambda: any(e.state == "end" for e in events))
            term.close()
        finally:
            if gateway.poll() is None:
                gateway.terminate()
                gateway.wait(timeout=20)
    ends = [e for e in events if e.state == "end"]
    assert [(e.type, e.event_id) for e in ends] == [("fatigue_driving", start.event_id)]
    assert ends[0].data["reason"] == RECONCILED_REASON
    assert {e.event_id for e in events if e.state == "start"} == {start.event_id}  # a redelivery at most
