"""Shared pieces of the HJ 212 abuse tests: a real gateway on real TCP publishing to a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from broker.mqtt import Message, MqttClient
from edge.hj212.codec import Hj212Frame, Hj212FrameReader, Hj212Packet, encode_frame, parse_packet
from edge.hj212.gateway import (
    GuardPolicy,
    Hj212Gateway,
    ServerLimits,
    SessionPolicy,
    StaticDevicePasswords,
    dead_letter_publisher,
)

MN = "010000A8900016F000169DC0"
PW = "7f3c9a21"
QN = "20261126080000123"


def realtime(mn: str = MN, pw: str = PW, qn: str = QN, flag: int = 5) -> bytes:
    """A 2011 real-time frame."""
    return encode_frame(f"QN={qn};ST=31;CN=2011;PW={pw};MN={mn};Flag={flag};"
                        "CP=&&DataTime=20261126080000;a21026-Rtd=12.5,a21026-Flag=N&&")


@dataclass(eq=False)
class Collector:
    """Everything published under vigil/v1."""

    messages: list[Message] = field(default_factory=list)

    def __call__(self, batch: list[Message]) -> None:
        self.messages.extend(batch)

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, suffix: str, count: int, timeout: float = 15.0) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.on(suffix)) < count:
                await asyncio.sleep(0.05)
        return self.on(suffix)


@contextlib.asynccontextmanager
async def running_gateway(mqtt_url: str, guard: GuardPolicy, *, policy: SessionPolicy | None = None,
                          limits: ServerLimits | None = None) -> AsyncIterator[tuple[Hj212Gateway, int, Collector]]:
    """A gateway knowing MN/PW, publishing telemetry and dead letters to Mosquitto; and a subscriber."""
    collector = Collector()
    async with MqttClient(mqtt_url, "hj212-abuse-observer", clean_start=True) as observer, \
            MqttClient(mqtt_url, "hj212-abuse-gateway", clean_start=True) as mqtt:
        observer.subscribe("vigil/v1/#", collector)
        await asyncio.sleep(0.2)
        gateway = Hj212Gateway(mqtt.publish, passwords=StaticDevicePasswords({MN: PW}), guard=guard,
                               policy=policy or SessionPolicy(), limits=limits or ServerLimits(),
                               dead_letter=dead_letter_publisher(mqtt.publish))
        _, port = await gateway.start("127.0.0.1", 0)
        try:
            yield gateway, port, collector
        finally:
            await gateway.close()


class LoggerLink:
    """One TCP connection to the gateway that reads whole frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = Hj212FrameReader()
        self._frames: list[Hj212Frame] = []
        self.closed = False

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> LoggerLink:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frames(self, count: int, timeout: float = 10.0) -> list[Hj212Packet]:
        """Wait for ``count`` frames (fewer if the gateway closes the connection first)."""
        async with asyncio.timeout(timeout):
            while len(self._frames) < count and not self.closed:
                await self._read()
        taken, self._frames = self._frames[:count], self._frames[count:]
        return [parse_packet(f.segment) for f in taken]

    async def wait_closed_by_gateway(self, timeout: float = 10.0) -> list[Hj212Packet]:
        """Read until the gateway closes the connection; the frames that came before."""
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self._read()
        taken, self._frames = self._frames, []
        return [parse_packet(f.segment) for f in taken]

    async def _read(self) -> None:
        try:
            chunk = await self.reader.read(65536)
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self._frames += [r for r in self._decoder.feed(chunk) if isinstance(r, Hj212Frame)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
