"""Platform -> terminal over real TCP and a real, secured Mosquitto: a command published by the platform on
``vigil/v1/vehicle/{id}/command`` reaches the terminal through the gateway (``serve``), the terminal's reply
is audited as ``jt808.command`` events, and nobody but a platform account can command a vehicle."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

from broker.contracts import DeviceCommand, DeviceEvent, Telemetry, decode_device_message, encode
from broker.mosquitto import running_mosquitto
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry
from edge.jt808.cli import build_parser, send_command_parser, serve
from edge.jt808.cli import send as send_command
from edge.jt808.codec import FrameSplitter, Jt808Frame, ProtocolVersion, decode_frame, encode_frame
from edge.jt808.commands import (
    CommandId,
    DriverIdentity,
    build_driver_identity,
    build_params_reply,
    parse_alarm_confirm,
    parse_text,
)
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

V13 = ProtocolVersion.V2013
VEHICLE = "13957200901"
PHONE = "013957200901"
IDENTITY: dict[str, object] = {"manufacturer": "VIGIL", "model": "SIM-808", "terminal_id": "T000901", "plate_colour": 2,
            "plate": "浙A危00901"}
REGISTRY = {
    "devices": [{"id": VEHICLE, "kind": "vehicle", "password": "truck-mqtt-pw", "jt808": IDENTITY},
                {"id": "13957200902", "kind": "vehicle", "password": "other-mqtt-pw"}],
    "services": [{"name": "vigil-gw-jt808", "role": "gateway", "kinds": ["vehicle"], "password": "gw-pw"},
                 {"name": "vigil-platform", "role": "platform", "password": "platform-pw"}],
}


class Collector:
    """Everything published under vigil/v1."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, batch: list[Message]) -> None:
        self.messages.extend(batch)

    def audit(self) -> list[DeviceEvent]:
        out = []
        for m in self.messages:
            if m.topic.endswith("/event"):
                ev = decode_device_message(m.topic, m.payload).payload
                if isinstance(ev, DeviceEvent) and ev.type == "jt808.command":
                    out.append(ev)
        return out

    def telemetry(self) -> list[Telemetry]:
        got = [decode_device_message(m.topic, m.payload).payload for m in self.messages if m.topic.endswith("/telemetry")]
        return [t for t in got if isinstance(t, Telemetry)]


