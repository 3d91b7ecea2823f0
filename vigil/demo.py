"""``vigil demo``: the whole system on one machine with simulated devices.

Starts a private Mosquitto configured from a generated registry (or, where Mosquitto is not
installed, an embedded amqtt broker with a warning), a private InfluxDB 1.x when Debian's
``influxdb`` is installed (else the embedded SQLite store), a local notification receiver that
Apprise delivers to over HTTP (``json://``), the platform stages (rules, alerting, storage and
the console when present), and fleets of simulated devices with injected faults. It prints
where to look, then runs until ``--for`` elapses or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from alerting.inbox import NotificationInbox, Received
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port, mosquitto_binary
from broker.registry import Device, DeviceRegistry, ServiceAccount, Site
from vigil.config import MqttSettings, VigilConfig
from vigil.runtime import Platform, build_platform, install_signal_handlers, run_platform

log = logging.getLogger("vigil.demo")

DEMO_SITES = [
    Site(id="cuiyuan-3", name="翠苑三区3幢", industry="elevator", unit="市场监管局", lat=30.2905, lon=120.1170),
    Site(id="xixi-tower", name="西溪华府1幢", industry="elevator", unit="市场监管局", lat=30.2770, lon=120.0850),
    Site(id="binjiang-7", name="滨江公寓7幢", industry="elevator", unit="市场监管局", lat=30.2080, lon=120.2120),
]


@dataclass
class DemoOptions:
    """What ``vigil demo`` was asked for."""

    duration: float | None = None
    state_dir: Path = Path("var/demo")
    elevators: int = 12
    console_port: int = 8080
    broker_port: int | None = None
    api_port: int = field(default_factory=free_port)
    console_password: str = ""
    quiet: bool = False
    out: Any = field(default=sys.stdout)


@dataclass
class NotificationSink:
    """Where the demo's notifications land: alerting's local ``json://`` inbox, logged and printed."""

    log_path: Path
    echo: bool = True
    out: Any = field(default=sys.stdout)
    inbox: NotificationInbox = field(default_factory=NotificationInbox)

    @property
    def received(self) -> list[Received]:
        return self.inbox.received

    async def start(self) -> None:
        self.inbox.on_received = self._record
        await self.inbox.start()

    async def stop(self) -> None:
        await self.inbox.stop()

    def _record(self, note: Received) -> None:
        channel = note.path.lstrip("/")
        entry = {"at": note.received_at, "channel": channel, "title": note.title, "message": note.body,
                 "type": note.type}
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if self.echo:
            first = note.body.strip().splitlines()
            print(f"  [通知 → {channel}] {note.title.strip()} | {first[0] if first else ''}", file=self.out, flush=True)

    def url(self, channel: str) -> str:
        return self.inbox.url(f"/{channel}")


