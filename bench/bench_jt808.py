"""JT/T 808 gateway benchmark: decode-and-publish rate per core and concurrent connections held.

Usage::

    .venv/bin/python bench/bench_jt808.py [--packets 200000] [--senders 20] [--terminals 10000]
                                          [--skip-mqtt] [--skip-connections]

Prints one figure per line (and a JSON summary at the end):

1. core: ``Jt808Session.feed`` in this process on location frames (unescape, checksum, header,
   body, contract JSON, general reply), packets per second on one core.
2. tcp: the gateway in its own process with a null publish sink, fed over loopback TCP by
   ``--senders`` authenticated terminals sending as fast as flow control allows; packets per
   wall second and per CPU second of the gateway process (the per-core figure).
3. mqtt: the same with Vigil's MQTT client into a real Mosquitto started in a temp dir: QoS 1
   with in-flight windows of 1000 and 200 (rate until the broker acknowledged every message), and
   QoS 0 (rate until every message was handed to the socket).
4. connections: ``--terminals`` simulated terminals (scenario jt808_city_load) connect, register,
   authenticate, report and then hold with heartbeats; peak connections and the gateway's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.jt808.codec import encode_frame
from edge.jt808.gateway import GatewayLimits, Jt808Gateway, PublishSink
from edge.jt808.limits import AttemptLimits
from edge.jt808.messages import LocationReport, MsgId, build_location, dword
from edge.jt808.session import Jt808Platform, StaticTerminalRegistry
from simulators.jt808_terminal import (
    SimulatedTerminal,
    SimulatorStats,
    TerminalPlan,
    load_scenario,
    plan,
    run_scenario,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"bench"


def location_frames(phone: str, n: int, first_serial: int = 0) -> bytes:
    """``n`` distinct location frames of one terminal, as one byte string."""
    t0 = datetime(2026, 11, 26, tzinfo=UTC)
    out = []
    for i in range(n):
        report = LocationReport(0, 3, 30.25 + (i % 1000) * 1e-5, 120.16 + (i % 777) * 1e-5, 12, 40.0 + i % 50,
                                i % 360, t0 + timedelta(seconds=i), {0x01: dword(100_000 + i), 0x30: b"\x14"})
        out.append(encode_frame(MsgId.LOCATION, phone, first_serial + i, build_location(report)))
    return b"".join(out)


# ---------------------------------------------------------------------------- 1. core

def bench_core(packets: int) -> dict[str, float]:
    """Pure session throughput on one core."""
    plat = Jt808Platform(StaticTerminalRegistry(), accept_unknown=True)
    session = plat.new_session("bench")
    session.device_id = "13800000001"
    stream = location_frames("13800000001", packets)
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    published = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for chunk in chunks:
        published += len(session.feed(chunk, 0.0).publications)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert published == packets, plat.counters.snapshot()
    return {"packets": packets, "seconds": round(wall, 3), "per_s": round(packets / wall),
            "per_cpu_s": round(packets / cpu), "bytes_per_packet": round(len(stream) / packets, 1)}


# ---------------------------------------------------------------------------- gateway process

async def gateway_process(port: int, mqtt_url: str | None, qos: int, max_pending: int) -> None:
    """Run the gateway (null sink or MQTT) and print a status line every 0.25 s."""
    # All simulated terminals come from one loopback address: lift the per-address bounds that
    # protect a real listener (carrier NAT is far less concentrated than this).
    platform = Jt808Platform(StaticTerminalRegistry(), accept_unknown=True,
                             limits=AttemptLimits(per_address_burst=1e9, per_address_per_s=1e9))
    mqtt_counters: dict[str, int] = {}
    async def discard(topic: str, payload: bytes, *, retain: bool = False) -> None:
        return None

    async with contextlib.AsyncExitStack() as stack:
        publish: PublishSink = discard
        if mqtt_url:
            from broker.mqtt import MqttClient

            client = await stack.enter_async_context(MqttClient(mqtt_url, "bench-jt808", clean_start=True,
                                                                max_pending=max_pending))

            async def to_mqtt(topic: str, payload: bytes, *, retain: bool = False) -> None:
                await client.publish(topic, payload, qos=qos, retain=retain)

            publish = to_mqtt
            mqtt_counters = client.counters
        gateway = Jt808Gateway(platform, publish, limits=GatewayLimits(
            idle_timeout_s=600, auth_timeout_s=600, backlog=8192, max_connections=50_000, max_per_address=50_000,
            max_preauth_per_address=50_000))
        await gateway.start("127.0.0.1", port)
        peak = 0
        while True:
            peak = max(peak, len(gateway.connections))
            usage = resource.getrusage(resource.RUSAGE_SELF)
            status = {**gateway.stats(), "peak_connections": peak, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "rss_mb": _memory_mb("VmRSS"), "peak_rss_mb": _memory_mb("VmHWM"),
                      "mqtt_done": mqtt_counters.get("acked_out" if qos else "published", 0)}
            print(json.dumps(status), flush=True)
            await asyncio.sleep(0.25)


def _memory_mb(field: str) -> float:
    """This process's memory from /proc (``ru_maxrss`` would include the parent's before exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class GatewayProc:
    """The gateway subprocess and its latest status line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.status: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, port: int, mqtt_url: str | None = None, qos: int = 1, max_pending: int = 1000) -> GatewayProc:
        args = [sys.executable, __file__, "_gateway", "--port", str(port), "--qos", str(qos),
                "--max-pending", str(max_pending)] + (["--mqtt", mqtt_url] if mqtt_url else [])
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        gw = cls(proc)
        await gw.wait_for(lambda s: "connections_open" in s, 20)
        return gw

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.status = json.loads(line)

    async def wait_for(self, check: Any, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not (self.status and check(self.status)):
                await asyncio.sleep(0.05)
        return self.status

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()
        self._reader.cancel()


# ---------------------------------------------------------------------------- 2./3. throughput over TCP

class _Blaster(asyncio.Protocol):
    """Sends bytes as fast as TCP flow control allows; reads and drops replies."""

    def __init__(self) -> None:
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.replies = 0
        self.all_replied = asyncio.Event()
        self.expected = 0

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        # Replies to our frames never contain escaped flags, so two flags make one reply.
        self.replies += data.count(0x7E) // 2
        if self.expected and self.replies >= self.expected:
            self.all_replied.set()


async def blast(port: int, senders: int, per_sender: int) -> float:
    """Authenticate ``senders`` terminals, then send their frames; returns when all bytes are written."""
    loop = asyncio.get_running_loop()
    stats = SimulatorStats()
    scenario = load_scenario(ROOT / "simulators/scenarios/jt808_city_load.yaml")
    plans = plan(scenario)[:senders]
    payloads = [location_frames(p.phone, per_sender, 10) for p in plans]

    async def one(p: TerminalPlan, payload: bytes) -> None:
        sim = SimulatedTerminal(p, "127.0.0.1", port, stats)
        assert await sim.connect(), "authentication failed"
        sim.close()
        # Reconnect with a flow-controlled protocol and authenticate with the code we got.
        transport, proto = await loop.create_connection(_Blaster, "127.0.0.1", port)
        from edge.jt808.messages import AuthRequest, build_auth

        assert sim.auth_code is not None
        proto.expected = per_sender + 1
        transport.write(encode_frame(MsgId.AUTHENTICATE, p.phone, 1, build_auth(AuthRequest(sim.auth_code), p.version)))
        await asyncio.sleep(0.2)
        for i in range(0, len(payload), 32768):
            await proto.can_write.wait()
            transport.write(payload[i:i + 32768])
        # Close only once every frame was answered: closing with unread replies makes the
        # kernel reset the connection and throw away what the gateway has not read yet.
        await proto.all_replied.wait()
        transport.close()

    await asyncio.gather(*(one(p, pl) for p, pl in zip(plans, payloads, strict=True)))
    return time.perf_counter()


async def bench_tcp(packets: int, senders: int, mqtt_url: str | None, qos: int = 1,
                    max_pending: int = 1000) -> dict[str, Any]:
    """Throughput of the gateway process over TCP (null sink, or MQTT when ``mqtt_url``)."""
    port = free_port()
    gw = await GatewayProc.start(port, mqtt_url, qos, max_pending)
    try:
        per_sender = packets // senders
        total = per_sender * senders
        before = await gw.wait_for(lambda s: True, 5)
        t0 = time.perf_counter()
        blaster = asyncio.create_task(blast(port, senders, per_sender))
        key = "mqtt_done" if mqtt_url else "telemetry"
        done = await gw.wait_for(lambda s: s[key] >= total + before.get(key, 0), 600)
        wall = time.perf_counter() - t0
        await blaster
        cpu = done["cpu_s"] - before["cpu_s"]
        rejected = {k: v for k, v in done.items() if k.startswith("rejected.")}
        return {"packets": total, "senders": senders, "qos": qos if mqtt_url else None,
                "max_pending": max_pending if mqtt_url else None, "seconds": round(wall, 2),
                "per_s": round(total / wall),
                "gateway_cpu_s": round(cpu, 2), "per_cpu_s": round(total / cpu), "rejected": rejected,
                "peak_rss_mb": done["peak_rss_mb"]}
    finally:
        await gw.stop()


# ---------------------------------------------------------------------------- 4. connections

async def bench_connections(terminals: int, hold_s: float) -> dict[str, Any]:
    """Hold ``terminals`` simulated terminals on one gateway process."""
    port = free_port()
    gw = await GatewayProc.start(port)
    try:
        scenario = load_scenario(ROOT / "simulators/scenarios/jt808_city_load.yaml", duration_min=1.0)
        scenario = msgspec.structs.replace(_first(scenario, terminals), heartbeat_s=10.0)
        t0 = time.perf_counter()
        stats = await run_scenario(scenario, "127.0.0.1", port, hold_s=hold_s)
        wall = time.perf_counter() - t0
        status = await gw.wait_for(lambda s: True, 5)
        return {"terminals": terminals, "peak_connections": status["peak_connections"],
                "authenticated": status["authenticated"], "telemetry": status["telemetry"],
                "heartbeats": status.get("messages.0x0002", 0), "sim_connect_failures": stats.connect_failures,
                "gateway_rss_mb": status["rss_mb"], "gateway_peak_rss_mb": status["peak_rss_mb"],
                "gateway_cpu_s": round(status["cpu_s"], 1),
                "seconds": round(wall, 1)}
    finally:
        await gw.stop()


def _first(scenario: Any, n: int) -> Any:
    """The scenario cut to its first ``n`` terminals (fleets in order)."""
    fleets, left = [], n
    for fleet in scenario.fleets:
        take = min(left, fleet.count)
        fleets.append(msgspec.structs.replace(fleet, count=take))
        left -= take
    return msgspec.structs.replace(scenario, fleets=fleets)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """All parts in order; prints each figure as it is measured."""
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"}
    results["core"] = bench_core(args.packets)
    print("core  ", results["core"], flush=True)
    results["tcp"] = await bench_tcp(args.packets, args.senders, None)
    print("tcp   ", results["tcp"], flush=True)
    if not args.skip_mqtt:
        from broker.mosquitto import BrokerLayout, MosquittoProcess

        with tempfile.TemporaryDirectory() as tmp:
            broker = MosquittoProcess(BrokerLayout(data_dir=Path(tmp), port=free_port()))
            broker.start()
            try:
                n = min(args.packets, 100_000)
                for name, qos, window in (("mqtt_qos1", 1, 1000), ("mqtt_qos1_window200", 1, 200),
                                          ("mqtt_qos0", 0, 1000)):
                    results[name] = await bench_tcp(n, args.senders, broker.url, qos, window)
                    print(f"{name:6}", results[name], flush=True)
            finally:
                broker.stop()
    if not args.skip_connections:
        results["connections"] = await bench_connections(args.terminals, args.hold)
        print("conns ", results["connections"], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, internally, the gateway subprocess)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_gateway":
        p = argparse.ArgumentParser()
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--mqtt")
        p.add_argument("--qos", type=int, default=1)
        p.add_argument("--max-pending", type=int, default=1000)
        sub = p.parse_args(argv[1:])
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(gateway_process(sub.port, sub.mqtt, sub.qos, sub.max_pending))
        return 0
    p = argparse.ArgumentParser(description="JT/T 808 gateway benchmark")
    p.add_argument("--packets", type=int, default=200_000)
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--hold", type=float, default=15.0, help="seconds the terminals hold after reporting")
    p.add_argument("--skip-mqtt", action="store_true")
    p.add_argument("--skip-connections", action="store_true")
    args = p.parse_args(argv)
    results = asyncio.run(run(args))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