class Terminal:
    """A vehicle terminal on a real TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.serial = reader, writer, 0
        self.splitter = FrameSplitter()
        self.frames: list[Jt808Frame] = []

    def send(self, msg_id: int, body: bytes = b"") -> None:
        self.serial += 1
        self.writer.write(encode_frame(msg_id, PHONE, self.serial, body))

    async def receive(self, msg_id: int) -> Jt808Frame:
        async with asyncio.timeout(10):
            while True:
                for i, f in enumerate(self.frames):
                    if f.header.msg_id == msg_id:
                        return self.frames.pop(i)
                chunk = await self.reader.read(4096)
                assert chunk, "the gateway closed the connection"
                self.frames.extend(decode_frame(bytes(item)) for item in self.splitter.feed(chunk)
                                   if isinstance(item, bytes | bytearray))

    def answer(self, frame: Jt808Frame, result: int = 0) -> None:
        h = frame.header
        self.send(MsgId.TERMINAL_GENERAL_REPLY, h.serial.to_bytes(2, "big") + h.msg_id.to_bytes(2, "big")
                  + bytes((result,)))


async def _until(check: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_commands_reach_the_terminal_and_its_replies_are_audited(tmp_path: Path) -> None:
    registry = DeviceRegistry.from_data(REGISTRY)
    registry_file = tmp_path / "registry.json"
    registry_file.write_text(json.dumps(REGISTRY, ensure_ascii=False), encoding="utf-8")
    topic = f"vigil/v1/vehicle/{VEHICLE}/command"

    def command(name: str, cid: str, **params: object) -> bytes:
        return encode(DeviceCommand(ts=datetime.now(UTC), command=name, command_id=cid, params=dict(params)))

    with running_mosquitto(tmp_path / "broker", registry) as broker:
        seen = Collector()
        async with MqttClient(broker.account_url("vigil-platform", "platform-pw"), "platform-ops",
                              clean_start=True) as platform:
            platform.subscribe("vigil/v1/#", seen)
            args = build_parser().parse_args([
                "--listen", "127.0.0.1:0", "--registry", str(registry_file), "--client-id", "vigil-gw-jt808",
                "--mqtt", broker.account_url("vigil-gw-jt808", "gw-pw")])
            stop = asyncio.Event()
            bound: list[tuple[str, int]] = []
            gateway = asyncio.create_task(serve(args, stop, bound.append))
            await _until(lambda: bool(bound))
            await asyncio.sleep(0.3)  # the gateway's command subscription is in place
            term = Terminal(*await asyncio.open_connection("127.0.0.1", bound[0][1]))
            term.send(MsgId.REGISTER, build_register(RegisterRequest(33, 100, "VIGIL", "SIM-808", "T000901", 2,
                                                                     "浙A危00901"), V13))
            code = parse_register_reply((await term.receive(MsgId.REGISTER_REPLY)).body).auth_code
            term.send(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), V13))
            assert parse_general_reply((await term.receive(MsgId.PLATFORM_GENERAL_REPLY)).body).result == 0
            term.send(MsgId.LOCATION, build_location(LocationReport(1 | 1 << 27, 0b11, 30.3, 120.3, 10, 0.0, 0,
                                                                    datetime.now(UTC).replace(microsecond=0))))
            await term.receive(MsgId.PLATFORM_GENERAL_REPLY)
            term.send(CommandId.DRIVER_IDENTITY, build_driver_identity(DriverIdentity(
                True, datetime.now(UTC).replace(microsecond=0), 0, "张三", "330100198001010011", "杭州市运管局",
                "2030-12-31"), V13))
            await term.receive(MsgId.PLATFORM_GENERAL_REPLY)

            # Neither the vehicle's own account nor another vehicle's may command it (ACL): nothing arrives.
            for user, pw in ((VEHICLE, "truck-mqtt-pw"), ("13957200902", "other-mqtt-pw")):
                async with MqttClient(broker.account_url(user, pw), user, clean_start=True) as intruder:
                    with contextlib.suppress(Exception):
                        await intruder.publish(topic, command("jt808.text", f"evil-{user}", text="伪造指令"))

            # 0x8300 text to the driver, answered with 0x0001: sent and acked in the audit trail.
            await platform.publish(topic, command("jt808.text", "op-text-1", text="前方事故, 请减速慢行"))
            text = await term.receive(CommandId.TEXT)
            assert parse_text(text.body, V13)[1] == "前方事故, 请减速慢行"
            term.answer(text)
            await _until(lambda: ("op-text-1", "acked") in {(e.event_id, e.data["status"]) for e in seen.audit()})

            # The same command delivered again (QoS 1 redelivery) is not sent twice; a bad one is refused.
            await platform.publish(topic, command("jt808.text", "op-text-1", text="前方事故, 请减速慢行"))
            await platform.publish(topic, command("jt808.text", "op-text-2", text=""))
            # 0x8203 for the clear-on-ack bits the terminal reported (0 and 27), refused by the terminal.
            await platform.publish(topic, command("jt808.alarm_ack", "op-ack-1", bits=[0, 27]))
            ack = await term.receive(CommandId.ALARM_CONFIRM)
            assert parse_alarm_confirm(ack.body) == (0, 1 | 1 << 27)
            term.answer(ack, result=1)
            # 0x8104 parameter query, answered with 0x0104.
            await platform.publish(topic, command("jt808.query_params", "op-query-1"))
            query = await term.receive(CommandId.QUERY_PARAMS)
            term.send(CommandId.QUERY_PARAMS_REPLY, build_params_reply(query.header.serial, {
                "max_speed_kmh": 100, "continuous_driving_limit_s": 14400}))
            await _until(lambda: ("op-query-1", "acked") in {(e.event_id, e.data["status"]) for e in seen.audit()})
            await _until(lambda: any("terminal.max_speed_kmh" in t.metrics for t in seen.telemetry()))
            assert not [f for f in term.frames if f.header.msg_id == CommandId.TEXT]
            # The operator's command line tool: publishes as the platform and waits for the terminal's answer.
            cli = asyncio.create_task(send_command(send_command_parser().parse_args([
                VEHICLE, "jt808.set_params", "--params", '{"values": {"max_speed_kmh": 80}}', "--wait", "10",
                "--mqtt", broker.account_url("vigil-platform", "platform-pw")])))
            setting = await term.receive(CommandId.SET_PARAMS)
            term.answer(setting)
            assert await cli == 0
            term.writer.close()
            stop.set()
            await gateway
    trail = [(e.event_id, e.data["status"]) for e in seen.audit()]
    assert trail[:7] == [("op-text-1", "sent"), ("op-text-1", "acked"), ("op-text-2", "refused"),
                         ("op-ack-1", "sent"), ("op-ack-1", "failed"), ("op-query-1", "sent"), ("op-query-1", "acked")]
    assert [status for cid, status in trail[7:] if str(cid).startswith("cli-")] == ["sent", "acked"]
    values = next(e for e in seen.audit() if e.event_id == "op-query-1" and e.data["status"] == "acked").data["values"]
    assert values == {"max_speed_kmh": 100, "continuous_driving_limit_s": 14400}
    drivers = [t.metrics for t in seen.telemetry() if "driver_id" in t.metrics]
    assert drivers == [{"driver_signed_in": True, "driver_id": "330100198001010011", "driver_name": "张三"}]


async def test_the_terminal_simulator_answers_platform_commands() -> None:
    """The simulator closes the loop like a terminal: 0x0001 to a text, 0x0104 to a parameter query."""
    from edge.jt808.gateway import Jt808Gateway
    from edge.jt808.session import Jt808Platform, StaticTerminalRegistry
    from simulators.jt808_terminal import SIMULATED_PARAMS, SimulatedTerminal, SimulatorStats, load_scenario, plan

    terminal = plan(load_scenario("simulators/scenarios/jt808_hazmat.yaml"))[0]
    published: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
        published.append((topic, payload))

    gateway = Jt808Gateway(Jt808Platform(StaticTerminalRegistry(frozenset({terminal.device_id}))), publish)
    _, port = await gateway.start("127.0.0.1", 0)
    sim = SimulatedTerminal(terminal, "127.0.0.1", port, SimulatorStats())
    try:
        assert await sim.connect()
        for cid, name, params in (("s-1", "jt808.text", {"text": "注意安全"}), ("s-2", "jt808.query_params", {})):
            gateway.command(terminal.device_id, DeviceCommand(ts=datetime.now(UTC), command=name, command_id=cid,
                                                              params=params))

        def trail() -> set[tuple[str | None, str]]:
            out = set()
            for topic, payload in published:
                ev = decode_device_message(topic, payload).payload
                if isinstance(ev, DeviceEvent) and ev.type == "jt808.command":
                    out.add((ev.event_id, ev.data["status"]))
            return out

        await _until(lambda: {("s-1", "acked"), ("s-2", "acked")} <= trail())
        await gateway.flush()
        values = [decode_device_message(t, p).payload for t, p in published if t.endswith("/telemetry")]
        assert any(isinstance(v, Telemetry) and v.metrics.get("terminal.max_speed_kmh") ==
                   SIMULATED_PARAMS["max_speed_kmh"] for v in values)
    finally:
        sim.close()
        await gateway.stop()
