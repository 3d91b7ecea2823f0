"""The first end-to-end slice against real servers.

A third-party client (``mosquitto_pub``) publishes elevator telemetry as the device itself; the
platform (rules, alerting, storage in one process, as ``vigil run`` builds it) raises an alert on
``vigil/v1/alerts/...``, Apprise delivers a notification to a local HTTP receiver over
``json://``, and the telemetry and the alert are read back from InfluxDB 1.6 with InfluxQL.
Then the condition clears and a resolved alert follows. Bad input yields dead letters and the
platform keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from broker.contracts import ALERTS_FILTER, DEAD_LETTER_FILTER, decode_alert, decode_dead_letter
from broker.mosquitto import free_port, running_mosquitto
from broker.mqtt import Message, MqttClient
from broker.registry import DeviceRegistry
from storage.localservers import InfluxdProcess
from vigil.config import VigilConfig
from vigil.runtime import Platform, build_platform, run_platform

PASSWORDS = {"elev-0001": "dev-pw-1", "elev-0002": "dev-pw-2", "vigil-platform": "plat-pw", "control-room": "cr-pw"}
REGISTRY = DeviceRegistry.from_data({
    "sites": [{"id": "cuiyuan-3", "name": "翠苑三区3幢", "unit": "市场监管局"}],
    "devices": [
        {"id": "elev-0001", "kind": "elevator", "site": "cuiyuan-3", "password": PASSWORDS["elev-0001"],
         "attributes": {"rated_speed_mps": 1.75}},
        {"id": "elev-0002", "kind": "elevator", "site": "cuiyuan-3", "password": PASSWORDS["elev-0002"],
         "attributes": {"rated_speed_mps": 1.0}},
    ],
    "services": [
        {"name": "vigil-platform", "role": "platform", "password": PASSWORDS["vigil-platform"]},
        {"name": "control-room", "role": "observer", "password": PASSWORDS["control-room"]},
    ],
})


@dataclass
class Receiver:
    """A local HTTP endpoint that Apprise's json:// plugin posts to."""

    port: int
    posts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Stack:
    broker_port: int
    influx: InfluxdProcess
    receiver: Receiver
    platform: Platform
    alerts: list[Message]
    dead_letters: list[Message]
    platform_port: int = 0
    """The platform accounts' listener (devices use ``broker_port``)."""

    def publish(self, device: str, topic: str, payload: bytes | str, *, user: str | None = None) -> None:
        """Publish like a field device would, with Mosquitto's own client."""
        user = user or device
        data = payload.encode() if isinstance(payload, str) else payload
        port = self.platform_port if user == "vigil-platform" else self.broker_port
        proc = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-u", user,
             "-P", PASSWORDS[user], "-i", f"pub-{device}-{time.monotonic_ns()}", "-t", topic, "-s"],
            input=data, capture_output=True, timeout=10,
        )
        assert proc.returncode == 0, proc.stderr

    def influxql(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.influx.url}/query?" + urllib.parse.urlencode({"db": "vigil", "q": query, "epoch": "ms"})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        rows: list[dict[str, Any]] = []
        for result in body.get("results", []):
            for series in result.get("series", []):
                for values in series["values"]:
                    rows.append(dict(zip(series["columns"], values, strict=True)) | series.get("tags", {}))
        return rows


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    receiver = Receiver(port=free_port())
    app = web.Application()

    async def on_post(request: web.Request) -> web.Response:
        receiver.posts.append({"path": request.path, **(await request.json())})
        return web.Response(text="ok")

    app.router.add_post("/{tail:.*}", on_post)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()

    influx = InfluxdProcess(tmp_path / "influxdb")
    await asyncio.to_thread(influx.start)
    try:
        async with _platform_stack(tmp_path, influx, receiver) as stack:
            yield stack
    finally:
        await asyncio.to_thread(influx.stop)
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _platform_stack(tmp_path: Path, influx: InfluxdProcess, receiver: Receiver) -> AsyncIterator[Stack]:
    with running_mosquitto(tmp_path / "mosquitto", REGISTRY) as broker:
        mqtt_url = broker.account_url("vigil-platform", PASSWORDS["vigil-platform"])
        config = msgspec.convert({
            "node": "e2e",
            "state_dir": str(tmp_path / "state"),
            "services": ["rules", "alerting", "storage"],
            "mqtt": {"url": mqtt_url, "client_id": "vigil-e2e"},
            "rules": {"packs": ["elevator"]},
            "storage": {"backend": "influxdb-v1",
                        "influxdb_v1": {"url": influx.url, "database": "vigil"},
                        "writer": {"flush_interval_s": 0.05}},
            "alerting": {
                "receivers": [{"name": "duty-phone", "urls": [f"json://127.0.0.1:{receiver.port}/duty"]}],
                "people": [],
                "escalation_policies": [],
                "inhibit_rules": [],
                "api": {"enabled": False},
                "route": {"receivers": ["duty-phone"], "group_by": ["rule", "device_id"], "group_wait_s": 0,
                          "group_interval_s": 0, "repeat_interval_s": 3600, "send_resolved": True},
            },
        }, VigilConfig)
        platform = build_platform(config, REGISTRY)
        stop = asyncio.Event()
        task = asyncio.create_task(run_platform(platform, stop))
        observer_url = broker.account_url("control-room", PASSWORDS["control-room"])
        alerts: list[Message] = []
        dead: list[Message] = []
        observer = MqttClient(observer_url, "control-room-e2e", clean_start=True)
        observer.subscribe(ALERTS_FILTER, alerts.extend)
        observer.subscribe(DEAD_LETTER_FILTER, dead.extend)
        await observer.start()
        await wait_for(lambda: platform.mqtt.connected, 10, "platform connection")
        await asyncio.sleep(0.3)
        try:
            yield Stack(broker.port, influx, receiver, platform, alerts, dead, broker.platform_port)
        finally:
            await observer.stop()
            stop.set()
            await asyncio.wait_for(task, 30)


