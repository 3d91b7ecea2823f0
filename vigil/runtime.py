"""Runs the platform stages a configuration names, in one process, over one MQTT session per lane.

Stages are looked up by name in ``STAGES`` (a registry of factories), each built with the
shared runtime objects (MQTT client, device ingest, registry, state folder) and run in one
TaskGroup with named tasks. A process that runs several stages decodes each device message
once (``DeviceIngest``). Device events and status come in on a second session (the alarm lane),
so they never wait behind telemetry. A deployment can instead run each stage in its own process
with its own ``node`` name, or split the fleet over N processes by device (``mqtt.partition``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from broker.ingest import DeviceIngest, RegisteredDevices
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from vigil.config import VigilConfig

log = logging.getLogger(__name__)


class Stage(Protocol):
    """What every platform stage offers the runtime."""

    def attach(self) -> None:
        """Register ingest consumers and MQTT subscriptions (before the client connects)."""

    async def run(self) -> None:
        """Run until cancelled."""

    def stats(self) -> dict[str, Any]:
        """Counters for logs and benchmarks."""


@dataclass(frozen=True)
class StageSpec:
    """Where a stage's service class and its config live."""

    module: str
    cls: str
    config_attr: str


STAGES: dict[str, StageSpec] = {
    "rules": StageSpec("rules.service", "RulesService", "rules"),
    "alerting": StageSpec("alerting.service", "AlertingService", "alerting"),
    "storage": StageSpec("storage.service", "StorageService", "storage"),
    "console": StageSpec("console.service", "ConsoleService", "console"),
}


