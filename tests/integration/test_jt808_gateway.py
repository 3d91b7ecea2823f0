"""JT/T 808 gateway end to end: simulated terminals over real TCP, a real Mosquitto, the MQTT contract."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from broker.contracts import (
    DeviceEvent,
    DeviceStatus,
    Telemetry,
    dead_letter_topic,
    decode_dead_letter,
    decode_device_message,
    device_filter,
    encode,
)
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from edge.jt808.cli import build_parser, serve
from edge.jt808.codec import FrameSplitter, decode_frame, encode_frame
from edge.jt808.gateway import GatewayLimits, Jt808Gateway
from edge.jt808.messages import MsgId, RegisterResult, build_location, parse_general_reply, parse_register_reply
from edge.jt808.session import STAGE, Jt808Platform, StaticTerminalRegistry
from simulators.jt808_terminal import AREA, EMERGENCY, OVERSPEED, drive, load_scenario, plan, run_scenario

HAZMAT = "simulators/scenarios/jt808_hazmat.yaml"


@dataclass
class Inbox:
    """Everything the control room side would receive."""

    telemetry: dict[str, list[Telemetry]] = field(default_factory=dict)
    events: dict[str, list[DeviceEvent]] = field(default_factory=dict)
    statuses: dict[str, list[DeviceStatus]] = field(default_factory=dict)
    dead: list[bytes] = field(default_factory=list)

    def on_device(self, messages: list[Message]) -> None:
        for m in messages:
            msg = decode_device_message(m.topic, m.payload)  # raises if the contract is broken
            if isinstance(msg.payload, Telemetry):
                self.telemetry.setdefault(msg.device_id, []).append(msg.payload)
            elif isinstance(msg.payload, DeviceEvent):
                self.events.setdefault(msg.device_id, []).append(msg.payload)
            elif isinstance(msg.payload, DeviceStatus):
                self.statuses.setdefault(msg.device_id, []).append(msg.payload)

    def on_dead(self, messages: list[Message]) -> None:
        self.dead.extend(m.payload for m in messages)

    def count(self) -> int:
        return sum(len(v) for v in self.telemetry.values())


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@dataclass
class Rig:
    gateway: Jt808Gateway
    host: str
    port: int
    inbox: Inbox


@contextlib.asynccontextmanager
async def start_rig(mosquitto: MosquittoProcess, known: set[str], limits: GatewayLimits | None = None,
                    ) -> AsyncIterator[Rig]:
    inbox = Inbox()
    async with MqttClient(mosquitto.url, "jt808-test-observer", clean_start=True) as observer, \
            MqttClient(mosquitto.url, "jt808-test-gateway", clean_start=True) as mqtt:
        observer.subscribe(device_filter("telemetry", "vehicle"), inbox.on_device)
        observer.subscribe(device_filter("event", "vehicle"), inbox.on_device)
        observer.subscribe(device_filter("status", "vehicle"), inbox.on_device)
        observer.subscribe(dead_letter_topic(STAGE), inbox.on_dead)
        await asyncio.sleep(0.3)  # subscriptions in place before anything is published
        platform = Jt808Platform(StaticTerminalRegistry(frozenset(known)))

        async def dead_letter(letter: object) -> None:
            await mqtt.publish(dead_letter_topic(STAGE), encode(letter))  # type: ignore[arg-type]

        gateway = Jt808Gateway(platform, mqtt.publish, dead_letter=dead_letter, limits=limits or GatewayLimits())
        host, port = await gateway.start("127.0.0.1", 0)
        try:
            yield Rig(gateway, host, port, inbox)
        finally:
            await gateway.stop()


@pytest.fixture
async def hazmat_rig(mosquitto: MosquittoProcess) -> AsyncIterator[Rig]:
    scenario = load_scenario(HAZMAT)
    async with start_rig(mosquitto, {t.device_id for t in plan(scenario)}) as rig:
        yield rig


async def test_hazmat_scenario_reaches_mqtt_exactly_as_driven(hazmat_rig: Rig) -> None:
    rig = hazmat_rig
    scenario = load_scenario(HAZMAT, time_scale=4000)
    terminals = plan(scenario)
    stats = await run_scenario(scenario, rig.host, rig.port)
    expected = {t.device_id: [tick for tick in drive(scenario, t) if tick.online or tick.backfill] for t in terminals}
    await until(lambda: rig.inbox.count() >= sum(len(v) for v in expected.values()))
    await rig.gateway.flush()
    assert stats.authenticated == len(terminals) + 4  # four tankers reconnect after their signal loss
    assert stats.sent["batch_blind"] >= 4

    for device_id, ticks in expected.items():
        got = sorted(rig.inbox.telemetry[device_id], key=lambda m: m.ts)
        assert len(got) == len(ticks), device_id
        for tele, tick in zip(got, sorted(ticks, key=lambda t: t.t), strict=True):
            assert tele.ts == tick.report.time
            assert tele.metrics["lat"] == tick.report.latitude and tele.metrics["lon"] == tick.report.longitude
            assert tele.metrics["speed_kmh"] == tick.report.speed_kmh
            assert tele.metrics["ignition"] is tick.report.ignition and tele.metrics["gnss_fixed"] is True
            assert "mileage_km" in tele.metrics and "fuel_l" in tele.metrics

    # Alarm bits as named start/end events, per terminal, from live positions.
    tanker, button = terminals[0].device_id, terminals[-1].device_id
    kinds = Counter((e.type, e.state) for e in rig.inbox.events[tanker])
    assert kinds[("overspeed", "start")] >= 1 and kinds[("overspeed", "end")] >= 1
    assert kinds[("area_entry_exit", "start")] >= 1
    emergency = [e for e in rig.inbox.events[button] if e.type == "emergency"]
    assert [e.state for e in emergency] == ["start", "end"]
    assert emergency[0].event_id == emergency[1].event_id and emergency[0].severity == "critical"
    first_press = next(t for t in drive(scenario, terminals[-1]) if t.report.alarm_flags & EMERGENCY)
    assert emergency[0].ts == first_press.report.time and emergency[0].data["lat"] == first_press.report.latitude
    for device_id, ticks in expected.items():
        live = [t for t in ticks if t.online]
        assert bool(any(t.report.alarm_flags & OVERSPEED for t in live)) == \
            any(e.type == "overspeed" for e in rig.inbox.events.get(device_id, []))
        assert bool(any(t.report.alarm_flags & AREA for t in live)) == \
            any(e.type == "area_entry_exit" for e in rig.inbox.events.get(device_id, []))
    counters = rig.gateway.stats()
    assert counters["connections_open"] == 0 and counters["publish_failures"] == 0
    assert not rig.inbox.dead
    # Presence: online at each authentication, offline when the connection closed.
    def all_offline() -> bool:
        return all(rig.inbox.statuses.get(t.device_id, [None])[-1] is not None
                   and not rig.inbox.statuses[t.device_id][-1].online for t in terminals)

    await until(all_offline)
    for t in terminals:
        states = [s.online for s in rig.inbox.statuses[t.device_id]]
        assert states[0] is True and states[-1] is False
    tanker_states = [(s.online, s.reason) for s in rig.inbox.statuses[tanker]]
    assert tanker_states == [(True, "authenticated"), (False, "connection closed")] * 2  # signal loss, end


class RawTerminal:
    """A bare TCP client for protocol violations."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.splitter = reader, writer, FrameSplitter()

    async def reply(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            while True:
                for item in self.splitter.feed(await self.reader.read(4096) or b"\x00" * 10_000):
                    if isinstance(item, bytes):
                        frame = decode_frame(item)
                        return frame.header.msg_id, frame.body
                    raise ConnectionError("connection closed")


def sample_location() -> bytes:
    scenario = load_scenario(HAZMAT)
    return build_location(next(drive(scenario, plan(scenario)[0])).report)


async def connect(rig: Rig) -> RawTerminal:
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    return RawTerminal(reader, writer)


async def test_unknown_terminals_and_bad_frames_are_answered_counted_and_dead_lettered(hazmat_rig: Rig) -> None:
    rig = hazmat_rig
    term = await connect(rig)
    # An unknown terminal is refused registration.
    term.writer.write(encode_frame(MsgId.REGISTER, "13000000001", 1, bytes(37)))
    msg_id, body = await term.reply()
    assert msg_id == MsgId.REGISTER_REPLY and parse_register_reply(body).result == \
        RegisterResult.TERMINAL_NOT_IN_DATABASE
    # Data without authentication: general reply "fail", nothing published.
    term.writer.write(encode_frame(MsgId.LOCATION, "13000000001", 2, sample_location()))
    msg_id, body = await term.reply()
    assert msg_id == MsgId.PLATFORM_GENERAL_REPLY and parse_general_reply(body).result == 1
    # A corrupted checksum: general reply "bad message".
    frame = bytearray(encode_frame(MsgId.HEARTBEAT, "13000000001", 3))
    frame[-2] ^= 0x01
    term.writer.write(b"noise before" + bytes(frame))
    msg_id, body = await term.reply()
    assert msg_id == MsgId.PLATFORM_GENERAL_REPLY and parse_general_reply(body).result == 2
    term.writer.close()

    await until(lambda: len(rig.inbox.dead) >= 4)
    reasons = sorted(decode_dead_letter(d).detail.split(":", 1)[0] for d in rig.inbox.dead)
    # Bytes between two frames are a candidate frame of their own: "noise before" is too short.
    assert reasons == ["bad_checksum", "not_authenticated", "too_short", "unknown_terminal"]
    assert not rig.inbox.telemetry
    counters = rig.gateway.stats()
    assert counters["rejected.bad_checksum"] == 1 and counters["rejected.unknown_terminal"] == 1

    # The server still serves the next terminal.
    again = await connect(rig)
    again.writer.write(encode_frame(MsgId.HEARTBEAT, "13000000001", 1))
    msg_id, body = await again.reply()
    assert parse_general_reply(body).result == 1
    again.writer.close()


async def test_silent_connections_are_closed(mosquitto: MosquittoProcess) -> None:
    limits = GatewayLimits(idle_timeout_s=0.3, sweep_interval_s=0.1)
    async with start_rig(mosquitto, set(), limits) as rig:
        term = await connect(rig)
        await until(lambda: rig.gateway.stats()["connections_open"] == 1, 2.0)
        async with asyncio.timeout(3.0):
            assert await term.reader.read() == b""  # the gateway hung up
        assert rig.gateway.stats()["closed.idle"] == 1


async def test_a_slow_broker_pauses_terminals_instead_of_queueing_without_bound() -> None:
    release = asyncio.Event()
    published: list[str] = []

    async def slow_publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
        await release.wait()
        published.append(topic)

    platform = Jt808Platform(StaticTerminalRegistry(frozenset({"13800138000"})))
    limits = GatewayLimits(queue_limit=200, read_size=4096)
    gateway = Jt808Gateway(platform, slow_publish, limits=limits)
    host, port = await gateway.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(encode_frame(MsgId.REGISTER, "13800138000", 0, bytes(37)))
        code = ""
        async with asyncio.timeout(5):
            while not code:
                for item in FrameSplitter().feed(await reader.read(4096)):
                    if isinstance(item, bytes) and decode_frame(item).header.msg_id == MsgId.REGISTER_REPLY:
                        code = parse_register_reply(decode_frame(item).body).auth_code
        writer.write(encode_frame(MsgId.AUTHENTICATE, "13800138000", 1, code.encode()))
        report = load_scenario(HAZMAT)
        ticks = [t.report for t in drive(report, plan(report)[0])][:300]
        stream = b"".join(encode_frame(MsgId.LOCATION, "13800138000", i + 2, build_location(r))
                          for i, r in enumerate(ticks))
        writer.write(stream)
        await asyncio.sleep(1.0)
        # Reading stopped near the limit: one 4 KiB read holds at most ~80 frames more.
        assert 200 <= gateway.stats()["queued"] <= 200 + 80
        assert gateway.paused
        release.set()
        await until(lambda: sum(t.endswith("/telemetry") for t in published) == 300, 10)
        assert not gateway.paused and gateway.stats()["telemetry"] == 300
        assert len(published) == 300 + gateway.stats()["events"] + 1  # + the retained online status
        replies = 0
        async with asyncio.timeout(5):
            while replies < 301:
                replies += (await reader.read(65536)).count(0x7E) // 2
        writer.close()
    finally:
        await gateway.stop()


async def test_stopping_the_gateway_reports_its_terminals_offline(mosquitto: MosquittoProcess) -> None:
    async with start_rig(mosquitto, {"13800138000"}) as rig:
        term = await connect(rig)
        term.writer.write(encode_frame(MsgId.REGISTER, "13800138000", 1, bytes(37)))
        _, body = await term.reply()
        code = parse_register_reply(body).auth_code
        term.writer.write(encode_frame(MsgId.AUTHENTICATE, "13800138000", 2, code.encode()))
        _, body = await term.reply()
        assert parse_general_reply(body).result == 0
        await rig.gateway.stop()
        await until(lambda: len(rig.inbox.statuses.get("13800138000", [])) == 2)
        assert [(s.online, s.reason) for s in rig.inbox.statuses["13800138000"]] == \
            [(True, "authenticated"), (False, "gateway stopped")]


async def test_the_cli_entry_serves_terminals_into_mqtt(mosquitto: MosquittoProcess) -> None:
    args = build_parser().parse_args(["--listen", "127.0.0.1:0", "--mqtt", mosquitto.url, "--accept-unknown-devices",
                                      "--client-id", "jt808-cli-test"])
    inbox = Inbox()
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    async with MqttClient(mosquitto.url, "jt808-cli-observer", clean_start=True) as observer:
        observer.subscribe(device_filter("telemetry", "vehicle"), inbox.on_device)
        await asyncio.sleep(0.3)
        server = asyncio.create_task(serve(args, stop, bound.append))
        await until(lambda: bool(bound))
        scenario = load_scenario(HAZMAT, time_scale=4000, duration_min=10)
        await run_scenario(scenario, *bound[0])
        expected = sum(1 for t in plan(scenario) for tick in drive(scenario, t) if tick.online or tick.backfill)
        await until(lambda: inbox.count() == expected)
        stop.set()
        await server
