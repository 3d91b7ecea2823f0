"""JT/T 809 gateway end to end: a simulated lower platform over real TCP, a real Mosquitto, the MQTT contract."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from broker.contracts import (
    DeadLetter,
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
from edge.jt809.cli import build_parser, serve
from edge.jt809.codec import Jt809Keys, Jt809StreamSplitter, decode_frame, encode_frame
from edge.jt809.directory import LowerPlatform, StaticPlatforms, StaticVehicles
from edge.jt809.gateway import Jt809Gateway
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    LoginResult,
    MsgId,
    build_envelope,
    build_gnss,
    build_login,
    parse_login_reply,
    parse_verify_code,
)
from edge.jt809.session import STAGE, Jt809Platform
from edge.runtime.server import GatewayLimits
from simulators.jt809_platform import LoginRefused, LowerPlatformSim, drive, run

SPEC = LowerPlatformSim(vehicles=4, unknown_vehicles=1, duration_s=1500, interval_s=30, seed=7,
                        keys=Jt809Keys(10_000_000, 20_000_000, 30_000_000))


@dataclass
class Inbox:
    """What the control room side receives."""

    telemetry: dict[str, list[Telemetry]] = field(default_factory=dict)
    events: dict[str, list[DeviceEvent]] = field(default_factory=dict)
    statuses: dict[str, list[DeviceStatus]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)

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
        self.dead.extend(decode_dead_letter(m.payload) for m in messages)

    def count(self) -> int:
        return sum(len(v) for v in self.telemetry.values())


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def observing(mosquitto: MosquittoProcess) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    async with MqttClient(mosquitto.url, "jt809-test-observer", clean_start=True) as observer:
        for channel in ("telemetry", "event", "status"):
            observer.subscribe(device_filter(channel, "vehicle"), inbox.on_device)
        observer.subscribe(dead_letter_topic(STAGE), inbox.on_dead)
        await asyncio.sleep(0.3)  # subscriptions in place before anything is published
        yield inbox


def write_files(tmp_path: Path, spec: LowerPlatformSim) -> tuple[Path, Path]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"devices": spec.registry_entries()}, allow_unicode=True), encoding="utf-8")
    platforms = tmp_path / "platforms.yaml"
    platforms.write_text(yaml.safe_dump({"platforms": [spec.platforms_entry()]}, allow_unicode=True),
                         encoding="utf-8")
    return registry, platforms


async def test_simulated_platform_through_the_cli_server(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    registry, platforms = write_files(tmp_path, SPEC)
    args = build_parser().parse_args(["--listen", "127.0.0.1:0", "--mqtt", mosquitto.url, "--platforms",
                                      str(platforms), "--registry", str(registry), "--client-id", "jt809-test-gw"])
    async with observing(mosquitto) as inbox:
        stop = asyncio.Event()
        bound: list[tuple[str, int]] = []
        task = asyncio.create_task(serve(args, stop, bound.append))
        await until(lambda: bool(bound))
        try:
            stats = await run(SPEC, *bound[0], hold_s=0.3)
            plan = drive(SPEC)
            known = [r for r in plan.reports if r.vehicle < SPEC.vehicles]
            await until(lambda: inbox.count() >= len(known))
            await until(lambda: sum(len(v) for v in inbox.events.values()) >= 6)
        finally:
            stop.set()
            await task
        await asyncio.sleep(0.5)  # the summary dead letter sent on stop

    assert stats.logins == [LoginResult.OK, LoginResult.OK]  # before and after the outage
    assert stats.sublink_logins == [True, True]  # the sub link came back with each login's verify code
    assert stats.sent["resent_positions"] > 0 and stats.sent["outages"] == 1
    # Replies in flight when the outage cut the link are lost, as they would be.
    assert 0 < stats.heartbeat_replies <= stats.sent["heartbeats"] and stats.logout_replies == 1

    # Every known vehicle's positions, right device ids, right times; re-sent ones flagged and in time order.
    assert set(inbox.telemetry) == {SPEC.device_id(i) for i in range(SPEC.vehicles)}
    for i in range(SPEC.vehicles):
        got = inbox.telemetry[SPEC.device_id(i)]
        expected = [r for r in plan.reports if r.vehicle == i]
        assert sorted(t.ts for t in got) == sorted(r.gnss.time for r in expected)
        resent = [t for t in got if t.metrics["resent"] is True]
        assert len(resent) == sum(1 for r in expected if not r.live) > 0
        assert [t.ts for t in resent] == sorted(t.ts for t in resent)
        by_ts = {r.gnss.time: r.gnss for r in expected}
        for t in got:
            assert t.metrics["lat"] == by_ts[t.ts].lat_e6 / 1e6 and t.metrics["speed_kmh"] == by_ts[t.ts].speed_kmh

    # Alarm bits as start/end events, 0x1402 alarms as instant events, like the 808 gateway's names.
    kinds0 = Counter((e.type, e.state) for e in inbox.events[SPEC.device_id(0)])
    assert kinds0[("emergency", "start")] == 1 and kinds0[("emergency", "end")] == 1
    assert kinds0[("emergency", "instant")] == 1
    kinds1 = Counter((e.type, e.state) for e in inbox.events[SPEC.device_id(1)])
    assert kinds1[("overspeed", "start")] == 1 and kinds1[("overspeed", "end")] == 1
    assert kinds1[("overspeed", "instant")] == 1

    # Online while the platform forwards them, offline when its link drops.
    statuses = inbox.statuses[SPEC.device_id(0)]
    assert [s.online for s in statuses] == [True, False, True, False]

    # The unknown plate: never a device, refused, dead letters aggregated (a few + one summary).
    unknown = [d for d in inbox.dead if "not in the registry" in d.detail or "more unknown_terminal" in d.detail]
    assert 2 <= len(unknown) <= 6 and all(d.stage == STAGE for d in unknown)
    assert any("more unknown_terminal refusals" in d.detail for d in unknown)


@contextlib.asynccontextmanager
async def gateway(mosquitto: MosquittoProcess, spec: LowerPlatformSim, limits: GatewayLimits | None = None,
                  sublink_heartbeat_s: float = 60.0) -> AsyncIterator[Jt809Gateway]:
    lower = LowerPlatform(spec.access_code, spec.user_id, spec.password, "test", keys=spec.keys)
    platform = Jt809Platform(StaticPlatforms({spec.access_code: lower}),
                             StaticVehicles.of({(spec.plate(i), spec.colour): spec.device_id(i)
                                                for i in range(spec.vehicles)}))
    async with MqttClient(mosquitto.url, "jt809-test-gateway", clean_start=True) as mqtt:
        async def dead_letter(letter: DeadLetter) -> None:
            await mqtt.publish(dead_letter_topic(STAGE), encode(letter))

        gw = Jt809Gateway(platform, mqtt.publish, dead_letter=dead_letter,
                          limits=limits or GatewayLimits(sweep_interval_s=0.2), sublink_heartbeat_s=sublink_heartbeat_s)
        await gw.start("127.0.0.1", 0)
        try:
            yield gw
        finally:
            await gw.stop()


def address(gw: Jt809Gateway) -> tuple[str, int]:
    assert gw.server._server is not None
    host, port = gw.server._server.sockets[0].getsockname()[:2]
    return host, port


async def test_wrong_password_is_refused(mosquitto: MosquittoProcess) -> None:
    async with observing(mosquitto) as inbox, gateway(mosquitto, SPEC) as gw:
        with pytest.raises(LoginRefused) as err:
            await run(replace(SPEC, password="guess"), *address(gw))
        assert err.value.result == LoginResult.BAD_PASSWORD
        await until(lambda: any("auth_failed" in d.detail for d in inbox.dead))
        assert not inbox.telemetry and gw.stats()["authenticated"] == 0
        assert "guess" not in repr(inbox.dead)


async def test_slowloris_and_huge_length_are_cut(mosquitto: MosquittoProcess) -> None:
    limits = GatewayLimits(auth_timeout_s=1.0, sweep_interval_s=0.2, max_preauth_per_address=2)
    async with gateway(mosquitto, SPEC, limits) as gw:
        host, port = address(gw)
        # Slowloris: a login trickled one byte at a time never completes in time.
        reader, writer = await asyncio.open_connection(host, port)
        login = encode_frame(MsgId.UP_CONNECT_REQ, 1, SPEC.access_code, bytes(46))
        closed = False
        async with asyncio.timeout(15):
            for b in login:
                try:
                    writer.write(bytes((b,)))
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.3):
                        if await reader.read(100) == b"":
                            closed = True
                            break
        writer.close()
        assert closed and gw.stats()["closed.auth_timeout"] == 1

        # Huge MSG_LENGTH and a tail that never comes: nothing beyond the frame bound is held.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\x5b" + (0xFFFFFFF0).to_bytes(4, "big") + bytes(22))
        for _ in range(20):
            writer.write(bytes(8192))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await until(lambda: gw.stats().get("rejected.frame_too_long", 0) >= 1)
        assert gw.stats()["buffered_bytes"] <= 32 * 1024 + 16 * 1024
        writer.close()

        # Unauthenticated connections per address are capped.
        conns = [await asyncio.open_connection(host, port) for _ in range(3)]
        await until(lambda: gw.stats()["connections_refused"] >= 1)
        for _, w in conns:
            w.close()


async def test_sub_link_heartbeats_against_the_simulator(mosquitto: MosquittoProcess) -> None:
    spec = replace(SPEC, vehicles=2, unknown_vehicles=0, duration_s=120, outage_at_s=None)
    async with gateway(mosquitto, spec, sublink_heartbeat_s=0.2) as gw:
        task = asyncio.create_task(run(spec, *address(gw), hold_s=1.5))
        await until(lambda: (c := gw.sublink(spec.access_code)) is not None and c.stats.state == "up")
        stats = await task
        assert stats.sublink_logins == [True] and stats.sublink_heartbeats >= 2
        assert gw.sublink(spec.access_code) is None  # the logout closed it


class FakeLower:
    """A hand-driven lower platform: main link to the gateway, a sub-link listener answering 0x9001."""

    def __init__(self, spec: LowerPlatformSim, accept: bool = True) -> None:
        self.spec, self.accept = spec, accept
        self.verify: list[int] = []
        self.sub_writers: list[asyncio.StreamWriter] = []
        self.sub_logins: list[int] = []
        self.serial = 0

    def frame(self, msg_id: int, body: bytes) -> bytes:
        self.serial += 1
        return encode_frame(msg_id, self.serial, self.spec.access_code, body)

    async def on_sub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        splitter = Jt809StreamSplitter()
        while data := await reader.read(4096):
            for item in splitter.feed(data):
                if isinstance(item, bytes) and decode_frame(item).header.msg_id == MsgId.DOWN_CONNECT_REQ:
                    self.sub_logins.append(parse_verify_code(decode_frame(item).body))
                    ok = self.accept and self.sub_logins[-1] == self.verify[-1]
                    writer.write(self.frame(MsgId.DOWN_CONNECT_RSP, bytes((0 if ok else 1,))))
                    self.sub_writers.append(writer)

    def position(self, vehicle: int, when: datetime) -> bytes:
        g = GnssData(False, when, 120_170_000, 30_250_000, 50, 50, 1, 0, 0, 3, 0)
        return self.frame(MsgId.UP_EXG_MSG, build_envelope(self.spec.plate(vehicle), self.spec.colour,
                                                           DataType.UP_EXG_MSG_REAL_LOCATION, build_gnss(g)))


async def test_vehicle_data_over_the_sub_link(mosquitto: MosquittoProcess) -> None:
    spec = replace(SPEC, keys=None)
    lower = FakeLower(spec)
    server = await asyncio.start_server(lower.on_sub, "127.0.0.1", 0)
    sub_port = server.sockets[0].getsockname()[1]
    async with observing(mosquitto) as inbox, gateway(mosquitto, spec) as gw:
        reader, writer = await asyncio.open_connection(*address(gw))
        writer.write(lower.frame(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(spec.user_id, spec.password,
                                                                                  "127.0.0.1", sub_port))))
        splitter = Jt809StreamSplitter()
        reply = [i for i in splitter.feed(await reader.read(4096)) if isinstance(i, bytes)]
        result, code = parse_login_reply(decode_frame(reply[0]).body)
        assert result == LoginResult.OK
        lower.verify.append(code)
        await until(lambda: bool(lower.sub_writers))
        await until(lambda: (c := gw.sublink(spec.access_code)) is not None and c.stats.state == "up")
        writer.close()  # the main link drops; the sub link carries the data
        when = datetime(2026, 12, 3, 10, 0, tzinfo=CHINA)
        lower.sub_writers[0].write(lower.position(0, when) + lower.position(0, when + timedelta(seconds=30)))
        await until(lambda: len(inbox.telemetry.get(spec.device_id(0), [])) == 2)
        assert lower.sub_logins == [code]
        assert [t.ts for t in inbox.telemetry[spec.device_id(0)]] == [when, when + timedelta(seconds=30)]
        lower.sub_writers[0].close()
    server.close()


async def test_sub_link_refused_by_the_lower_platform_is_not_retried(mosquitto: MosquittoProcess) -> None:
    spec = replace(SPEC, keys=None)
    lower = FakeLower(spec, accept=False)
    server = await asyncio.start_server(lower.on_sub, "127.0.0.1", 0)
    sub_port = server.sockets[0].getsockname()[1]
    async with gateway(mosquitto, spec) as gw:
        reader, writer = await asyncio.open_connection(*address(gw))
        writer.write(lower.frame(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(spec.user_id, spec.password,
                                                                                  "127.0.0.1", sub_port))))
        reply = [i for i in Jt809StreamSplitter().feed(await reader.read(4096)) if isinstance(i, bytes)]
        lower.verify.append(parse_login_reply(decode_frame(reply[0]).body)[1])
        await until(lambda: (c := gw.sublink(spec.access_code)) is not None and c.stats.state == "refused")
        client = gw.sublink(spec.access_code)
        assert client is not None
        await asyncio.sleep(1.5)
        assert client.stats.attempts == 1 and client.stats.refused == 1 and len(lower.sub_logins) == 1
        writer.close()
    server.close()


async def test_store_and_forward_outbox(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    spec = replace(SPEC, vehicles=2, unknown_vehicles=0, duration_s=300, outage_at_s=None, keys=None)
    registry, platforms = write_files(tmp_path, spec)
    args = build_parser().parse_args(["--listen", "127.0.0.1:0", "--mqtt", mosquitto.url, "--platforms",
                                      str(platforms), "--registry", str(registry), "--data-dir",
                                      str(tmp_path / "outbox")])
    async with observing(mosquitto) as inbox:
        stop = asyncio.Event()
        bound: list[tuple[str, int]] = []
        task = asyncio.create_task(serve(args, stop, bound.append))
        await until(lambda: bool(bound))
        try:
            await run(spec, *bound[0])
            await until(lambda: inbox.count() == 20)
        finally:
            stop.set()
            await task
    assert (tmp_path / "outbox" / "outbox.sqlite3").exists()
    assert sorted(inbox.telemetry) == [spec.device_id(0), spec.device_id(1)]
