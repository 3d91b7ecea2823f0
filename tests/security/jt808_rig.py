"""Shared pieces of the JT/T 808 security tests: a real gateway into a real Mosquitto, raw TCP terminals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.contracts import (
    DeadLetter,
    DeviceEvent,
    Telemetry,
    dead_letter_topic,
    decode_dead_letter,
    decode_device_message,
    device_filter,
    encode,
)
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from edge.jt808.codec import FrameSplitter, Jt808Frame, ProtocolVersion, decode_frame, encode_frame
from edge.jt808.gateway import GatewayLimits, Jt808Gateway
from edge.jt808.limits import AttemptLimits, ReassemblyLimits
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
from edge.jt808.registrations import RegistrationStore, TerminalIdentity
from edge.jt808.session import STAGE, Jt808Platform, StaticTerminalRegistry

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
_V2013 = ProtocolVersion.V2013

LEGIT_PHONE = "013800138000"
LEGIT = TerminalIdentity("VIGIL", "SIM-808", "T000001", 2, "浙A00001")
VICTIM_PHONE = "013800138001"
VICTIM = TerminalIdentity("VIGIL", "SIM-808", "T000002", 2, "浙A00002")
"""Terminals the registry knows, with the registration fields they must send."""


def request_of(identity: TerminalIdentity) -> RegisterRequest:
    """The 0x0100 request carrying an identity."""
    return RegisterRequest(33, 100, identity.manufacturer, identity.model, identity.terminal_id,
                           identity.plate_colour, identity.plate)


@dataclass
class Inbox:
    """What the control room would receive from the gateway."""

    telemetry: dict[str, list[Telemetry]] = field(default_factory=dict)
    events: dict[str, list[DeviceEvent]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)

    def on_device(self, messages: list[Message]) -> None:
        for m in messages:
            msg = decode_device_message(m.topic, m.payload)
            if isinstance(msg.payload, Telemetry):
                self.telemetry.setdefault(msg.device_id, []).append(msg.payload)
            elif isinstance(msg.payload, DeviceEvent):
                self.events.setdefault(msg.device_id, []).append(msg.payload)

    def on_dead(self, messages: list[Message]) -> None:
        self.dead.extend(decode_dead_letter(m.payload) for m in messages)

    def dead_reasons(self) -> list[str]:
        return [d.detail.split(":", 1)[0] for d in self.dead]


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition (generous timeout: the machine is shared)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@dataclass
class Rig:
    gateway: Jt808Gateway
    platform: Jt808Platform
    host: str
    port: int
    inbox: Inbox


@contextlib.asynccontextmanager
async def start_rig(mosquitto: MosquittoProcess, *, store: RegistrationStore | None = None,
                    limits: GatewayLimits | None = None, attempts: AttemptLimits | None = None,
                    reassembly: ReassemblyLimits | None = None, accept_unknown: bool = False,
                    name: str = "jt808-sec") -> AsyncIterator[Rig]:
    """A gateway knowing LEGIT and VICTIM, publishing into Mosquitto, observed by a control-room client."""
    inbox = Inbox()
    async with MqttClient(mosquitto.url, f"{name}-observer", clean_start=True) as observer, \
            MqttClient(mosquitto.url, f"{name}-gateway", clean_start=True) as mqtt:
        observer.subscribe(device_filter("telemetry", "vehicle"), inbox.on_device)
        observer.subscribe(device_filter("event", "vehicle"), inbox.on_device)
        observer.subscribe(dead_letter_topic(STAGE), inbox.on_dead)
        await asyncio.sleep(0.3)  # subscriptions in place before anything is published
        registry = StaticTerminalRegistry(identities={LEGIT_PHONE.lstrip("0"): LEGIT,
                                                      VICTIM_PHONE.lstrip("0"): VICTIM})
        platform = Jt808Platform(registry, store, accept_unknown=accept_unknown, limits=attempts,
                                 reassembly=reassembly)

        async def dead_letter(letter: DeadLetter) -> None:
            await mqtt.publish(dead_letter_topic(STAGE), encode(letter))

        gateway = Jt808Gateway(platform, mqtt.publish, dead_letter=dead_letter, limits=limits or GatewayLimits())
        host, port = await gateway.start("127.0.0.1", 0)
        try:
            yield Rig(gateway, platform, host, port, inbox)
        finally:
            await gateway.stop()


class Terminal:
    """A raw TCP JT/T 808 client (legitimate or not), optionally from another loopback source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, phone: str) -> None:
        self.reader, self.writer, self.phone = reader, writer, phone
        self.splitter = FrameSplitter()
        self.frames: list[Jt808Frame] = []
        self.serial = 0

    @classmethod
    async def open(cls, rig: Rig, phone: str = LEGIT_PHONE, source: str = "127.0.0.1") -> Terminal:
        reader, writer = await asyncio.open_connection(rig.host, rig.port, local_addr=(source, 0))
        return cls(reader, writer, phone)

    def send(self, msg_id: int, body: bytes = b"", phone: str | None = None) -> None:
        self.serial += 1
        self.writer.write(encode_frame(msg_id, phone or self.phone, self.serial, body))

    async def reply(self, timeout: float = 10.0) -> Jt808Frame:
        """The next frame from the gateway; ConnectionError when it hung up."""
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionError("gateway closed the connection")
                self.frames.extend(decode_frame(i) for i in self.splitter.feed(data) if isinstance(i, bytes))
        return self.frames.pop(0)

    async def closed_by_gateway(self, timeout: float = 20.0) -> bool:
        """Read (and drop) until the gateway closes the connection."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if not await self.reader.read(65536):
                        return True
                except ConnectionError:
                    return True

    async def register(self, identity: TerminalIdentity) -> tuple[int, str]:
        self.send(MsgId.REGISTER, build_register(request_of(identity), _V2013))
        frame = await self.reply()
        assert frame.header.msg_id == MsgId.REGISTER_REPLY
        reply = parse_register_reply(frame.body)
        return reply.result, reply.auth_code

    async def authenticate(self, code: str) -> int:
        self.send(MsgId.AUTHENTICATE, build_auth(AuthRequest(code), _V2013))
        frame = await self.reply()
        return parse_general_reply(frame.body).result

    def position(self, lat: float, alarm: int = 0, t: int = 0) -> None:
        report = LocationReport(alarm, 0b11, lat, 120.16, 8, 55.0, 90, T0 + timedelta(seconds=t), {})
        self.send(MsgId.LOCATION, build_location(report))

    def close(self) -> None:
        self.writer.close()


async def legit_terminal(rig: Rig) -> Terminal:
    """The registry's LEGIT terminal, registered and authenticated from 127.0.0.1."""
    term = await Terminal.open(rig)
    result, code = await term.register(LEGIT)
    assert result == 0 and code
    assert await term.authenticate(code) == 0
    return term


async def still_served(rig: Rig, term: Terminal, lat: float, t: int) -> None:
    """The legitimate terminal's position with this latitude reaches MQTT."""
    term.position(lat, t=t)
    device = term.phone.lstrip("0")
    await until(lambda: any(m.metrics["lat"] == lat for m in rig.inbox.telemetry.get(device, [])))
