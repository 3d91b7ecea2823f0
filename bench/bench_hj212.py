"""HJ 212 gateway benchmark: decode-and-publish rate per core and concurrent connections held.

Prints figures; asserts nothing. Parts:
  1. core:     frames -> Hj212Session (CRC, parse, split, mapping, JSON) on one core, no I/O
  2. mqtt:     the same, publishing every message with QoS 1 through broker.mqtt to a real Mosquitto
  3. tcp:      the gateway (this process, one core) fed over TCP by the simulator (another process)
  4. connections: the simulator opens N loggers that stay connected; the gateway's peak is reported

Run: .venv/bin/python bench/bench_hj212.py [--packets 50000] [--tcp-devices 200] [--connections 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port  # noqa: E402
from broker.mqtt import MqttClient  # noqa: E402
from edge.hj212.downlink import DownlinkTracker  # noqa: E402
from edge.hj212.gateway import (  # noqa: E402
    GuardPolicy,
    Hj212Counters,
    Hj212Gateway,
    Hj212Session,
    ServerLimits,
    SessionPolicy,
)
from simulators.hj212_logger import LoggerModel, load_scenario  # noqa: E402

SCENARIO = ROOT / "simulators" / "scenarios" / "hj212_load.yaml"


def frames(count: int) -> list[bytes]:
    """``count`` realistic frames (6 pollutants, real-time / 10-minute / hourly mix) from the load scenario."""
    scenario = load_scenario(SCENARIO, devices=1, duration_s=count * 30 * 2)
    out: list[bytes] = []
    index = 0
    while len(out) < count:
        for timed in LoggerModel(scenario, index).frames():
            out.append(timed.data)
            if len(out) == count:
                break
        index += 1
    return out


def bench_core(data: list[bytes]) -> None:
    size = sum(map(len, data)) / len(data)
    for label, chunks, downlink in (("one frame per read", data, None), ("64 KiB reads", _chunks(data, 65536), None),
                                    ("64 KiB reads, downlink tracking on", _chunks(data, 65536), DownlinkTracker())):
        session = Hj212Session(SessionPolicy(accept_unknown_devices=True), Hj212Counters(), downlink=downlink)
        published = 0
        start = time.process_time()
        for chunk in chunks:
            published += len(session.receive(chunk, 0.0).publications)
        cpu = time.process_time() - start
        print(f"core ({label}): {len(data)} packets ({size:.0f} B avg) in {cpu:.2f} s CPU = "
              f"{len(data) / cpu:,.0f} packets/s per core; {published} telemetry messages")


def _chunks(data: list[bytes], size: int) -> list[bytes]:
    blob = b"".join(data)
    return [blob[i:i + size] for i in range(0, len(blob), size)]


async def bench_mqtt(data: list[bytes], url: str, max_pending: int = 1000, qos: int = 1) -> None:
    session = Hj212Session(SessionPolicy(accept_unknown_devices=True), Hj212Counters())
    async with MqttClient(url, "bench-hj212-publisher", clean_start=True, max_pending=max_pending) as mqtt:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        published = 0
        for frame in data:
            for publication in session.receive(frame, 0.0).publications:
                await mqtt.publish(publication.topic, publication.payload, qos)
                published += 1
        await mqtt.flush()
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    print(f"decode + publish QoS {qos} to Mosquitto (max_pending {max_pending}): {len(data)} packets in "
          f"{wall:.2f} s wall ({cpu:.2f} s CPU of this process) = {len(data) / wall:,.0f} packets/s wall, "
          f"{len(data) / cpu:,.0f} packets/s per core of CPU; "
          f"{published} messages published (QoS 1: acknowledged)")


def _simulator(port: int, devices: int, duration: float, hold: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.hj212_logger", "--scenario", str(SCENARIO), "--port", str(port),
         "--devices", str(devices), "--duration", str(duration), "--hold", str(hold)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _loopback_fleet(devices: int) -> GuardPolicy:
    # The whole simulated fleet connects from 127.0.0.1: lift the per-address caps meant for the field.
    return GuardPolicy(max_connections_per_address=devices + 100, max_preauth_per_address=devices + 100)


async def bench_tcp(url: str, devices: int, duration: float) -> None:
    async with MqttClient(url, "bench-hj212-gateway", clean_start=True) as mqtt:
        gateway = Hj212Gateway(mqtt.publish, policy=SessionPolicy(accept_unknown_devices=True),
                               limits=ServerLimits(publish_status=False), guard=_loopback_fleet(devices))
        _, port = await gateway.start("127.0.0.1", 0)
        sim = _simulator(port, devices, duration, 0)
        first: float | None = None
        end = time.perf_counter()
        seen = 0
        start_cpu = time.process_time()
        while sim.poll() is None:
            await asyncio.sleep(0.05)
            if first is None and gateway.counters.packets:
                first = time.perf_counter()
            if gateway.counters.packets != seen:
                # The rate counts from the first to the last packet, not the simulator's wind-down.
                seen, end = gateway.counters.packets, time.perf_counter()
        await mqtt.flush()
        # All CPU of this process until every publication is acknowledged (waiting costs none).
        cpu = time.process_time() - start_cpu
        await gateway.close()
        c = gateway.counters
        span = max(1e-9, end - (first or end))
        print(f"tcp end to end ({devices} loggers as fast as possible, simulator in another process): "
              f"{c.packets} packets in {span:.2f} s = {c.packets / span:,.0f} packets/s, gateway CPU {cpu:.2f} s = "
              f"{c.packets / cpu:,.0f} packets/s per core; published "
              f"{c.published}, replies {c.replies}, rejected {sum(c.rejected.values())}")
        print("  simulator:", (sim.stdout.read() if sim.stdout else b"").decode().strip().splitlines()[-1])


async def bench_connections(url: str, devices: int, hold: float) -> None:
    async with MqttClient(url, "bench-hj212-conns", clean_start=True) as mqtt:
        gateway = Hj212Gateway(mqtt.publish, policy=SessionPolicy(accept_unknown_devices=True),
                               limits=ServerLimits(max_connections=devices + 100), guard=_loopback_fleet(devices))
        _, port = await gateway.start("127.0.0.1", 0)
        started = time.perf_counter()
        sim = _simulator(port, devices, 30, hold)
        peak, all_at = 0, None
        while sim.poll() is None:
            await asyncio.sleep(0.1)
            peak = max(peak, gateway.counters.connections_open)
            if all_at is None and peak >= devices:
                all_at = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await gateway.close()
        async with asyncio.timeout(120):
            await mqtt.flush()  # the offline statuses of every logger
        c = gateway.counters
        reached = f"all connected after {all_at:.1f} s" if all_at else "not all connected"
        print(f"connections: peak {peak} concurrent of {devices} loggers ({reached}); packets {c.packets}, "
              f"published {c.published}, refused {c.connections_refused}; gateway process max RSS {rss:.0f} MiB")
        print("  simulator:", (sim.stdout.read() if sim.stdout else b"").decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=50000)
    parser.add_argument("--tcp-devices", type=int, default=200)
    parser.add_argument("--tcp-duration", type=float, default=3600, help="simulated seconds per logger")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=60, help="seconds the simulator keeps connections open")
    parser.add_argument("--only", choices=["core", "mqtt", "tcp", "connections"])
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, open files limit {hard}")
    data = frames(args.packets) if args.only in (None, "core", "mqtt") else []
    if args.only in (None, "core"):
        bench_core(data)
    if args.only == "core":
        return
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoProcess(BrokerLayout(data_dir=Path(tmp) / "mosquitto", port=free_port()))
        broker.start()
        try:
            if args.only in (None, "mqtt"):
                asyncio.run(bench_mqtt(data, broker.url))
                asyncio.run(bench_mqtt(data, broker.url, qos=0))
            if args.only in (None, "tcp"):
                asyncio.run(bench_tcp(broker.url, args.tcp_devices, args.tcp_duration))
            if args.only in (None, "connections"):
                asyncio.run(bench_connections(broker.url, args.connections, args.hold))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