def telemetry(ts: datetime, speed: float, door: str = "closed") -> str:
    return json.dumps({"v": 1, "ts": ts.isoformat().replace("+00:00", "Z"),
                       "metrics": {"speed_mps": speed, "door": door, "floor": 7, "direction": "up"}})


async def test_overspeed_fires_notifies_lands_in_influxdb_and_resolves(stack: Stack) -> None:
    topic = "vigil/v1/elevator/elev-0001/telemetry"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    # 2.4 m/s against a rated 1.75 m/s (limit 1.15x = 2.01), held for more than the rule's 2 s.
    for i in range(5):
        await asyncio.to_thread(stack.publish, "elev-0001", topic, telemetry(t0 + timedelta(seconds=i), 2.4))

    def firing() -> list[Any]:
        return [a for a in (decode_alert(m.payload) for m in stack.alerts if m.payload)
                if a.status == "firing" and a.rule == "elevator_overspeed"]

    alert = (await wait_for(firing, 15, "a firing overspeed alert"))[0]
    assert alert.device_id == "elev-0001" and alert.kind == "elevator"
    assert alert.severity in ("major", "critical") and alert.summary and alert.id
    assert alert.starts_at >= t0

    notes = await wait_for(lambda: [p for p in stack.receiver.posts if p["path"] == "/duty"], 15, "a notification")
    assert "elev-0001" in json.dumps(notes[0], ensure_ascii=False)

    # Back to normal speed: the rule clears and a resolved alert follows, for the same alert id.
    for i in range(5, 9):
        await asyncio.to_thread(stack.publish, "elev-0001", topic, telemetry(t0 + timedelta(seconds=i), 1.0))

    def resolved() -> list[Any]:
        return [a for a in (decode_alert(m.payload) for m in stack.alerts if m.payload)
                if a.status == "resolved" and a.id == alert.id]

    await wait_for(resolved, 15, "the resolved alert")

    # Rules and alerting share this process: both transitions were handed over directly; their
    # MQTT echoes (one per overlapping subscription of the platform: the ingest's
    # vigil/v1/+/+/+ also matches transition topics) were recognised and skipped, and the
    # alert went through its lifecycle once.
    counters = stack.platform.stages["alerting"].counters  # type: ignore[attr-defined]
    await wait_for(lambda: counters["transitions_duplicate"] >= 2, 10, "the transitions' MQTT echoes")
    await asyncio.sleep(0.5)
    assert counters["transitions_local"] == counters["transitions"] == 2, dict(counters)
    assert counters["transition_new"] == 1 and counters["transition_resolved"] == 1, dict(counters)
    assert counters["transitions_duplicate"] in (2, 4)  # 4 when the broker sends a copy per subscription
    assert len(notes) == 1 and len(firing()) == 1

    # Telemetry and alert history are in InfluxDB, read back with InfluxQL.
    def points() -> list[dict[str, Any]]:
        return stack.influxql("SELECT * FROM /.*/ WHERE device = 'elev-0001'")

    rows = await wait_for(lambda: len([r for r in points() if r.get("speed_mps") is not None]) >= 9 and points(),
                          20, "nine telemetry points in InfluxDB")
    speeds = sorted(r["speed_mps"] for r in rows if r.get("speed_mps") is not None)
    assert speeds == [1.0] * 4 + [2.4] * 5
    alert_rows = await wait_for(lambda: stack.influxql("SELECT * FROM alerts"), 20, "alert rows in InfluxDB")
    statuses = {r.get("status") for r in alert_rows}
    assert {"firing", "resolved"} <= statuses


