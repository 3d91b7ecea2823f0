"""The fault suite's world: real Mosquitto, InfluxDB 1.6, `vigil run`, a gateway process, a notification
receiver and a dead-man watchdog; and the accounting of what was published, stored, lost and notified twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from storage.localservers import InfluxdProcess
from tests.support.child import ChildProcess
from vigil.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[2]
GATEWAY = Path(__file__).with_name("gateway_proc.py")
NODE = "faults"
RULES = """\
rules:
  - name: fault_overspeed
    kind: elevator
    severity: major
    condition: "speed_mps > 3"
    summary: "超速 {device_id} 第 {episode} 次"
    summary_en: "overspeed {device_id} episode {episode}"
"""
ALERT_LINK = re.compile(r"/alerts/([A-Za-z0-9_\-]+)")


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str],
                   step: float = 0.1) -> Any:
    """Poll until ``predicate`` is truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {text}")
        await asyncio.sleep(step)


@dataclass
class Receiver:
    """Apprise ``json://`` endpoints: ``/duty`` answers at once; on a second server (another channel's host),
    ``/hung`` waits for ``release`` and ``/broken`` answers 500."""

    port: int = field(default_factory=free_port)
    bad_port: int = field(default_factory=free_port)
    posts: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hung_calls: int = 0
    broken_calls: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def on_post(request: web.Request) -> web.Response:
            body = await request.json()
            if request.path == "/hung":
                self.hung_calls += 1
                await self.release.wait()
            elif request.path == "/broken":
                self.broken_calls += 1
                return web.Response(status=500, text="channel broken")
            self.posts.append({"path": request.path, "title": body.get("title", ""),
                               "message": body.get("message", ""), "at": time.time()})
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", on_post)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        await web.TCPSite(self._runner, "127.0.0.1", self.bad_port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        port = self.bad_port if path in ("hung", "broken") else self.port
        return f"json://127.0.0.1:{port}/{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["path"] == f"/{path}"]

    def duplicates(self, path: str = "duty") -> list[tuple[str, str]]:
        """Notifications of the same kind about the same alert delivered more than once."""
        keys = Counter()
        for p in self.on(path):
            m = ALERT_LINK.search(p["message"])
            keys[(p["title"].split(":")[0], m.group(1) if m else p["title"])] += 1
        return [k for k, n in keys.items() if n > 1]

    def episodes(self, path: str = "duty", kind: str = "Alert") -> set[tuple[str, int]]:
        """(device, episode) of the overspeed notifications of this kind."""
        out = set()
        for p in self.on(path):
            m = re.search(r"\] (\w+): overspeed (elev-f\d+) episode (\d+)", p["title"])
            if m and m.group(1) == kind:
                out.add((m.group(2), int(m.group(3))))
        return out

    def platform_alerts(self, check: str, kind: str = "Alert", path: str = "duty") -> list[dict[str, Any]]:
        """Notifications of the platform's own alert for ``check`` (title ends with the node name)."""
        words = {"broker": "broker", "ingest": "cannot store", "disk": "data folder", "influxdb": "time-series",
                 "notifications": "notifications dead", "clock": "device clocks"}[check]
        return [p for p in self.on(path) if f"] {kind}:" in p["title"] and words in p["title"]
                and p["title"].endswith(f"- {NODE}")]


