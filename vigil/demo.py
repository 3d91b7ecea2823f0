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
import os
import secrets
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from alerting.access import token_problem
from alerting.inbox import NotificationInbox, Received
from broker.contracts import Kind
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
    names = ["vigil-platform", "vigil-gw-hj212", "vigil-gw-jt808", "vigil-gw-modbus",
             "control-room", "console-admin", "console-operator"]
    # Each simulated elevator's agent logs in as its own device account, as a box in the field does.
    names += [f"elev-{i + 1:05d}" for i in range(elevators)]
    for name in names:
        stored.setdefault(name, secrets.token_urlsafe(12))
    for name in ("console-admin", "console-operator"):
        # Console logins are API bearer tokens, which must be long and random (alerting.access.token_problem).
        if token_problem(stored[name]) is not None:
            stored[name] = secrets.token_urlsafe(32)
    secrets_file.write_text(json.dumps(stored, indent=2), encoding="utf-8")
    secrets_file.chmod(0o600)
    services = [
        ServiceAccount(name="vigil-platform", role="platform", password=stored["vigil-platform"]),
        # One account per connecting program: the broker binds client id to account (docs/security.md).
        ServiceAccount(name="vigil-gw-hj212", role="gateway", kinds=[Kind.EMISSION], password=stored["vigil-gw-hj212"]),
        ServiceAccount(name="vigil-gw-jt808", role="gateway", kinds=[Kind.VEHICLE], password=stored["vigil-gw-jt808"]),
        ServiceAccount(name="vigil-gw-modbus", role="gateway", kinds=[Kind.SENSOR], password=stored["vigil-gw-modbus"]),
        ServiceAccount(name="control-room", role="observer", password=stored["control-room"]),
    ]
    devices = []
    for i in range(elevators):
        site = DEMO_SITES[i % len(DEMO_SITES)]
        devices.append(Device(
            id=f"elev-{i + 1:05d}", kind=Kind.ELEVATOR, site=site.id, password=stored[f"elev-{i + 1:05d}"],
            name=f"{site.name} {i // len(DEMO_SITES) + 1}号梯",
            attributes={"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0},
        ))
    park_site, park_devices = demo_park_devices()
    devices += park_devices
    return DeviceRegistry.build([*DEMO_SITES, park_site], devices, services, "<demo>"), stored


def demo_park_devices() -> tuple[Site, list[Device]]:
    """The simulated chemical park's site and devices (kind sensor), read by the Modbus gateway."""
    from simulators.chemical_park import ChemicalPark, load_scenario

    park = ChemicalPark(load_scenario("demo"))
    sc = park.scenario
    site = Site(id=sc.site, name=sc.site_name, industry="safety", unit="应急管理局", lat=sc.lat, lon=sc.lon)
    devices = [msgspec.convert(d, Device) for d in park.registry_devices()]
    # The demo's bypass is approved for 6 minutes, so its overdue alert shows within one park cycle.
    devices = [msgspec.structs.replace(d, attributes={**d.attributes, "bypass_max_h": 0.1}) if d.id == "sis-01"
               else d for d in devices]
    return site, devices


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
            if broker.mosquitto is None:
                return f"mqtt://127.0.0.1:{broker.port}?protocol=3.1.1"
            return broker.mosquitto.account_url(user, passwords[user])

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

        sims = await start_simulators(url, registry, stop, state)

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


def without_password(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that gives the password to a child process.

    A child's command line is readable by every local user (``ps``); its environment is not.
    """
    from broker.credentials import MQTT_PASSWORD_ENV

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, {}
    user, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{user.split(':', 1)[0]}@{hostport}"
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, {MQTT_PASSWORD_ENV: urllib.parse.unquote(parts.password)}


async def start_simulators(url: Callable[[str], str], registry: DeviceRegistry, stop: asyncio.Event,
                           state: Path) -> list[asyncio.Task[Any]]:
    """Start the simulated fleets; each runs until cancelled.

    Elevators are simulated boxes read by real elevator agents in this process; emission data
    loggers and vehicle terminals speak HJ 212 and JT/T 808 over TCP to the gateways, as field
    devices do.
    ``url(account)`` is the broker URL of a registry account; the gateways get theirs without
    the password, which they read from their environment.
    """
    elevators = [d for d in registry.devices.values() if d.kind == "elevator"]
    tasks = [asyncio.create_task(elevator_agents(url, elevators, state / "edge-elevators"), name="sim-elevators")]
    hj212_url, hj212_env = without_password(url("vigil-gw-hj212"))
    jt808_url, jt808_env = without_password(url("vigil-gw-jt808"))
    modbus_url, modbus_env = without_password(url("vigil-gw-modbus"))
    envs = {"hj212-gateway": hj212_env, "jt808-gateway": jt808_env, "modbus-gateway": modbus_env}
    import simulators

    scenarios = Path(simulators.__file__).resolve().parent / "scenarios"
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    hj212_port, jt808_port = free_port(), free_port()
    programs = [
        ("hj212-gateway", ["edge", "hj212", "--listen", f"127.0.0.1:{hj212_port}", "--mqtt", hj212_url,
                           "--accept-unknown-devices"], hj212_port),
        ("jt808-gateway", ["edge", "jt808", "--listen", f"127.0.0.1:{jt808_port}", "--mqtt", jt808_url,
                           "--accept-unknown-devices"], jt808_port),
        ("hj212-loggers", ["sim", "hj212", "--scenario", str(scenarios / "hj212_demo.yaml"),
                           "--host", "127.0.0.1", "--port", str(hj212_port)], None),
        # The terminals keep their auth codes in a file, as real ones keep them in flash: the
        # gateway refuses a second registration, so a restarted simulator must not need one.
        ("jt808-terminals", ["sim", "jt808", str(scenarios / "jt808_coach_night.yaml"),
                             "--gateway", f"127.0.0.1:{jt808_port}",
                             "--auth-codes", str(state / "jt808-auth-codes.json")], None),
    ]
    programs += park_programs(state, modbus_url)
    for name, argv, port in programs:
        tasks.append(asyncio.create_task(supervised_program(name, argv, logs / f"{name}.log", port, envs.get(name)),
                                         name=f"sim-{name}"))
        if port is not None:
            await asyncio.sleep(0)
    return tasks


def park_programs(state: Path, modbus_url: str) -> list[tuple[str, list[str], int | None]]:
    """The chemical park behind its Modbus TCP servers, and the Modbus gateway polling it."""
    import yaml

    from simulators.chemical_park import CONTROLLERS, ChemicalPark, load_scenario

    ports = {c: free_port() for c in CONTROLLERS}
    tagmap = state / "park-tags.yaml"
    data = ChemicalPark(load_scenario("demo")).tag_map("127.0.0.1", ports, gateway="vigil-gw-modbus")
    tagmap.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return [
        ("chemical-park", ["sim", "chemical-park", "--scenario", "demo", "--loop",
                           "--ports", ",".join(str(ports[c]) for c in CONTROLLERS)], None),
        ("modbus-gateway", ["edge", "modbus", "--tags", str(tagmap), "--mqtt", modbus_url,
                            "--data-dir", str(state / "edge-modbus")], None),
    ]


async def supervised_program(name: str, argv: list[str], log_path: Path, port: int | None,
                             env: dict[str, str] | None = None) -> None:
    """Run one ``vigil`` subcommand as a child process until cancelled, restarting it if it exits."""
    while True:
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vigil.cli", *argv,
                                                        stdout=log_file, stderr=log_file,
                                                        env={**os.environ, **(env or {})})
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


async def elevator_agents(url: Callable[[str], str], elevators: list[Device], data_dir: Path,
                          cycle_s: float = 120.0) -> None:
    """The demo's elevators, until cancelled: simulated boxes read by the real edge agents.

    Each elevator gets what a box in the field gets: an ``ElevatorAgent`` with its
    ``ElevatorMonitor`` and a store-and-forward ``EdgeLink`` (outbox in ``data_dir/{id}``,
    logged in as the device's own account), all on this event loop. The simulator only moves
    cars; every ``cycle_s`` it arms a fresh set of faults in half of them.
    """
    from edge.elevator.agent import ElevatorAgent
    from edge.elevator.cli import open_agent, run_agents
    from edge.runtime import EdgeLinkError
    from simulators.elevator import ElevatorSpec
    from simulators.elevator_fleet import SimulatedBoxFleet

    if not elevators:
        return
    attrs = elevators[0].attributes
    spec = ElevatorSpec(floors=int(attrs.get("floors", 12)), floor_height_m=float(attrs.get("floor_height_m", 3.0)),
                        rated_speed_mps=float(attrs.get("rated_speed_mps", 1.75)))
    fleet = SimulatedBoxFleet([d.id for d in elevators], spec=spec, seed=0, fault_fraction=0.5, cycle_s=cycle_s)
    agents: list[ElevatorAgent] = []
    try:
        for d in elevators:
            # One reading a second, each published (an interval under the period, or timer jitter would
            # skip every other one): the demo's telemetry cadence, and cheap beside the platform.
            agents.append(open_agent(d.id, fleet.boxes[d.id], fleet.boxes[d.id].geometry, url(d.id),
                                     data_dir / d.id, site=d.site, sample_hz=1.0, telemetry_interval_s=0.5))
    except (EdgeLinkError, ValueError) as exc:  # e.g. another demo runs on the same state folder
        log.error("demo: cannot start the elevator agents: %s", exc)
        await asyncio.gather(*(a.link.stop(0) for a in agents), return_exceptions=True)
        return
    async with asyncio.TaskGroup() as tg:
        tg.create_task(run_agents(agents), name="elevator-agents")
        tg.create_task(fleet.run_cycles(), name="elevator-fault-cycles")


def banner(observer_url: str, sink: NotificationSink, influx_note: str, opts: DemoOptions,
           platform: Platform) -> str:
    """What the demo prints once it runs: where to look."""
    lines = [
        "",
        "Vigil demo is running" + (f" for {opts.duration:.0f} s" if opts.duration else " (Ctrl-C to stop)"),
        f"  broker (control-room, read-only): {observer_url}",
        f"    follow alerts:   mosquitto_sub -L '{observer_url}/vigil/v1/alerts/#' -v",
        f"  notifications:     {sink.log_path} (also printed below)",
        f"  field devices:     {sum(1 for d in platform.registry.devices.values() if d.kind == 'elevator')} elevators "
        f"through edge agents (outboxes in {opts.state_dir}/edge-elevators); 5 HJ 212 stacks and 8 JT/T 808 "
        f"coaches over TCP through the gateways; a chemical park "
        f"(gas detectors, tanks, SIS, explosives store) over Modbus TCP (logs in {opts.state_dir}/logs)",
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