class LoopMonitor:
    """Event-loop health for stats.json: how late the loop runs a timer, and garbage-collector pauses.

    A late timer means every message and alert in the process waited that long; the figures
    cover the last stats interval (lag percentiles) and the whole run (worst pauses).
    """

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.lags_ms: list[float] = []
        self.recent: deque[float] = deque(maxlen=max(10, int(10.0 / period_s)))
        """The last ~10 s of lags, for the health model (not reset by ``stats``)."""
        self.lag_max_ms = 0.0
        self.gc_pauses = Counter[int]()
        self.gc_max_ms = [0.0, 0.0, 0.0]
        self.gc_slow = 0
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_started) * 1000
        gen = int(info.get("generation", 0))
        self.gc_pauses[gen] += 1
        if ms > self.gc_max_ms[gen]:
            self.gc_max_ms[gen] = ms
        if ms >= 10.0:
            self.gc_slow += 1

    async def run(self) -> None:
        """Sample until cancelled."""
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                t = time.perf_counter()
                await asyncio.sleep(self.period_s)
                lag = (time.perf_counter() - t - self.period_s) * 1000
                self.lags_ms.append(lag)
                self.recent.append(lag)
                if lag > self.lag_max_ms:
                    self.lag_max_ms = lag
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._on_gc)

    def recent_lag_ms(self) -> float:
        """The 99th percentile of the last ~10 s of lags (0 before any sample)."""
        lags = sorted(self.recent)
        return lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0

    def stats(self, peek: bool = False) -> dict[str, float]:
        """Lag percentiles since the last call (``peek``: the last ~10 s, nothing reset), worst lag, GC figures."""
        if peek:
            lags = sorted(self.recent)
        else:
            lags, self.lags_ms = sorted(self.lags_ms), []
        out = {"lag_ms_max": round(self.lag_max_ms, 1), "gc_pauses_over_10ms": float(self.gc_slow)}
        if lags:
            out["lag_ms_p50"] = round(lags[len(lags) // 2], 2)
            out["lag_ms_p99"] = round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1)
        for gen in range(3):
            out[f"gc_gen{gen}_collections"] = float(self.gc_pauses[gen])
            out[f"gc_gen{gen}_max_ms"] = round(self.gc_max_ms[gen], 1)
        return out


@dataclass
class Platform:
    """The running stages of one process and the objects they share."""

    config: VigilConfig
    registry: DeviceRegistry
    mqtt: MqttClient
    ingest: DeviceIngest
    stages: dict[str, Stage]

    alarm_mqtt: MqttClient | None = None
    """The alarm lane's client (events and status), when enabled."""
    monitor: LoopMonitor = field(default_factory=LoopMonitor)
    counters: dict[str, int] = field(default_factory=lambda: {"stats_writes": 0, "stats_write_errors": 0})
    health: Any = None
    """The node's ``vigil.health.HealthMonitor`` once running (None when health is disabled)."""

    def clients(self) -> list[MqttClient]:
        """Every MQTT client of the node (the telemetry session first)."""
        return [self.mqtt] + ([self.alarm_mqtt] if self.alarm_mqtt is not None else [])

    def stats(self, peek: bool = False) -> dict[str, Any]:
        """Counters of the client, the ingest and every stage, and the event loop's health.

        ``peek`` (the HTTP endpoints) leaves the loop monitor's per-interval figures to stats.json.
        """
        mqtt_stats: dict[str, Any] = dict(self.mqtt.counters)
        mqtt_stats["connected"] = self.mqtt.connected
        stalled = self.mqtt.stalled_since
        mqtt_stats["stalled_s"] = time.monotonic() - stalled if stalled is not None else 0.0
        out: dict[str, Any] = {
            "loop": self.monitor.stats(peek=peek),
            "platform": dict(self.counters),
            "mqtt": mqtt_stats,
            "ingest": {"accepted": self.ingest.accepted, "other_partition": self.ingest.other_partition,
                       "rejected": {k.value: v for k, v in self.ingest.rejected.items()}},
        }
        if self.alarm_mqtt is not None:
            alarm: dict[str, Any] = dict(self.alarm_mqtt.counters)
            alarm["connected"] = self.alarm_mqtt.connected
            stalled = self.alarm_mqtt.stalled_since
            alarm["stalled_s"] = time.monotonic() - stalled if stalled is not None else 0.0
            out["mqtt_alarm"] = alarm
        for name, stage in self.stages.items():
            out[name] = stage.stats()
        if self.health is not None:
            out["health"] = dict(self.health.counters)
        return out


def build_platform(config: VigilConfig, registry: DeviceRegistry, *, extra: dict[str, Any] | None = None) -> Platform:
    """Create the shared objects and the configured stages (not yet connected)."""
    state = Path(config.state_dir) / config.node
    state.mkdir(parents=True, exist_ok=True)
    client_id = config.mqtt.client_id or f"vigil-{config.node}"
    mqtt = MqttClient(config.mqtt.url, client_id, ca_file=config.mqtt.ca_file, max_pending=config.mqtt.max_pending)
    # Events and status get their own session and read loop: an alarm must not wait behind a
    # telemetry backlog (measured: p99 3.4 s behind 5,000 msg/s of telemetry, docs/benchmarks.md).
    alarm = (MqttClient(config.mqtt.url, f"{client_id}-alarm", ca_file=config.mqtt.ca_file,
                        max_pending=config.mqtt.max_pending) if config.mqtt.alarm_lane else None)
    # With a registry file, only its devices are heard (a stolen gateway account cannot invent
    # devices; re-read when the file changes); without one (demo, commissioning) every well-formed
    # device id is accepted.
    known = (RegisteredDevices(config.registry, registry.devices,
                               kinds={d.id: d.kind.value for d in registry.devices.values()})
             if config.registry else None)
    ingest = DeviceIngest(mqtt, stage=config.node, known_device=known, alarm_mqtt=alarm,
                          partition=parse_partition(config.mqtt.partition))
    stages: dict[str, Stage] = {}
    for name in sorted(config.services, key=lambda n: n == "console"):  # console needs its peers
        spec = STAGES[name]
        cls = getattr(importlib.import_module(spec.module), spec.cls)
        # Alerting listens on the alarm lane too: transitions from rules in other processes (partitions)
        # must not queue behind this process's telemetry either.
        client = alarm if name == "alerting" and alarm is not None else mqtt
        kwargs: dict[str, Any] = {"mqtt": client, "ingest": ingest, "registry": registry, "state_dir": state / name}
        if name == "console":
            # The console works on the alerting stage of its own process (see docs/console.md).
            kwargs["peers"] = dict(stages)
        if extra and name in extra:
            kwargs.update(extra[name])
        (state / name).mkdir(parents=True, exist_ok=True)
        stages[name] = cls(getattr(config, spec.config_attr), **kwargs)
    for stage in stages.values():
        stage.attach()
    rules, alerting = stages.get("rules"), stages.get("alerting")
    if rules is not None and alerting is not None:
        # Same process: transitions go straight to alerting (their MQTT echo is skipped there).
        rules.add_local_consumer(alerting.on_local_transitions)  # type: ignore[attr-defined]
    return Platform(config, registry, mqtt, ingest, stages, alarm_mqtt=alarm)


def parse_partition(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n); None for no partitioning.

    Raises:
        ValueError: not ``i/n`` with 0 <= i < n.
    """
    if not text:
        return None
    index, _, count = text.partition("/")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise ValueError(f"mqtt.partition {text!r}: need i/n with 0 <= i < n")
    return i, n


def freeze_startup_heap() -> None:
    """Exempt everything built at start-up from the cyclic garbage collector (for server processes).

    Imported modules, rule models, configuration and restored state make tens of thousands of
    container objects that live as long as the process; a full collection walked all of them
    every time (measured: 36 ms for the platform's imports alone, 24 - 97 ms pauses under load),
    holding up whatever alert was being handled. After ``gc.freeze()`` full collections only
    walk what was allocated since. Call once, after the platform is built, in the process's
    entry point (not in a test process).
    """
    gc.collect()
    gc.freeze()


GIL_SWITCH_INTERVAL_S = 0.001
"""How long a thread may hold the GIL while another waits for it (Python's default is 5 ms)."""


def shorten_gil_switch_interval(seconds: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Let a woken thread (an Apprise send, a sync) get the GIL within ``seconds`` instead of 5 ms (for server processes).

    The event loop thread runs telemetry almost without pause at load; every time a notification's
    sender thread wakes (started, connected, answered) it waited up to the whole interval for the
    loop to let go, several times per notification (docs/benchmarks.md, "Issue 15 (session 3):
    latency"). Only threads that wait are affected: with none waiting the loop is never interrupted.
    """
    sys.setswitchinterval(seconds)


async def watch_registry(fleet: RegisteredDevices, interval: float = 2.0) -> None:
    """Re-read the registry file when it changes, even while no message arrives (a partition subscribes
    per device, so a new device's messages reach it only after this re-subscribes)."""
    while True:
        await asyncio.sleep(interval)
        try:
            fleet.check()
        except Exception:  # an unreadable file must not stop the node; the devices already known stay heard
            log.exception("registry %s: re-reading failed", fleet.path)


STATS_INTERVAL_S = 10.0


async def write_stats_periodically(platform: Platform, path: Path, interval: float = STATS_INTERVAL_S) -> None:
    """Keep ``stats.json`` in the node's state folder current, for operators and benchmarks."""
    tmp = path.with_suffix(".tmp")
    while True:
        await asyncio.sleep(interval)
        try:
            tmp.write_text(json.dumps({"ts": time.time(), **platform.stats()}, default=str, indent=1))
            tmp.replace(path)
            platform.counters["stats_writes"] += 1
        except OSError as exc:
            # A full disk must not stop the node; the figures stay readable on /metrics and /health.
            platform.counters["stats_write_errors"] += 1
            with contextlib.suppress(OSError):
                tmp.unlink()
            if platform.counters["stats_write_errors"] % 30 == 1:
                log.warning("cannot write %s (%d failures so far; /metrics and /health still serve the figures): "
                            "%s", path, platform.counters["stats_write_errors"], exc)


async def run_platform(platform: Platform, stop: asyncio.Event,
                       on_started: Callable[[Platform], None] | None = None) -> None:
    """Connect, run every stage until ``stop`` is set, then shut down in order."""
    if platform.alarm_mqtt is not None:
        # The alarm lane first: once the telemetry session is up (what callers wait for), both are.
        await platform.alarm_mqtt.start()
    try:
        await platform.mqtt.start()
    except BaseException:
        if platform.alarm_mqtt is not None:
            await platform.alarm_mqtt.stop()
        raise
    stats_path = Path(platform.config.state_dir) / platform.config.node / "stats.json"
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(stage.run(), name=f"stage-{name}") for name, stage in platform.stages.items()]
            tasks.append(tg.create_task(write_stats_periodically(platform, stats_path), name="stats"))
            tasks.append(tg.create_task(platform.monitor.run(), name="loop-monitor"))
            if platform.ingest.fleet is not None:
                tasks.append(tg.create_task(watch_registry(platform.ingest.fleet), name="registry-watch"))
            if platform.config.health.enabled:
                from vigil.health import HealthMonitor

                platform.health = HealthMonitor(platform, platform.config.health)
                tasks.append(tg.create_task(platform.health.run(), name="health"))
            if on_started is not None:
                on_started(platform)
            waiter: asyncio.Task[Any] = tg.create_task(stop.wait(), name="stop-waiter")
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled():
                    error = task.exception()
                    if error is not None:
                        raise error
            for other in [waiter, *tasks]:
                other.cancel()
    finally:
        if platform.alarm_mqtt is not None:
            await platform.alarm_mqtt.stop()
        await platform.mqtt.stop()


def install_signal_handlers(stop: asyncio.Event, on_reload: Callable[[], None] | None = None) -> None:
    """Ctrl-C / SIGTERM end the run cleanly; SIGHUP asks stages to reload."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if on_reload is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_reload)
