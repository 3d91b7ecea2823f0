"""Gateways and the camera agent with ``--data-dir``: a real Mosquitto stopped and restarted under live traffic.

Every message published while the broker was down waits in the on-disk outbox and arrives after it
returns, in order per device, none lost (duplicates are allowed: delivery is at least once).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.contracts import (
    DeviceEvent,
    DeviceStatus,
    Telemetry,
    decode_device_message,
    device_filter,
)
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from edge.camera.config import EvidenceSettings, camera_from_dict
from edge.camera_agent import CameraAgent
from edge.hj212.cli import Hj212GatewayConfig, serve
from edge.hj212.codec import Hj212Frame, Hj212FrameReader, parse_packet
from edge.hj212.gateway import packet_to_telemetry
from edge.jt808.cli import build_parser
from edge.jt808.cli import serve as serve_jt808
from simulators.camera_scenes import SCENARIO_DIR, Scene, render_file
from simulators.hj212_logger import LoggerModel, load_scenario, run_fleet
from simulators.jt808_terminal import drive, plan, run_scenario
from simulators.jt808_terminal import load_scenario as load_jt808

REPO = Path(__file__).resolve().parents[2]
HJ212_SCENARIO = REPO / "simulators" / "scenarios" / "hj212_faults.yaml"
JT808_SCENARIO = REPO / "simulators" / "scenarios" / "jt808_hazmat.yaml"


class Inbox:
    """Device messages seen by a persistent-session subscriber, decoded, in arrival order."""

    def __init__(self) -> None:
        self.arrived: list[tuple[str, Any]] = []
        self.live: list[Any] = []
        """Payloads forwarded as published (not retained copies replayed on a re-subscription)."""

    def __call__(self, batch: list[Message]) -> None:
        for m in batch:
            msg = decode_device_message(m.topic, m.payload)
            self.arrived.append((msg.device_id, msg.payload))
            if not m.retain:
                self.live.append(msg.payload)

    def of(self, kind: type[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for device, payload in self.arrived:
            if isinstance(payload, kind):
                out.setdefault(device, []).append(payload)
        return out


def first_seen(items: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    """Keys in order of first arrival (at-least-once delivery may repeat a message)."""
    seen: set[Any] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def queued_on_disk(data_dir: Path) -> int:
    """Messages waiting in every outbox under ``data_dir`` (read beside the running agent)."""
    total = 0
    for path in data_dir.rglob("outbox.sqlite3"):
        db = sqlite3.connect(path)
        try:
            total += int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        finally:
            db.close()
    return total


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def outage(mosquitto: MosquittoProcess, data_dir: Path, after_s: float, down_s: float) -> int:
    """Stop the broker after ``after_s``, keep it down ``down_s``, start it; returns what was queued on disk."""
    await asyncio.sleep(after_s)
    await asyncio.to_thread(mosquitto.stop)
    await asyncio.sleep(down_s)
    queued = queued_on_disk(data_dir)
    await asyncio.to_thread(mosquitto.start)
    return queued


async def test_hj212_gateway_keeps_every_reading_across_a_broker_outage(mosquitto: MosquittoProcess,
                                                                        tmp_path: Path) -> None:
    # 4 loggers x 2 simulated hours (120 real-time + 12 ten-minute + 2 hourly packets each) over ~6 s.
    scenario = load_scenario(HJ212_SCENARIO, devices=4, faults=[], split_max_cp=0, speed=1200)
    expected: dict[str, list[tuple[str, str]]] = {}
    for index in range(scenario.devices):
        for timed in LoggerModel(scenario, index).frames():
            for frame in Hj212FrameReader().feed(timed.data):
                assert isinstance(frame, Hj212Frame)
                packet = parse_packet(frame.segment)
                if packet.cn in ("2011", "2051", "2061"):
                    for t in packet_to_telemetry(packet).messages:
                        expected.setdefault(packet.mn, []).append((t.ts.isoformat(), packet.cn))
    data_dir = tmp_path / "hj212-outbox"
    config = Hj212GatewayConfig(listen="127.0.0.1:0", mqtt=mosquitto.url, accept_unknown_devices=True,
                                data_dir=str(data_dir), gateway_name="hj212-test")
    inbox = Inbox()
    async with MqttClient(mosquitto.url, "hj212-sf-observer", backoff_max=0.5) as observer:
        observer.subscribe(device_filter("telemetry", "emission"), inbox)
        observer.subscribe(device_filter("status", "emission"), inbox)
        await asyncio.sleep(0.3)
        stop = asyncio.Event()
        bound: list[tuple[str, int]] = []
        gateway = asyncio.create_task(serve(config, stop=stop, bound=lambda h, p: bound.append((h, p))))
        await until(lambda: bool(bound), 10)
        broker_down = asyncio.create_task(outage(mosquitto, data_dir, after_s=1.5, down_s=3.0))
        stats = await run_fleet(scenario, *bound[0])
        queued_while_down = await broker_down
        total = sum(len(v) for v in expected.values())
        await until(lambda: all(len(set(map(_key, inbox.of(Telemetry).get(mn, [])))) == len(v)
                                for mn, v in expected.items()))
        stop.set()
        counters = await gateway

    assert queued_while_down > 0, "nothing waited on disk: the outage missed the traffic"
    assert stats.connected == scenario.devices and stats.disconnects == 0
    assert counters.published == total and stats.replies["9014"] == counters.packets
    telemetry = inbox.of(Telemetry)
    for mn, want in expected.items():
        assert first_seen(telemetry[mn], _key) == want, mn  # all of them, in the order the logger sent them
    statuses = inbox.of(DeviceStatus)
    assert all(statuses[mn][0].online for mn in expected)


def _key(t: Telemetry) -> tuple[str, str]:
    return t.ts.isoformat(), str(t.metrics["hj212.cn"])


async def test_jt808_gateway_keeps_every_position_across_a_broker_outage(mosquitto: MosquittoProcess,
                                                                        tmp_path: Path) -> None:
    data_dir = tmp_path / "jt808-outbox"
    args = build_parser().parse_args(["--listen", "127.0.0.1:0", "--mqtt", mosquitto.url, "--accept-unknown-devices",
                                      "--data-dir", str(data_dir), "--gateway-name", "jt808-test"])
    scenario = load_jt808(JT808_SCENARIO, time_scale=1000)  # 120 simulated minutes in ~7 s
    terminals = plan(scenario)
    expected = {t.device_id: [tick for tick in drive(scenario, t) if tick.online or tick.backfill] for t in terminals}
    inbox = Inbox()
    async with MqttClient(mosquitto.url, "jt808-sf-observer", backoff_max=0.5) as observer:
        observer.subscribe(device_filter("telemetry", "vehicle"), inbox)
        observer.subscribe(device_filter("event", "vehicle"), inbox)
        await asyncio.sleep(0.3)
        stop = asyncio.Event()
        bound: list[tuple[str, int]] = []
        server = asyncio.create_task(serve_jt808(args, stop, bound.append))
        await until(lambda: bool(bound), 10)
        broker_down = asyncio.create_task(outage(mosquitto, data_dir, after_s=2.0, down_s=3.0))
        await run_scenario(scenario, *bound[0])
        queued_while_down = await broker_down

        def complete() -> bool:
            got = inbox.of(Telemetry)
            return all(len({t.ts for t in got.get(d, [])}) == len(ticks) for d, ticks in expected.items())

        await until(complete)
        stop.set()
        await server

    assert queued_while_down > 0, "nothing waited on disk: the outage missed the traffic"
    telemetry = inbox.of(Telemetry)
    for device_id, ticks in expected.items():
        got = first_seen(telemetry[device_id], lambda t: t.ts)
        assert sorted(got) == sorted(tick.report.time for tick in ticks), device_id
        # Live positions arrive in the order they were driven (blind-area uploads come later by design).
        live = {tick.report.time for tick in ticks if tick.online and not tick.backfill}
        live_arrived = [ts for ts in got if ts in live]
        assert live_arrived == sorted(live), device_id
    events = inbox.of(DeviceEvent)
    assert any(e.type == "emergency" for evs in events.values() for e in evs)


async def test_camera_agent_queues_events_on_disk_until_the_broker_returns(mosquitto: MosquittoProcess,
                                                                           tmp_path: Path) -> None:
    night = Scene.load(SCENARIO_DIR / "camera_intrusion_night.yaml")
    video, _ = render_file(night, tmp_path)
    cam = camera_from_dict({**night.camera, "id": "yard-sf", "source": str(video),
                            "start_time": night.start_time.isoformat(), "telemetry_interval_s": 5.0})
    inbox = Inbox()
    async with MqttClient(mosquitto.url, "camera-sf-observer", backoff_max=0.5) as observer:
        observer.subscribe(device_filter("event", "camera"), inbox)
        observer.subscribe(device_filter("telemetry", "camera"), inbox)
        observer.subscribe(device_filter("status", "camera"), inbox)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(mosquitto.stop)
        data_dir = tmp_path / "camera-outbox"
        agent = CameraAgent([cam], mosquitto.url, EvidenceSettings(dir=str(tmp_path / "evidence")), workers=0,
                            data_dir=data_dir, linger_s=30.0)
        task = asyncio.create_task(agent.run())
        # The whole file is analysed with the broker down: its outputs can only be on disk.
        await until(lambda: bool(agent.links) and not any(t.name == "cameras" for t in threading.enumerate()), 60)
        await asyncio.sleep(0.5)
        queued = queued_on_disk(data_dir)
        assert not inbox.arrived
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(40):
            await task
        await until(lambda: len([p for _, p in inbox.arrived if not isinstance(p, DeviceStatus)]) >= queued)

    assert queued > 0
    assert len([p for _, p in inbox.arrived if not isinstance(p, DeviceStatus)]) >= queued
    events = inbox.of(DeviceEvent)["yard-sf"]
    intrusions = [(e.type, e.state) for e in events if e.type == "intrusion"]
    assert intrusions.count(("intrusion", "start")) == 2 and intrusions.count(("intrusion", "end")) == 2
    # Each event's start precedes its end: the outbox kept the order.
    order = first_seen(events, lambda e: (e.event_id, e.state))
    for event_id in {e.event_id for e in events}:
        states = [s for i, s in order if i == event_id]
        assert states[0] == "start"
    assert inbox.of(Telemetry)["yard-sf"]
    statuses = inbox.of(DeviceStatus)["yard-sf"]
    assert statuses[-1].online is False


async def test_retained_statuses_bypass_the_outbox_and_only_the_latest_is_sent(mosquitto: MosquittoProcess,
                                                                               tmp_path: Path) -> None:
    from broker.contracts import Channel, Kind, device_topic, encode, utcnow
    from edge.runtime.identity import EdgeIdentity
    from edge.runtime.sink import link_publisher

    topic = device_topic(Kind.EMISSION, "logger-1", Channel.STATUS)
    telemetry_topic = device_topic(Kind.EMISSION, "logger-1", Channel.TELEMETRY)
    inbox = Inbox()
    identity = EdgeIdentity.for_gateway("sink-test", agent="test")
    async with MqttClient(mosquitto.url, "sink-observer", backoff_max=0.5) as observer:
        observer.subscribe(topic, inbox)
        observer.subscribe(telemetry_topic, inbox)
        await asyncio.sleep(0.3)
        async with link_publisher(mosquitto.url, identity, tmp_path / "sink") as sink:
            assert await sink.link.wait_connected(10)
            await sink.publish(topic, encode(DeviceStatus(online=True, reason="first")), retain=True)
            await until(lambda: len(inbox.arrived) == 1)
            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: not sink.link.connected, 10)
            await sink.publish(topic, encode(DeviceStatus(online=True, reason="stale")), retain=True)
            await sink.publish(telemetry_topic, encode(Telemetry(ts=utcnow(), metrics={"n": 1})))
            await sink.publish(topic, encode(DeviceStatus(online=False, reason="latest")), retain=True)
            assert sink.unsent == 1 and len(sink.link.outbox) == 1  # the status is not in the outbox
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: len(inbox.arrived) >= 3)
            await sink.link.flush()
            await asyncio.sleep(0.3)

    # The observer's own re-subscription replays retained copies; what the sink published live is:
    assert [p.reason for p in inbox.live if isinstance(p, DeviceStatus)] == ["first", "latest"]
    assert [p.metrics for _, p in inbox.arrived if isinstance(p, Telemetry)] == [{"n": 1}]
    retained = Inbox()
    async with MqttClient(mosquitto.url, "sink-retained", clean_start=True) as check:
        check.subscribe(topic, retained)
        await until(lambda: bool(retained.arrived), 10)
    assert retained.arrived[0][1].reason == "latest"