class PlatformProc(ChildProcess):
    """``vigil run`` as a child process (so it can be SIGKILLed)."""

    stop_timeout_s = 30.0

    def __init__(self, config: Path, log: Path, state_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(log)
        self.config, self.state_dir = config, state_dir
        self.env = env or {}
        """Extra environment (e.g. libfaketime's ``LD_PRELOAD`` for the platform clock case)."""

    def start(self) -> None:
        self.launch_vigil(["run", "--config", str(self.config)], self.env)

    def _base(self) -> str | None:
        try:
            host, port = (self.state_dir / NODE / "health.port").read_text().split()
            return f"http://{host}:{port}"
        except (OSError, ValueError):
            return None

    def get(self, path: str) -> str | None:
        base = self._base()
        if base is None:
            return None
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as exc:
            return str(exc.read().decode())
        except OSError:
            return None

    def health(self) -> dict[str, Any] | None:
        text = self.get("/health")
        return json.loads(text) if text else None

    def metric(self, name: str) -> float | None:
        text = self.get("/metrics") or ""
        m = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def unexpected_tracebacks(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if line.startswith("Traceback")]


class GatewayProc(ChildProcess):
    """The suite's gateway (tests/faults/gateway_proc.py) as a child process."""

    def __init__(self, world: World, count: int, jump: str = "") -> None:
        super().__init__(world.tmp / "gateway.log")
        self.world, self.count, self.jump = world, count, jump
        self.data_dir = world.tmp / "gateway"
        self.ledger = world.tmp / "ledger.txt"

    def start(self) -> None:
        cmd = [str(GATEWAY), "--url", self.world.broker.url, "--data-dir", str(self.data_dir),
               "--ledger", str(self.ledger), "--count", str(self.count), "--rate", str(self.world.rate),
               "--base-ts", str(self.world.base_ts)]
        if self.jump:
            cmd += ["--jump", self.jump]
        self.launch(cmd)

    def published(self) -> set[int]:
        try:
            return {int(x) for x in self.ledger.read_text().split("\n") if x.strip().isdigit()}
        except FileNotFoundError:
            return set()

    def flushed(self) -> bool:
        log = self.world.tmp / "gateway.log"
        return log.exists() and "flushed" in log.read_text(errors="replace")


@dataclass
class World:
    """One fault case's servers and processes."""

    tmp: Path
    influx: InfluxdProcess
    database: str
    broker: MosquittoProcess
    receiver: Receiver
    watchdog: Watchdog
    watchdog_port: int
    rate: float = 200.0
    base_ts: float = field(default_factory=lambda: time.time() - 5.0)
    platform: PlatformProc | None = None
    gateway: GatewayProc | None = None
    state_dir: Path | None = None

    def write_config(self, *, receivers: list[dict[str, Any]], route_receivers: list[str],
                     storage: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
                     retry: dict[str, Any] | None = None, state_dir: Path | None = None,
                     rules_text: str = RULES, platform_env: dict[str, str] | None = None) -> Path:
        rules = self.tmp / "rules.yaml"
        rules.write_text(rules_text)
        self.state_dir = state_dir or self.tmp / "state"
        cfg = {
            "node": NODE, "state_dir": str(self.state_dir), "services": ["rules", "alerting", "storage"],
            "log_level": "warning",
            "mqtt": {"url": self.broker.url, "client_id": "vigil-faults"},
            "rules": {"packs": [], "paths": [str(rules)], "tick_interval_s": 0.5, "snapshot_interval_s": 2},
            "storage": {"backend": "influxdb-v1",
                        "influxdb_v1": {"url": self.influx.url, "database": self.database, "create_database": True},
                        "writer": {"flush_interval_s": 0.05, "retry_max_s": 1.0, "timeout_s": 3},
                        "outbox": {"min_free_bytes": 1 << 20}, **(storage or {})},
            "alerting": {
                "locale": "en", "receivers": receivers, "people": [], "escalation_policies": [],
                "inhibit_rules": [], "api": {"enabled": False}, "reopen_window_s": 0,
                "retry": {"attempts": 2, "backoff_s": 0.1, "backoff_max_s": 0.5, "timeout_s": 2, **(retry or {})},
                "storm": {"max_per_minute": 10000, "digest_s": 60},
                "route": {"receivers": route_receivers, "group_by": ["..."], "group_wait_s": 0,
                          "group_interval_s": 0, "repeat_interval_s": 86400, "send_resolved": True},
            },
            "health": {"interval_s": 0.5, "broker_down_s": 2, "ingest_stalled_s": 1, "backend_down_s": 2,
                       "disk_min_free_bytes": 1 << 20, "dead_letter_quiet_s": 5,
                       "heartbeat": {"url": f"http://127.0.0.1:{self.watchdog_port}/ping/{NODE}", "interval_s": 0.3,
                                     "timeout_s": 2},
                       **(health or {})},
        }
        path = self.tmp / "vigil.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        self.platform = PlatformProc(path, self.tmp / "platform.log", self.state_dir, platform_env)
        return path

    async def start_platform(self) -> None:
        assert self.platform is not None
        self.platform.start()
        await wait_for(lambda: (self.platform.health() or {}).get("stats", {}).get("mqtt", {}).get("connected"),
                       60, f"the platform to connect; log:\n{self.platform.log_tail()}", step=0.2)

    def start_gateway(self, count: int, jump: str = "") -> GatewayProc:
        self.gateway = GatewayProc(self, count, jump)
        self.gateway.start()
        return self.gateway

    def influxql(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.influx.url}/query?" + urllib.parse.urlencode({"db": self.database, "q": query, "epoch": "ms"})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except OSError:
            return []
        rows: list[dict[str, Any]] = []
        for result in body.get("results", []):
            for series in result.get("series", []):
                for values in series["values"]:
                    rows.append(dict(zip(series["columns"], values, strict=True)) | series.get("tags", {}))
        return rows

    def stored(self) -> set[int]:
        return {int(r["seq"]) for r in self.influxql('SELECT "seq" FROM "telemetry_elevator"') if r.get("seq") is not None}

    def kill_broker(self) -> None:
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGKILL)
        self.broker.proc.wait()
        self.broker.stop()

    async def settle(self, count: int, timeout: float = 90.0) -> Outcome:
        """Wait until the gateway flushed and every published message is stored (or ``timeout``); count."""
        assert self.gateway is not None
        gw = self.gateway
        await wait_for(lambda: gw.flushed() or (gw.proc is not None and gw.proc.poll() is not None),
                       timeout, "the gateway to hand over everything", step=0.2)
        published = gw.published()
        deadline = time.monotonic() + timeout
        stored: set[int] = set()
        while time.monotonic() < deadline:
            stored = await asyncio.to_thread(self.stored)
            if published <= stored:
                break
            await asyncio.sleep(0.5)
        return Outcome(published=len(published), stored=len(stored & published),
                       lost=sorted(published - stored), expected=count)

    def expected_episodes(self, published: int, devices: int = 4, skip_device: str | None = None) -> set[tuple[str, int]]:
        """(device, episode) whose overspeed samples were published."""
        from tests.faults.gateway_proc import EPISODE, device_of

        out = set()
        for i in range(published):
            k = i // devices
            if k % EPISODE == 11:
                dev = device_of(i, devices)
                if dev != skip_device:
                    out.add((dev, k // EPISODE))
        return out


@dataclass
class Outcome:
    """What one case published, stored and lost."""

    published: int
    stored: int
    lost: list[int]
    expected: int


@contextlib.asynccontextmanager
async def world(tmp: Path, influx: InfluxdProcess, case: str):  # type: ignore[no-untyped-def]
    """Mosquitto, receiver and watchdog for one case; the platform and gateway are stopped on exit."""
    broker = MosquittoProcess(BrokerLayout(data_dir=tmp / "mosquitto", port=free_port()))
    await asyncio.to_thread(broker.start)
    receiver = Receiver()
    await receiver.start()
    dog = Watchdog(lambda _t, _b: True, timeout_s=2.0, expect=[])
    dog_port = free_port()
    dog_task = asyncio.create_task(dog.run("127.0.0.1", dog_port, period_s=0.2))
    w = World(tmp, influx, f"faults_{case}", broker, receiver, dog, dog_port)
    try:
        yield w
    finally:
        for proc in (w.gateway, w.platform):
            if proc is not None:
                await asyncio.to_thread(proc.stop)
        dog_task.cancel()
        await asyncio.gather(dog_task, return_exceptions=True)
        await receiver.stop()
        await asyncio.to_thread(broker.stop)
