"""Real processes for the cluster tests: 3 nats-server nodes, `vigil run` instances, an MQTT device fleet."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as paho
import yaml
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError, NoKeysError
from paho.mqtt.enums import CallbackAPIVersion

from broker.contracts import Telemetry, encode
from broker.nats_server import NatsNodeProcess, local_cluster
from broker.nats_transport import CHECKPOINTS_BUCKET, LEASES_BUCKET, TRANSITIONS_STREAM, partition_stream
from tests.support.child import ChildProcess

RULES = """\
rules:
  - name: cl_overspeed
    kind: elevator
    severity: major
    condition: "speed_mps > 3"
    summary: "超速 {device_id} 第 {episode} 次"
    summary_en: "overspeed {device_id} episode {episode}"
  - name: cl_level_held
    kind: elevator
    severity: critical
    condition: "level > 50"
    clear: "level < 40"
    for: 8s
    summary: "液位持续偏高 {device_id}"
    summary_en: "level held {device_id}"
"""


def start_nats(base: Path, partitions: int) -> list[NatsNodeProcess]:
    """Three clustered nodes with JetStream and MQTT, listening."""
    nodes = local_cluster(base, partitions)
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_listening()
    return nodes


class InstanceProc(ChildProcess):
    """``vigil run`` with a ``cluster:`` section, as a child process (so it can be SIGKILLed)."""

    stop_timeout_s = 20.0

    def __init__(self, tmp: Path, name: str, servers: list[str], partitions: int, receiver_url: str,
                 services: tuple[str, ...] = ("rules", "alerting"), rules_text: str = RULES,
                 lease_ttl_s: float = 5.0, extra: dict[str, Any] | None = None) -> None:
        super().__init__(tmp / f"{name}.log")
        self.name = name
        rules = tmp / "rules.yaml"
        rules.write_text(rules_text)
        cfg = {
            "node": name, "state_dir": str(tmp / "state"), "services": list(services), "log_level": "info",
            "rules": {"packs": [], "paths": [str(rules)], "tick_interval_s": 0.5, "reload_interval_s": 0},
            "alerting": {
                "locale": "en", "receivers": [{"name": "duty", "urls": [receiver_url]}], "people": [],
                "escalation_policies": [], "inhibit_rules": [], "api": {"enabled": False}, "reopen_window_s": 0,
                "retry": {"attempts": 3, "backoff_s": 0.1, "backoff_max_s": 0.5, "timeout_s": 3},
                "storm": {"max_per_minute": 10000, "digest_s": 60},
                "route": {"receivers": ["duty"], "group_by": ["..."], "group_wait_s": 0, "group_interval_s": 0,
                          "repeat_interval_s": 86400, "send_resolved": True},
            },
            "cluster": {"servers": servers, "partitions": partitions, "lease_ttl_s": lease_ttl_s,
                        "checkpoint_interval_s": 1.0, "stream_max_age_s": 3600},
        }
        for key, value in (extra or {}).items():  # a section, or keys of one (``alerting``)
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg, allow_unicode=True))

    def start(self) -> None:
        self.launch_vigil(["run", "--config", str(self.config)])


class Device:
    """One MQTT device (paho, 3.1.1, QoS 1, persistent session) that fails over to the next node when its own dies.

    ``acked`` holds the sequence numbers the broker acknowledged; ``sent`` what was handed to paho (paho
    re-sends unacknowledged QoS 1 messages after reconnecting).
    """

    def __init__(self, device_id: str, ports: list[int], first: int) -> None:
        self.device_id = device_id
        self.ports = ports
        self.index = first
        self.lock = threading.Lock()
        self.mids: dict[int, tuple[int, float]] = {}
        self.acked: dict[int, float] = {}
        self.early: set[int] = set()
        self.sent = 0
        self.failovers = 0
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv311,
                        clean_session=False)
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.2, 1.0)
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        self.client = c

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.ports[self.index], keepalive=5)
        self.client.loop_start()

    def _on_disconnect(self, client: paho.Client, *_: Any) -> None:
        # Any node of the cluster will do: try the next one (a load balancer's job in production).
        self.index = (self.index + 1) % len(self.ports)
        self.failovers += 1
        # The public setter refuses while paho still holds the dead socket (inside this callback);
        # paho reads ``_port`` on its next reconnect attempt.
        client._port = self.ports[self.index]

    def _on_connect_fail(self, client: paho.Client, _u: Any) -> None:
        # A reconnect to a dead node: paho would retry the same port forever.
        self.index = (self.index + 1) % len(self.ports)
        client._port = self.ports[self.index]

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.lock:
            item = self.mids.pop(mid, None)
            if item is not None:
                self.acked[item[0]] = item[1]
            else:
                self.early.add(mid)  # acknowledged before ``publish`` recorded the mid

    def publish(self, seq: int, ts: float, metrics: dict[str, float]) -> None:
        payload = encode(Telemetry(ts=datetime.fromtimestamp(round(ts, 3), UTC), seq=seq, metrics=metrics))
        # Not under self.lock: paho calls on_publish while holding its own out-message lock, which
        # publish() takes too (holding both in opposite orders deadlocks).
        info = self.client.publish(f"vigil/v1/elevator/{self.device_id}/telemetry", payload, qos=1)
        with self.lock:
            self.sent += 1
            if info.mid in self.early:
                self.early.discard(info.mid)
                self.acked[seq] = round(ts, 3)
            else:
                self.mids[info.mid] = (seq, round(ts, 3))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    @property
    def unacked(self) -> int:
        with self.lock:
            return len(self.mids)


class GatewayDevice:
    """A device behind a Vigil gateway that publishes NATS-native: JetStream publishes, in order, each retried
    (same ``Nats-Msg-Id``) until the partition stream acknowledged it, as an ``EdgeLink`` outbox would.

    ``acked`` holds what JetStream acknowledged: stored in the R3 stream.
    """

    def __init__(self, device_id: str, servers: list[str]) -> None:
        self.device_id = device_id
        self.servers = servers
        self.queue: asyncio.Queue[tuple[int, float, bytes]] = asyncio.Queue()
        self.acked: dict[int, float] = {}
        self.retries = 0
        self.sent = 0
        self.failovers = 0
        self.nc: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def on_error(exc: Exception) -> None:
            pass  # a node killed on purpose; nats-py reconnects to another

        self.nc = await nats.connect(servers=self.servers, dont_randomize=True, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.3, connect_timeout=2, error_cb=on_error)
        self.task = asyncio.get_running_loop().create_task(self._send())

    def publish(self, seq: int, ts: float, metrics: dict[str, float]) -> None:
        payload = encode(Telemetry(ts=datetime.fromtimestamp(round(ts, 3), UTC), seq=seq, metrics=metrics))
        self.queue.put_nowait((seq, round(ts, 3), payload))
        self.sent += 1

    async def _send(self) -> None:
        js = self.nc.jetstream(timeout=2.0)
        subject = f"vigil.v1.elevator.{self.device_id}.telemetry"
        while True:
            seq, ts, payload = await self.queue.get()
            while True:
                try:
                    await js.publish(subject, payload, headers={"Nats-Msg-Id": f"{self.device_id}:{seq}"})
                    break
                except Exception:
                    self.retries += 1
                    await asyncio.sleep(0.2)
            self.acked[seq] = ts

    @property
    def unacked(self) -> int:
        return self.sent - len(self.acked)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.nc is not None:
            await self.nc.close()


def episode_metrics(seq: int, level_from: int, level_to: int) -> dict[str, float]:
    """Overspeed episodes of 4 s (10 messages fast of every 40), and one long high-level spell."""
    return {"speed_mps": 5.0 if seq % 40 >= 30 else 1.0, "episode": float(seq // 40),
            "level": 60.0 if level_from <= seq < level_to else 10.0}


async def js_connect(servers: list[str]) -> Any:
    async def on_error(exc: Exception) -> None:
        pass  # a node killed on purpose; nats-py reconnects to another

    nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.3, connect_timeout=2,
                            error_cb=on_error)
    return nc, nc.jetstream(timeout=5)


async def leases(js: Any) -> dict[str, str]:
    """Lease key -> owner (instance heartbeats included as ``i.{name}``)."""
    try:
        kv = await js.key_value(LEASES_BUCKET)
        keys = await kv.keys()
    except (NoKeysError, Exception):
        return {}
    out = {}
    for k in keys:
        try:
            e = await kv.get(k)
        except KeyNotFoundError:
            continue
        out[k] = json.loads(e.value)["owner"]
    return out


async def lease_owner(js: Any, key: str, timeout: float = 30.0) -> str:
    """The owner of one lease, read until a read succeeds (``leases`` gives {} when a KV read times out)."""
    deadline = time.monotonic() + timeout
    while True:
        owner = (await leases(js)).get(key)
        if owner is not None:
            return owner
        if time.monotonic() > deadline:
            raise AssertionError(f"no owner of lease {key!r} read within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def checkpoint(js: Any, partition: int) -> dict[str, Any] | None:
    try:
        kv = await js.key_value(CHECKPOINTS_BUCKET)
        e = await kv.get(f"p{partition}")
    except KeyNotFoundError:
        return None
    doc: dict[str, Any] = json.loads(e.value)
    return doc


async def read_stream(js: Any, stream: str) -> list[Any]:
    """Every message of a stream, in order (an ephemeral pull consumer; retried while the cluster settles)."""
    for attempt in range(10):
        try:
            info = await js.stream_info(stream)
            total = info.state.messages
            out: list[Any] = []
            if not total:
                return out
            sub = await js.pull_subscribe(info.config.subjects[0], stream=stream,
                                          config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30))
            try:
                while len(out) < total:
                    out.extend(await sub.fetch(min(1000, total - len(out)), timeout=5))
            finally:
                await sub.unsubscribe()
            return out
        except Exception:
            if attempt == 9:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def partition_streams(js: Any, partitions: int) -> dict[int, list[Any]]:
    return {p: await read_stream(js, partition_stream(p)) for p in range(partitions)}


async def transitions(js: Any) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await read_stream(js, TRANSITIONS_STREAM)]


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str], step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(step)


async def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET ``url`` with a real HTTP client: (status, body)."""
    import aiohttp

    timeout_ = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=timeout_) as session, session.get(url) as resp:
        return resp.status, await resp.text()


def health_base(tmp: Path, name: str) -> str | None:
    """The base URL of an instance's /health and /metrics (from ``health.port`` in its state folder)."""
    try:
        host, port = (tmp / "state" / name / "health.port").read_text().split()
    except (OSError, ValueError):
        return None
    return f"http://{host}:{port}"


async def instance_health(tmp: Path, name: str) -> dict[str, Any] | None:
    """An instance's /health report (None while it does not answer)."""
    base = health_base(tmp, name)
    if base is None:
        return None
    try:
        status, body = await http_get(f"{base}/health")
    except Exception:
        return None
    report: dict[str, Any] = json.loads(body)
    report["http_status"] = status
    return report