def demo_registry(elevators: int, secrets_file: Path) -> tuple[DeviceRegistry, dict[str, str]]:
    """Sites, simulated elevators and service accounts, with passwords kept across demo runs."""
    stored: dict[str, str] = {}
    if secrets_file.exists():
        stored = json.loads(secrets_file.read_text(encoding="utf-8"))
    names = ["vigil-platform", "vigil-simulator", "control-room", "console-admin", "console-operator"]
    for name in names:
        stored.setdefault(name, secrets.token_urlsafe(12))
    secrets_file.write_text(json.dumps(stored, indent=2), encoding="utf-8")
    secrets_file.chmod(0o600)
    services = [
        ServiceAccount(name="vigil-platform", role="platform", password=stored["vigil-platform"]),
        ServiceAccount(name="vigil-simulator", role="gateway", password=stored["vigil-simulator"]),
        ServiceAccount(name="control-room", role="observer", password=stored["control-room"]),
    ]
    devices = []
    for i in range(elevators):
        site = DEMO_SITES[i % len(DEMO_SITES)]
        devices.append(Device(
            id=f"elev-{i + 1:05d}", kind="elevator", site=site.id,  # type: ignore[arg-type]
            name=f"{site.name} {i // len(DEMO_SITES) + 1}号梯",
            attributes={"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0},
        ))
    return DeviceRegistry.build(DEMO_SITES, devices, services, "<demo>"), stored


class DemoBroker:
    """Mosquitto from the registry, or amqtt when Mosquitto is not installed."""

    def __init__(self, data_dir: Path, registry: DeviceRegistry, port: int | None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.registry = registry
        self.mosquitto: MosquittoProcess | None = None
        self.embedded: Any = None
        self.secured = True

    async def start(self) -> None:
        if mosquitto_binary() is not None:
            self.mosquitto = MosquittoProcess(BrokerLayout(data_dir=self.data_dir, port=self.port), self.registry)
            await asyncio.to_thread(self.mosquitto.start)
            return
        log.warning("mosquitto is not installed: falling back to the embedded amqtt broker WITHOUT "
                    "per-device credentials or ACLs; deployments and tests use Mosquitto "
                    "(apt-get install mosquitto)")
        print("WARNING: Mosquitto not found; using the embedded amqtt broker (no ACLs, anonymous access)",
              file=sys.stderr)
        from amqtt.broker import Broker

        self.secured = False
        self.embedded = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await self.embedded.start()

    async def stop(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)
        if self.embedded is not None:
            await self.embedded.shutdown()


async def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the process exit code."""
    out = opts.out
    state = opts.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    registry, passwords = demo_registry(opts.elevators, state / "demo-secrets.json")
    stop = asyncio.Event()
    install_signal_handlers(stop)

    async with contextlib.AsyncExitStack() as stack:
        broker = DemoBroker(state / "mosquitto", registry, opts.broker_port)
        await broker.start()
        stack.push_async_callback(broker.stop)

        def url(user: str) -> str:
            if not broker.secured:
                return f"mqtt://127.0.0.1:{broker.port}?protocol=3.1.1"
            return f"mqtt://{user}:{passwords[user]}@127.0.0.1:{broker.port}"

        storage_cfg: dict[str, Any] = {"backend": "sqlite"}
        influx_note = "embedded SQLite store (install Debian's influxdb for InfluxDB)"
        if shutil.which("influxd"):
            from storage.localservers import InfluxdProcess

            influx = InfluxdProcess(state / "influxdb")
            await asyncio.to_thread(influx.start)
            stack.callback(influx.stop)
            storage_cfg = {"backend": "influxdb-v1", "influxdb_v1": {"url": influx.url, "database": "vigil"}}
            influx_note = (f"{influx.url} database vigil — e.g. curl -G {influx.url}/query --data-urlencode "
                           f"db=vigil --data-urlencode 'q=SELECT * FROM alerts ORDER BY time DESC LIMIT 5'")

        sink = NotificationSink(state / "notifications.log", echo=not opts.quiet, out=out)
        await sink.start()
        stack.push_async_callback(sink.stop)

        config = demo_config(state, url("vigil-platform"), storage_cfg, sink, opts, passwords)
        platform = build_platform(config, registry)
        platform_task = asyncio.create_task(run_platform(platform, stop), name="platform")

        sims = await start_simulators(url("vigil-simulator"), registry, stop, state)

        print(banner(url("control-room"), sink, influx_note, opts, platform), file=out, flush=True)
        started = time.monotonic()
        try:
            if opts.duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), opts.duration)
            else:
                await stop.wait()
        finally:
            stop.set()
            for task in sims:
                task.cancel()
            await asyncio.gather(*sims, return_exceptions=True)
            await platform_task
        print(summary(platform, sink, time.monotonic() - started), file=out, flush=True)
    return 0


def demo_config(state: Path, mqtt_url: str, storage_cfg: dict[str, Any], sink: NotificationSink,
                opts: DemoOptions, passwords: dict[str, str]) -> VigilConfig:
    """The platform configuration the demo runs with."""
    from vigil.runtime import STAGES

    services = ["rules", "alerting", "storage"]
    raw: dict[str, Any] = {
        "node": "demo",
        "state_dir": str(state / "state"),
        "services": services,
        "storage": storage_cfg,
        "alerting": demo_alerting(sink, passwords, opts.api_port),
    }
    if "console" in STAGES and _importable("console.service"):
        services.append("console")
        from console.config import DEMO_LAYERS

        raw["console"] = {"listen": f"127.0.0.1:{opts.console_port}", "map": {"layers_file": DEMO_LAYERS}}
        opts.console_password = passwords["console-admin"]
    cfg = msgspec.convert(raw, VigilConfig)
    return msgspec.structs.replace(cfg, mqtt=MqttSettings(url=mqtt_url, client_id="vigil-demo"))


def demo_alerting(sink: NotificationSink, passwords: dict[str, str], api_port: int) -> dict[str, Any]:
    """Duty roster and routes for the demo: every alert reaches the operator on duty's phone."""
    people = [("op-wang", "王芳", "operator"), ("lead-li", "李强", "shift_lead"),
              ("chief-zhao", "赵敏", "duty_chief"), ("head-chen", "陈刚", "unit_head")]
    return {
        "receivers": [{"name": "duty-room", "urls": [sink.url("duty-room")]}],
        "people": [{"id": pid, "name": name, "channels": [sink.url(pid)], "roles": [role]}
                   for pid, name, role in people],
        "route": {
            "name": "root", "receivers": ["duty-room"], "escalation": "standard",
            "group_by": ["rule", "site"], "group_wait_s": 0.0, "group_interval_s": 30.0,
            "repeat_interval_s": 4 * 3600.0, "send_resolved": True,
            "routes": [{"name": "critical", "matchers": ["severity=critical"], "escalation": "135",
                        "repeat_interval_s": 600.0}],
        },
        "api": {"host": "127.0.0.1", "port": api_port},
        "users": [{"name": "admin", "role": "admin", "token": passwords["console-admin"]},
                  {"name": "wang", "role": "operator", "token": passwords["console-operator"]}],
    }


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


async def start_simulators(url: str, registry: DeviceRegistry, stop: asyncio.Event,
                           state: Path) -> list[asyncio.Task[Any]]:
    """Start the simulated fleets; each runs until cancelled.

    Elevators publish over MQTT like monitoring boxes; emission data loggers and vehicle
    terminals speak HJ 212 and JT/T 808 over TCP to the gateways, as field devices do.
    """
    elevators = [d for d in registry.devices.values() if d.kind == "elevator"]
    tasks = [asyncio.create_task(elevator_cycles(url, len(elevators)), name="sim-elevators")]
    import simulators

    scenarios = Path(simulators.__file__).resolve().parent / "scenarios"
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    hj212_port, jt808_port = free_port(), free_port()
    programs = [
        ("hj212-gateway", ["edge", "hj212", "--listen", f"127.0.0.1:{hj212_port}", "--mqtt", url,
                           "--accept-unknown-devices"], hj212_port),
        ("jt808-gateway", ["edge", "jt808", "--listen", f"127.0.0.1:{jt808_port}", "--mqtt", url,
                           "--accept-unknown-devices"], jt808_port),
        ("hj212-loggers", ["sim", "hj212", "--scenario", str(scenarios / "hj212_demo.yaml"),
                           "--host", "127.0.0.1", "--port", str(hj212_port)], None),
        ("jt808-terminals", ["sim", "jt808", str(scenarios / "jt808_coach_night.yaml"),
                             "--gateway", f"127.0.0.1:{jt808_port}"], None),
    ]
    for name, argv, port in programs:
        tasks.append(asyncio.create_task(supervised_program(name, argv, logs / f"{name}.log", port),
                                         name=f"sim-{name}"))
        if port is not None:
            await asyncio.sleep(0)
    return tasks


async def supervised_program(name: str, argv: list[str], log_path: Path, port: int | None) -> None:
    """Run one ``vigil`` subcommand as a child process until cancelled, restarting it if it exits."""
    while True:
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vigil.cli", *argv,
                                                        stdout=log_file, stderr=log_file)
            try:
                rc = await proc.wait()
            except asyncio.CancelledError:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                raise
        log.warning("demo: %s exited with %s; restarting in 5 s (log: %s)", name, rc, log_path)
        await asyncio.sleep(5)


async def elevator_cycles(url: str, count: int, cycle_s: float = 120.0) -> None:
    """Simulated elevators in cycles of ``cycle_s``, each cycle with a fresh set of injected faults."""
    from simulators.elevator_fleet import run_fleet

    cycle = 0
    while True:
        await run_fleet(url, count, 1.0, cycle_s, fault_fraction=0.5, seed=cycle, detect=True,
                        id_prefix="elev-", connections=1)
        cycle += 1


def banner(observer_url: str, sink: NotificationSink, influx_note: str, opts: DemoOptions,
           platform: Platform) -> str:
    """What the demo prints once it runs: where to look."""
    lines = [
        "",
        "Vigil demo is running" + (f" for {opts.duration:.0f} s" if opts.duration else " (Ctrl-C to stop)"),
        f"  broker (control-room, read-only): {observer_url}",
        f"    follow alerts:   mosquitto_sub -L '{observer_url}/vigil/v1/alerts/#' -v",
        f"  notifications:     {sink.log_path} (also printed below)",
        f"  field devices:     {len(platform.registry.devices)} elevators over MQTT; 5 HJ 212 stacks and 8 JT/T 808 "
        f"coaches over TCP through the gateways (logs in {opts.state_dir}/logs)",
        f"  storage:           {influx_note}",
    ]
    lines.append(f"  alerting API:      http://127.0.0.1:{opts.api_port}/api/openapi.json  (bearer tokens in "
                 f"{opts.state_dir}/demo-secrets.json)")
    if "console" in platform.stages:
        lines.append(f"  console:           http://127.0.0.1:{opts.console_port}/  (login: admin / "
                     f"{opts.console_password})")
    lines.append("")
    return "\n".join(lines)


def summary(platform: Platform, sink: NotificationSink, elapsed: float) -> str:
    """A closing summary of what the demo did."""
    stats = platform.stats()
    return (f"\nVigil demo stopped after {elapsed:.0f} s: {stats['ingest']['accepted']} device messages accepted, "
            f"{sum(stats['ingest']['rejected'].values())} refused, {len(sink.received)} notifications delivered.\n"
            f"stage counters: {json.dumps({k: v for k, v in stats.items() if k not in ('mqtt', 'ingest')}, default=str)}")
