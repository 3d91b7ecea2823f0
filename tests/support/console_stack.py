"""A whole platform with the console on a private Mosquitto, for tests, benchmarks and screenshots.

``ConsoleStack`` starts an anonymous Mosquitto on a free port in a folder, builds rules, alerting
(and optionally storage) as ``vigil run`` does, adds the console with its peers, and offers helpers
to publish as a device and to call the console's HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from alerting.inbox import NotificationInbox
from broker.contracts import Channel, DeviceEvent, DeviceStatus, Kind, Telemetry, device_topic, encode
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from console.config import ConsoleConfig
from console.service import ConsoleService
from vigil.config import VigilConfig
from vigil.runtime import Platform, build_platform, run_platform

USERS = [
    {"name": "admin", "role": "admin", "token": "admin-token-0001"},
    {"name": "lead-li", "role": "supervisor", "token": "lead-token-0001", "unit": "市场监管局"},
    {"name": "op-wang", "role": "operator", "token": "wang-token-0001", "unit": "市场监管局"},
    {"name": "op-zhao", "role": "operator", "token": "zhao-token-0001", "unit": "市场监管局"},
]
PEOPLE = [
    {"id": "op-wang", "name": "王芳", "roles": ["operator"], "unit": "市场监管局", "channels": []},
    {"id": "op-zhao", "name": "赵敏", "roles": ["operator"], "unit": "市场监管局", "channels": []},
    {"id": "lead-li", "name": "李强", "roles": ["shift_lead"], "unit": "市场监管局", "channels": []},
]
ROSTERS = [{"name": "elevator-desk", "role": "operator", "unit": "市场监管局", "members": ["op-wang", "op-zhao"],
            "rotation": "shift", "handovers": ["08:00", "20:00"]}]

REGISTRY_DATA: dict[str, Any] = {
    "sites": [
        {"id": "cuiyuan-3", "name": "翠苑三区3幢", "industry": "elevator", "unit": "市场监管局", "lat": 30.2905,
         "lon": 120.1170},
        {"id": "xixi-tower", "name": "西溪华府1幢", "industry": "elevator", "unit": "市场监管局", "lat": 30.2770,
         "lon": 120.0850},
        {"id": "depot-east", "name": "东站危化品车队", "industry": "vehicles", "unit": "交通运输局", "lat": 30.2920,
         "lon": 120.2130},
    ],
    "devices": [
        {"id": "elev-0001", "kind": "elevator", "site": "cuiyuan-3", "name": "翠苑三区3幢 1号梯",
         "attributes": {"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0}},
        {"id": "elev-0002", "kind": "elevator", "site": "xixi-tower", "name": "西溪华府1幢 1号梯",
         "attributes": {"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0}},
        {"id": "truck-0001", "kind": "vehicle", "site": "depot-east", "name": "浙A·D1234 危化品运输车",
         "attributes": {"vehicle_class": "hazardous", "speed_limit_kmh": 80}},
    ],
}


def iso(ts: float) -> str:
    """RFC 3339 UTC of epoch seconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ConsoleStack:
    """Mosquitto + rules + alerting (+ storage) + console in this process."""

    folder: Path
    with_storage: bool = False
    console_options: dict[str, Any] = field(default_factory=dict)
    alerting_options: dict[str, Any] = field(default_factory=dict)
    broker: MosquittoProcess | None = None
    platform: Platform | None = None
    console: ConsoleService | None = None
    device_client: MqttClient | None = None
    inbox: NotificationInbox | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The console's base URL (no trailing slash)."""
        assert self.console is not None
        return f"http://127.0.0.1:{self.console.port}"

    @property
    def alerting(self) -> Any:
        """The alerting stage."""
        assert self.platform is not None
        return self.platform.stages["alerting"]

    async def __aenter__(self) -> ConsoleStack:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.broker = MosquittoProcess(BrokerLayout(data_dir=self.folder / "mosquitto", port=free_port()))
        await asyncio.to_thread(self.broker.start)
        registry = DeviceRegistry.from_data(REGISTRY_DATA)
        self.inbox = await NotificationInbox().start()
        people = [dict(p, channels=[self.inbox.url(f"/{p['id']}")]) for p in PEOPLE]
        services = ["rules", "alerting"] + (["storage"] if self.with_storage else [])
        alerting: dict[str, Any] = {
            "users": USERS, "people": people, "rosters": ROSTERS, "receivers": [], "inhibit_rules": [],
            "route": {"name": "root", "receivers": [], "escalation": "135", "group_by": ["rule", "site"],
                      "group_wait_s": 0, "group_interval_s": 30, "repeat_interval_s": 3600},
            "api": {"enabled": False},
            "maintenance": [{"name": "nightly-elevator-service", "matchers": ["site=xixi-tower"], "start": "02:00",
                             "duration_min": 60}],
        }
        alerting.update(self.alerting_options)
        # People given by a test without channels get an inbox path of their own, like the default people.
        alerting["people"] = [dict(p, channels=p.get("channels") or [self.inbox.url(f"/{p['id']}")])
                              for p in alerting["people"]]
        raw: dict[str, Any] = {
            "node": "console-test", "state_dir": str(self.folder / "state"), "services": services,
            "mqtt": {"url": self.broker.url, "client_id": f"vigil-console-test-{free_port()}"},
            "rules": {"packs": ["elevator", "vehicle"]},
            "alerting": alerting,
            "storage": {"backend": "sqlite", "writer": {"flush_interval_s": 0.05}},
        }
        config = msgspec.convert(raw, VigilConfig)
        self.platform = build_platform(config, registry)
        opts: dict[str, Any] = {"listen": "127.0.0.1:0", "device_push_s": 0.5}
        opts.update(self.console_options)
        console_cfg = msgspec.convert(opts, ConsoleConfig)
        state = Path(config.state_dir) / config.node / "console"
        self.console = ConsoleService(console_cfg, mqtt=self.platform.mqtt, ingest=self.platform.ingest,
                                      registry=registry, state_dir=state, peers=dict(self.platform.stages))
        self.console.attach()
        self.platform.stages["console"] = self.console
        self._task = asyncio.create_task(run_platform(self.platform, self._stop), name="console-stack")
        await wait_until(lambda: self.console is not None and self.console.started.is_set()
                         and self.platform is not None and self.platform.mqtt.connected, 15, "the platform")
        self.device_client = MqttClient(self.broker.url, f"devices-{free_port()}", clean_start=True)
        await self.device_client.start()
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.device_client is not None:
            await self.device_client.stop()
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 20)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.inbox is not None:
            await self.inbox.stop()

    # ------------------------------------------------------------------ devices

    async def publish(self, kind: str, device_id: str, channel: Channel, message: msgspec.Struct) -> None:
        """Publish as a device would."""
        assert self.device_client is not None
        await self.device_client.publish(device_topic(Kind(kind), device_id, channel), encode(message))
        await self.device_client.flush()

    async def telemetry(self, kind: str, device_id: str, metrics: dict[str, Any], ts: float | None = None) -> None:
        """Publish one telemetry message."""
        await self.publish(kind, device_id, Channel.TELEMETRY,
                           msgspec.convert({"ts": iso(ts or time.time()), "metrics": metrics}, Telemetry))

    async def event(self, kind: str, device_id: str, type_: str, state: str = "start", ts: float | None = None,
                    **extra: Any) -> None:
        """Publish one device event."""
        await self.publish(kind, device_id, Channel.EVENT, msgspec.convert(
            {"ts": iso(ts or time.time()), "type": type_, "state": state, "event_id": f"{type_}-{device_id}", **extra},
            DeviceEvent))

    async def status(self, kind: str, device_id: str, online: bool) -> None:
        """Publish a device status."""
        await self.publish(kind, device_id, Channel.STATUS, DeviceStatus(ts=datetime.now(UTC), online=online))

    # ------------------------------------------------------------------ HTTP

    def http(self) -> aiohttp.ClientSession:
        """A client session that keeps the console's cookie (it is set for an IP address)."""
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def login(self, http: aiohttp.ClientSession, user: str) -> str:
        """Log a client session in; returns the CSRF token."""
        token = next(u["token"] for u in USERS if u["name"] == user)
        async with http.post(f"{self.url}/api/login", json={"username": user, "password": token}) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["csrf"])


def token_of(user: str) -> str:
    """A test user's token."""
    return next(u["token"] for u in USERS if u["name"] == user)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll until ``predicate`` is truthy.

    Raises:
        AssertionError: naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pretty(data: Any) -> str:
    """JSON for failure messages."""
    return json.dumps(data, ensure_ascii=False, indent=1, default=str)[:3000]