async def test_bad_input_is_dead_lettered_and_the_platform_keeps_working(stack: Stack) -> None:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    cases = {
        "malformed_json": ("vigil/v1/elevator/elev-0002/telemetry", b'{"ts": "2026-11-26T05:00:00Z", "metrics": {'),
        "not_utf8": ("vigil/v1/elevator/elev-0002/telemetry", b'{"ts":"' + now.encode() + b'","metrics":{"door":"\xff"}}'),
        "schema": ("vigil/v1/elevator/elev-0002/telemetry", json.dumps({"ts": now, "metrics": {"speed_mps": [1]}})),
        "too_large": ("vigil/v1/elevator/elev-0002/telemetry",
                      json.dumps({"ts": now, "metrics": {"speed_mps": 1.0}, "pad": "x" * 70_000})),
        "unsupported_version": ("vigil/v1/elevator/elev-0002/telemetry",
                                json.dumps({"v": 7, "ts": now, "metrics": {}})),
    }
    for payload_topic, payload in cases.values():
        await asyncio.to_thread(stack.publish, "elev-0002", payload_topic, payload)
    # The platform account can reach topics a device cannot: an unknown kind and a bad topic.
    await asyncio.to_thread(stack.publish, "x", "vigil/v1/toaster/t-1/telemetry",
                            json.dumps({"ts": now, "metrics": {}}), user="vigil-platform")
    await asyncio.to_thread(stack.publish, "x", "vigil/v1/elevator/elev-0002/gossip", b"{}", user="vigil-platform")
    expected = set(cases) | {"unknown_kind", "bad_topic"}

    def reasons() -> set[str]:
        return {decode_dead_letter(m.payload).reason.value for m in stack.dead_letters}

    try:
        await wait_for(lambda: expected <= reasons(), 15, f"dead letters for {expected}")
    except AssertionError:
        raise AssertionError(f"dead letters seen: {sorted(reasons())}; ingest counted "
                             f"{dict(stack.platform.ingest.rejected)}") from None
    letters = [decode_dead_letter(m.payload) for m in stack.dead_letters]
    big = next(d for d in letters if d.reason == "too_large")
    assert big.size > 70_000 and big.truncated
    schema = next(d for d in letters if d.reason == "schema")
    assert "$.metrics" in schema.detail
    rejected = stack.platform.ingest.rejected
    assert sum(rejected.values()) >= len(expected)

    # Still alive: a good message is processed and stored.
    good_ts = datetime.now(UTC).replace(microsecond=0)
    await asyncio.to_thread(stack.publish, "elev-0002", "vigil/v1/elevator/elev-0002/telemetry",
                            telemetry(good_ts, 0.5))
    await wait_for(lambda: stack.influxql("SELECT speed_mps FROM /.*/ WHERE device = 'elev-0002'"), 20,
                   "the good message in InfluxDB")
    # Dead letters are kept in InfluxDB too.
    await wait_for(lambda: stack.influxql("SELECT * FROM dead_letters"), 20, "dead letters in InfluxDB")
