"""The platform watches itself: a health model, its own alerts, /metrics, /health and a heartbeat.

Every ``interval_s`` the ``HealthMonitor`` evaluates a fixed set of checks against the running
node (broker connection, ingest stalled on a write that could not be made durable, free disk
space, storage outbox depth, InfluxDB reachability, notification dead letters, event-loop lag).
A check that goes bad or good again becomes a ``Transition`` of kind ``vigil`` (device id = the
node name, rule ``vigil_<check>``), handed to the alerting stage of the same process directly and
published on ``vigil/v1/transitions/vigil/<node>`` for alerting stages elsewhere: Vigil's own
alerts take the normal road (lifecycle, routing, escalation, notification). Direct transitions,
not rules, because the rules engine and the ingest may be the very thing that is stuck.

What a dead process cannot report, the heartbeat covers: ``Heartbeat`` pings an HTTP endpoint
every ``interval_s`` (``<url>/fail`` while a critical check fails); the receiver, e.g.
``vigil watchdog`` on another machine or any dead-man's-switch service, notices the silence.

All figures are kept in memory and served on ``/metrics`` (Prometheus text format) and
``/health`` (JSON), so they stay readable when the disk is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from broker.contracts import Kind, Severity, Transition, encode, transition_topic
from broker.mqtt import MqttClient
from vigil.config import VigilConfig
from vigil.health_config import HealthConfig as HealthConfig  # re-exported: the monitor's settings
from vigil.health_config import HeartbeatConfig

log = logging.getLogger(__name__)


class _LoopLag(Protocol):
    def recent_lag_ms(self) -> float:
        """How late the event loop ran its timer lately."""
        ...


class Platform(Protocol):
    """What the monitor reads of the running node (``vigil.runtime.Platform``), typed here so that the
    monitor does not import the runtime that starts it."""

    @property
    def config(self) -> VigilConfig: ...

    @property
    def mqtt(self) -> MqttClient: ...

    @property
    def stages(self) -> Mapping[str, Any]: ...

    @property
    def monitor(self) -> _LoopLag: ...

    def stats(self, peek: bool = False) -> dict[str, Any]:
        """The node's figures (``peek``: without resetting interval counters)."""
        ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict now."""

    name: str
    ok: bool
    severity: Severity
    summary: str
    summary_en: str
    value: float = 0.0


@dataclass(slots=True)
class CheckState:
    """What the monitor last said about a check."""

    result: CheckResult | None = None
    firing: bool = False
    since: float = 0.0


@dataclass
class HealthMonitor:
    """Evaluates the checks, raises and resolves the platform's own alerts, serves the figures."""

    platform: Platform
    config: HealthConfig
    clock: Callable[[], float] = time.time
    states: dict[str, CheckState] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"evaluations": 0, "transitions": 0})
    port: int | None = None
    _dead_seen: float = 0.0
    _dead_at: float = 0.0
    _dropped_seen: float = 0.0
    _dropped_at: float = 0.0
    _first: bool = True
    _wall_offset: float | None = None
    _step_s: float = 0.0
    _step_at: float = 0.0

    @property
    def node(self) -> str:
        """The node name (the ``device_id`` of its alerts)."""
        return self.platform.config.node

    @property
    def state_dir(self) -> Path:
        """The node's state folder (whose disk is watched)."""
        return Path(self.platform.config.state_dir) / self.platform.config.node

    # ------------------------------------------------------------------ checks

    def evaluate(self) -> list[CheckResult]:
        """Every check's verdict now."""
        cfg = self.config
        p = self.platform
        now_mono = time.monotonic()
        out: list[CheckResult] = []
        mqtt = p.mqtt
        clients = p.clients() if hasattr(p, "clients") else [mqtt]  # the alarm lane counts too
        down = now_mono - self._since("broker_down", not all(c.connected for c in clients), now_mono)
        out.append(CheckResult("broker", down < cfg.broker_down_s, Severity.CRITICAL,
                               f"平台与消息总线断开 {down:.0f} 秒", f"platform disconnected from the broker for {down:.0f} s",
                               down))
        stalled_clients = [c for c in clients if c.stalled_since is not None]
        stalled = min((c.stalled_since for c in stalled_clients), default=None)  # type: ignore[type-var]
        stall_s = now_mono - stalled if stalled is not None else 0.0
        why = (stalled_clients[0] if stalled_clients else mqtt).last_not_durable or ""
        out.append(CheckResult("ingest", stall_s < cfg.ingest_stalled_s, Severity.CRITICAL,
                               f"数据无法落盘，已暂停接收 {stall_s:.0f} 秒（消息由总线保留）: {why}"[:300],
                               f"cannot store incoming data, reading paused for {stall_s:.0f} s "
                               f"(the broker keeps the messages): {why}"[:300], stall_s))
        free = self._free_bytes()
        journal = self._stage_stat("rules", "journal_unwritten")
        disk_ok = free >= cfg.disk_min_free_bytes and journal == 0
        out.append(CheckResult("disk", disk_ok, Severity.CRITICAL,
                               f"数据目录磁盘将满：剩余 {free / 1e6:.1f} MB", f"data folder almost full: "
                               f"{free / 1e6:.1f} MB free", float(free)))
        storage = p.stages.get("storage")
        if storage is not None:
            st = storage.stats()
            ratio = st.get("outbox_pending_bytes", 0.0) / max(1.0, st.get("outbox_max_bytes", 1.0))
            dropped = st.get("outbox_dropped", 0.0)
            if dropped > self._dropped_seen:
                self._dropped_seen, self._dropped_at = dropped, now_mono
            recent_drop = self._dropped_at > 0 and now_mono - self._dropped_at < cfg.dead_letter_quiet_s
            out.append(CheckResult("outbox", ratio < cfg.outbox_high_ratio and not recent_drop, Severity.MAJOR,
                                   f"存储积压 {ratio:.0%}，已丢弃 {dropped:.0f} 行", f"storage outbox {ratio:.0%} full, "
                                   f"{dropped:.0f} lines dropped", ratio))
            unavailable = st.get("backend_unavailable_s", 0.0)
            out.append(CheckResult("influxdb", unavailable < cfg.backend_down_s, Severity.MAJOR,
                                   f"时序数据库不可达 {unavailable:.0f} 秒（数据暂存本地）",
                                   f"time-series database unreachable for {unavailable:.0f} s (kept in the outbox)",
                                   unavailable))
        alerting = p.stages.get("alerting")
        if alerting is not None:
            counters = getattr(alerting, "counters", None)
            # The counters directly: alerting's stats() also sorts its latency window, not needed here.
            dead = float(counters.get("notifications_dead", 0)) if counters is not None else \
                alerting.stats().get("notifications_dead", 0.0)
            if dead > self._dead_seen:
                self._dead_seen, self._dead_at = dead, now_mono
            recent = self._dead_at > 0 and now_mono - self._dead_at < cfg.dead_letter_quiet_s
            out.append(CheckResult("notifications", not recent, Severity.MAJOR,
                                   f"通知发送失败（死信 {dead:.0f} 条）", f"notifications dead-lettered ({dead:.0f})",
                                   dead))
        # The platform's own wall clock: a step moves wall time against the monotonic clock. Rules and alerting
        # shift their interval anchors by the step themselves (broker.clocksteps), but instants people set
        # (silences, maintenance, rosters) and the time stamped on records now differ from the world's time
        # by the step (docs/architecture.md). time.time(), not self.clock: tests inject clocks that jump on purpose.
        wall_offset = time.time() - now_mono
        if self._wall_offset is not None and abs(wall_offset - self._wall_offset) > cfg.clock_step_s:
            self._step_s, self._step_at = wall_offset - self._wall_offset, now_mono
        self._wall_offset = wall_offset
        stepped = self._step_at > 0 and now_mono - self._step_at < cfg.clock_step_quiet_s
        engine = getattr(p.stages.get("rules"), "engine", None)
        if stepped:
            out.append(CheckResult("clock", False, Severity.WARNING,
                                   f"平台时钟跳变 {self._step_s:+.0f} 秒（NTP 校时或人工改时）: 缺失判断与告警时限已随跳变平移，"
                                   f"静默、维护窗口与值班表按墙钟时刻生效，请核对平台时钟",
                                   f"platform clock stepped {self._step_s:+.0f} s (NTP or manual change): absence and "
                                   f"alert deadlines were shifted by the step; silences, maintenance and rosters follow "
                                   f"the wall clock, check the platform's time",
                                   self._step_s))
        elif engine is not None:
            # A device whose clock ran ahead makes its later, correct messages look late to the rules
            # (they are skipped): someone must fix the device's clock. Redeliveries after a restart are
            # late too, so the check looks at the clock itself, not at the late counter.
            ahead = sorted(d.device_id for d in list(engine.devices.values())
                           if d.last_rx and d.last_ts - d.last_rx > cfg.clock_ahead_s)
            out.append(CheckResult("clock", not ahead, Severity.WARNING,
                                   f"设备时钟超前 {cfg.clock_ahead_s:.0f} 秒以上: {', '.join(ahead[:5])}"
                                   f"{' 等' if len(ahead) > 5 else ''}（其后数据规则不评估）",
                                   f"device clocks ahead by more than {cfg.clock_ahead_s:.0f} s: {', '.join(ahead[:5])}"
                                   f"{' ...' if len(ahead) > 5 else ''} (rules skip their later data)",
                                   float(len(ahead))))
        elif self._step_at > 0:  # a node without rules: the step's alert must still resolve
            out.append(CheckResult("clock", True, Severity.WARNING, "平台时钟已稳定", "platform clock steady", 0.0))
        lag = p.monitor.recent_lag_ms()
        out.append(CheckResult("loop", lag < cfg.loop_lag_ms, Severity.WARNING,
                               f"平台处理延迟 {lag:.0f} ms", f"platform event loop {lag:.0f} ms late", lag))
        return out

    _down_since: dict[str, float] = field(default_factory=dict)

    def _since(self, key: str, active: bool, now: float) -> float:
        if not active:
            self._down_since.pop(key, None)
            return now
        return self._down_since.setdefault(key, now)

    def _free_bytes(self) -> float:
        try:
            return float(shutil.disk_usage(self.state_dir).free)
        except OSError:
            return math.inf

    def _stage_stat(self, stage: str, key: str) -> float:
        s = self.platform.stages.get(stage)
        return float(s.stats().get(key, 0.0)) if s is not None else 0.0

    def step(self) -> list[Transition]:
        """Evaluate once and raise / resolve the platform's own alerts; returns the transitions sent."""
        self.counters["evaluations"] += 1
        now = self.clock()
        out: list[Transition] = []
        for res in self.evaluate():
            st = self.states.setdefault(res.name, CheckState())
            st.result = res
            if not res.ok and not st.firing:
                st.firing, st.since = True, now
                out.append(self._transition(res, "firing", now, st.since))
            elif res.ok and (st.firing or (self._first and self._open_elsewhere(res.name))):
                st.firing = False
                out.append(self._transition(res, "resolved", now, st.since or now))
        self._first = False
        if out and not self._send(out):
            # The local alerting stage could not take them (its database on a full disk?): try again
            # at the next evaluation rather than believe the alert was raised.
            for t in out:
                self.states[t.labels["check"]].firing = t.status != "firing"
        return out

    def _fingerprint(self, check: str) -> str:
        return f"vigil/{self.node}/{check}"

    def _open_elsewhere(self, check: str) -> bool:
        """An alert of this check still open from before a restart (the local alerting stage knows)."""
        alerting = self.platform.stages.get("alerting")
        by_fp = getattr(alerting, "by_fingerprint", None)
        return isinstance(by_fp, dict) and self._fingerprint(check) in by_fp

    def _transition(self, res: CheckResult, status: str, now: float, since: float) -> Transition:
        value = res.value if math.isfinite(res.value) else -1.0
        return Transition(
            ts=datetime.fromtimestamp(now, UTC), fingerprint=self._fingerprint(res.name), rule=f"vigil_{res.name}",
            status=status,  # type: ignore[arg-type]
            severity=res.severity, kind=Kind.VIGIL, device_id=self.node,
            labels={"check": res.name, "node": self.node}, summary=res.summary, summary_en=res.summary_en,
            description="Vigil 平台自检 / platform self-check", values={res.name: round(value, 3)},
            started_at=datetime.fromtimestamp(since, UTC),
        )

    def _send(self, transitions: list[Transition]) -> bool:
        items = [(t, encode(t)) for t in transitions]
        self.counters["transitions"] += len(items)
        for t, payload in items:
            log.log(logging.ERROR if t.status == "firing" else logging.INFO, "health: %s %s: %s", t.rule,
                    t.status, t.summary_en)
            with contextlib.suppress(Exception):
                self.platform.mqtt.publish_nowait(transition_topic(t.kind, t.device_id), payload, qos=1)
        alerting = self.platform.stages.get("alerting")
        local = getattr(alerting, "on_local_transitions", None)
        if local is not None:
            try:
                local(items)
            except Exception as exc:  # e.g. its database is on the full disk; the heartbeat still reports
                self.counters["local_errors"] = self.counters.get("local_errors", 0) + 1
                log.warning("health: the local alerting stage refused the platform's alert: %s", exc)
                return False
        return True

    def failing(self) -> list[CheckResult]:
        """Checks failing now (as of the last evaluation)."""
        return [s.result for s in self.states.values() if s.result is not None and not s.result.ok]

    def report(self) -> dict[str, Any]:
        """``/health``: status, every check, and every stage's counters (all from memory)."""
        failing = self.failing()
        status = "ok" if not failing else (
            "failing" if any(f.severity == Severity.CRITICAL for f in failing) else "degraded")
        checks = {name: {"ok": s.result.ok, "severity": s.result.severity.value, "summary": s.result.summary_en,
                         "value": s.result.value if math.isfinite(s.result.value) else None,
                         "firing_since": s.since if s.firing else None}
                  for name, s in self.states.items() if s.result is not None}
        return {"node": self.node, "ts": self.clock(), "status": status, "checks": checks,
                "stats": self.platform.stats(peek=True)}

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Evaluate every ``interval_s``, serve HTTP and send heartbeats until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._serve(), name="health-http")
            if self.config.heartbeat is not None:
                tg.create_task(Heartbeat(self.config.heartbeat, self).run(), name="health-heartbeat")
            while True:
                await asyncio.sleep(self.config.interval_s)
                try:
                    self.step()
                except Exception:
                    log.exception("health: evaluation failed")

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/health", self._health_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            # The checks, own alerts and heartbeat matter more than the endpoint: keep running without it.
            log.error("health: cannot listen on %s:%d (%s); /metrics and /health are off", self.config.host,
                      self.config.port, exc)
            await runner.cleanup()
            return
        addrs = runner.addresses
        self.port = int(addrs[0][1]) if addrs else self.config.port
        with contextlib.suppress(OSError):  # tells `vigil status` where to look; optional
            (self.state_dir / "health.port").write_text(f"{self.config.host} {self.port}\n")
        log.info("health: /metrics and /health on http://%s:%d", self.config.host, self.port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    async def _metrics_handler(self, _request: Any) -> Any:
        from aiohttp import web

        return web.Response(text=prometheus_text(self), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type": "text/plain; version=0.0.4"})

    async def _health_handler(self, _request: Any) -> Any:
        from aiohttp import web

        report = self.report()
        return web.json_response(report, status=200 if report["status"] != "failing" else 503,
                                 dumps=lambda o: msgspec.json.encode(o).decode())


_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(*parts: str) -> str:
    name = "_".join(_NAME_RE.sub("_", p) for p in parts if p)
    return re.sub(r"_+", "_", name).strip("_")


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        out[prefix] = 1.0 if value else 0.0
    elif isinstance(value, int | float):
        if math.isfinite(float(value)):
            out[prefix] = float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(_metric_name(prefix, str(k)), v, out)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(monitor: HealthMonitor) -> str:
    """Every counter of the node in the Prometheus text exposition format (version 0.0.4)."""
    node = _label(monitor.node)
    flat: dict[str, float] = {}
    _flatten("vigil", monitor.platform.stats(peek=True), flat)
    lines = ["# HELP vigil_up 1 while the node runs.", "# TYPE vigil_up gauge", f'vigil_up{{node="{node}"}} 1']
    for name in sorted(flat):
        lines.append(f"# TYPE {name} gauge")
        lines.append(f'{name}{{node="{node}"}} {flat[name]:.17g}')
    lines.append("# HELP vigil_health_check_ok 1 when the check passes, 0 when it fails.")
    lines.append("# TYPE vigil_health_check_ok gauge")
    for name, st in sorted(monitor.states.items()):
        if st.result is not None:
            lines.append(f'vigil_health_check_ok{{node="{node}",check="{_label(name)}",'
                         f'severity="{st.result.severity.value}"}} {1 if st.result.ok else 0}')
    return "\n".join(lines) + "\n"


class Heartbeat:
    """Pings the dead-man endpoint every ``interval_s``; ``<url><fail_suffix>`` while a critical check fails."""

    def __init__(self, config: HeartbeatConfig, monitor: HealthMonitor) -> None:
        self.config = config
        self.monitor = monitor
        self.counters = {"sent": 0, "failed": 0}
        monitor.counters["heartbeat_sent"] = 0
        monitor.counters["heartbeat_failed"] = 0

    def _target(self) -> tuple[str, dict[str, Any]]:
        failing = self.monitor.failing()
        critical = [f.name for f in failing if f.severity == Severity.CRITICAL]
        body = {"node": self.monitor.node, "ts": time.time(), "status": "failing" if critical else "ok",
                "failing": [f.name for f in failing]}
        url = self.config.url
        if critical and self.config.fail_suffix:
            url = url.rstrip("/") + self.config.fail_suffix
        return url, body

    async def run(self) -> None:
        """Ping until cancelled (failures are counted and logged, never fatal)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                url, body = self._target()
                try:
                    async with session.post(url, json=body) as resp:
                        ok = resp.status < 400
                except (aiohttp.ClientError, TimeoutError, OSError):
                    ok = False
                key = "heartbeat_sent" if ok else "heartbeat_failed"
                self.monitor.counters[key] += 1
                if not ok and self.monitor.counters["heartbeat_failed"] % 10 == 1:
                    log.warning("health: heartbeat to the dead-man endpoint failed (%d so far)",
                                self.monitor.counters["heartbeat_failed"])
                await asyncio.sleep(self.config.interval_s)


# ---------------------------------------------------------------------------- `vigil status`

def _health_url(state_dir: Path, node: str, explicit: str | None, port: int) -> str | None:
    if explicit:
        return explicit.rstrip("/")
    if port:
        return f"http://127.0.0.1:{port}"
    try:
        host, found = (state_dir / node / "health.port").read_text().split()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{int(found)}"
    except (OSError, ValueError):
        return None


def fetch_health(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET ``<url>/health`` (a 503 "failing" answer is still a report).

    Raises:
        OSError: the node does not answer.
    """
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            failing: dict[str, Any] = json.loads(exc.read())
            return failing
        raise OSError(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def format_status(report: dict[str, Any]) -> str:
    """The ``vigil status`` text for a ``/health`` report."""
    lines = [f"node {report.get('node')}: {str(report.get('status', '?')).upper()}"]
    for name, c in sorted(report.get("checks", {}).items()):
        mark = "ok  " if c.get("ok") else "FAIL"
        lines.append(f"  {mark} {name:<14} {c.get('severity', ''):<9} {c.get('summary', '')}")
    st = report.get("stats", {})
    storage, mqtt = st.get("storage", {}), st.get("mqtt", {})
    if storage:
        lines.append(f"  storage: outbox {storage.get('outbox_pending_lines', 0):.0f} lines pending, "
                     f"{storage.get('outbox_write_errors', 0):.0f} write errors, "
                     f"{storage.get('writer_points_written', 0):.0f} points written")
    if mqtt:
        lines.append(f"  mqtt: connected={mqtt.get('connected')} received={mqtt.get('received')} "
                     f"not_durable={mqtt.get('not_durable')} stalled={mqtt.get('stalled_s', 0):.0f}s")
    return "\n".join(lines)


def status_main(config_path: str | None, url: str | None, as_json: bool) -> int:
    """``vigil status``: 0 healthy, 1 degraded or failing, 2 not answering (stats.json shown if any)."""
    import json
    import sys

    state_dir, node, port = Path("var/state"), "platform", 0
    if config_path:
        from vigil.config import ConfigError, load_config

        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            print(f"vigil: configuration error: {exc}", file=sys.stderr)
            return 2
        state_dir, node, port = Path(cfg.state_dir), cfg.node, cfg.health.port
    target = _health_url(state_dir, node, url, port)
    if target is not None:
        try:
            report = fetch_health(target)
        except OSError as exc:
            print(f"vigil: node {node} does not answer on {target}: {exc}", file=sys.stderr)
        else:
            print(json.dumps(report, indent=1, default=str) if as_json else format_status(report))
            return 0 if report.get("status") == "ok" else 1
    stats = state_dir / node / "stats.json"
    try:
        data = json.loads(stats.read_text())
        age = time.time() - float(data.get("ts", 0))
        print(f"vigil: last stats of node {node} ({stats}, {age:.0f} s old): "
              f"mqtt {data.get('mqtt', {})}", file=sys.stderr)
    except (OSError, ValueError):
        print(f"vigil: no health endpoint and no {stats}", file=sys.stderr)
    return 2
