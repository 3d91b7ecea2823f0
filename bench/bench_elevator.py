"""Elevator simulator and fleet publish rate, counted end to end by a separate subscriber.

Prints: (1) how fast the fleet builds messages without I/O (physics + JSON, with and
without the edge detectors); (2) a paced fleet run (N elevators x R Hz) through a real
Mosquitto, with a ``mosquitto_sub`` process counting what arrives; (3) the same fleet unpaced
(as fast as it can); (4) the edge runtime's store-and-forward rates (live, offline append,
drain after a broker restart). Usage::

    .venv/bin/python bench/bench_elevator.py [--count 1000] [--rate 10] [--duration 10] [--connections 2]
        [--qos 1] [--window 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from edge.runtime import EdgeIdentity, EdgeLink
from simulators.elevator_fleet import ElevatorFleet, FleetStats, publish_fleet


def build_rate(count: int, detect: bool, ticks: int = 5) -> float:
    """Messages per second the fleet builds (physics step + encode), no network."""
    fleet = ElevatorFleet(count, seed=1, detect=detect, fault_fraction=0.05, duration_s=60)
    now = time.time()
    ts = datetime.now(UTC)
    n = 0
    start = time.perf_counter()
    for k in range(ticks):
        for i in range(count):
            n += len(fleet.messages(i, 0.1, now + k * 0.1, ts))
    return n / (time.perf_counter() - start)


class SubscriberCount:
    """``mosquitto_sub`` in its own process, counting telemetry messages as they arrive."""

    def __init__(self, port: int, expected: int) -> None:
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self.proc = subprocess.Popen(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", "bench-counter", "-c",
             "-t", "vigil/v1/elevator/+/telemetry", "-F", ".", "-C", str(expected)],
            stdout=subprocess.PIPE,
        )
        self.count = 0
        self.last_at = 0.0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            self.count += 1
            self.last_at = time.monotonic()

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        self._thread.join(5)


async def fleet_run(port: int, count: int, rate: float, duration: float, connections: int, qos: int,
                    paced: bool, window: int) -> tuple[FleetStats, SubscriberCount, float]:
    expected = count * max(1, round(duration * rate))
    sub = SubscriberCount(port, expected)
    await asyncio.sleep(0.5)  # let the subscriber connect
    fleet = ElevatorFleet(count, seed=7, duration_s=duration)
    started = time.monotonic()
    stats = await publish_fleet(fleet, f"mqtt://127.0.0.1:{port}", rate, duration, connections=connections,
                                qos=qos, paced=paced, window=window)
    await asyncio.to_thread(sub.finish, 60)
    return stats, sub, (sub.last_at - started) if sub.count else 0.0


async def link_rates(broker: MosquittoProcess, tmp: Path, n: int) -> None:
    """EdgeLink: live publish rate through the outbox, outbox append rate offline, drain rate after the outage."""
    link = EdgeLink(broker.url, EdgeIdentity.for_device("elevator", "bench-link", agent="bench"), tmp / "link",
                    max_queued=10 * n, backoff_min=0.05, backoff_max=0.2)
    await link.start()
    await link.wait_connected(5)
    payload = b'{"v":1,"ts":"2026-11-26T00:00:00.000Z","metrics":{"speed_mps":1.0}}'
    topic = "vigil/v1/elevator/bench-link/telemetry"
    start = time.perf_counter()
    for _ in range(n):
        link.publish(topic, payload)
        await asyncio.sleep(0)
    await link.flush()
    live = n / (time.perf_counter() - start)
    await asyncio.to_thread(broker.stop)
    while link.connected:
        await asyncio.sleep(0.02)
    start = time.perf_counter()
    for _ in range(n):
        link.publish(topic, payload)
    offline = n / (time.perf_counter() - start)
    await asyncio.to_thread(broker.start)
    start = time.perf_counter()
    await link.flush()
    drain = n / (time.perf_counter() - start)
    await link.stop()
    print(f"edge link, {n} messages of {len(payload)} B: live {live:,.0f} msg/s (outbox + QoS 1 + PUBACK + delete); "
          f"offline append {offline:,.0f} msg/s; drain after broker restart {drain:,.0f} msg/s "
          f"(includes reconnect); dropped {link.outbox.dropped}")


def report(label: str, stats: FleetStats, sub: SubscriberCount, received_span: float) -> None:
    print(f"{label}: published {stats.published} in {stats.elapsed_s:.2f} s = {stats.rate:,.0f} msg/s, "
          f"acknowledged {stats.acknowledged}, max lag behind schedule {stats.max_lag_s:.3f} s; "
          f"subscriber received {sub.count} ({'all' if sub.count == stats.published else 'MISSING'}) "
          f"= {sub.count / received_span if received_span else 0:,.0f} msg/s")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoProcess(BrokerLayout(data_dir=Path(tmp) / "broker", port=free_port()))
        broker.start()
        try:
            stats, sub, span = await fleet_run(broker.port, args.count, args.rate, args.duration,
                                               args.connections, args.qos, paced=True, window=args.window)
            report(f"paced   {args.count} elevators x {args.rate:g} Hz x {args.duration:g} s, QoS {args.qos}, "
                   f"{args.connections} connections, window {args.window}", stats, sub, span)
            stats, sub, span = await fleet_run(broker.port, args.count, args.rate, args.duration,
                                               args.connections, args.qos, paced=False, window=args.window)
            report(f"unpaced {args.count} elevators, {round(args.duration * args.rate)} ticks, QoS {args.qos}, "
                   f"{args.connections} connections, window {args.window}", stats, sub, span)
            await link_rates(broker, Path(tmp), args.link_messages)
        finally:
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--window", type=int, default=200, help="QoS 1 messages in flight per connection")
    parser.add_argument("--link-messages", type=int, default=20_000, help="messages for the EdgeLink figures")
    args = parser.parse_args()
    for detect in (False, True):
        print(f"build only, {args.count} elevators, detectors {'on' if detect else 'off'}: "
              f"{build_rate(args.count, detect):,.0f} msg/s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
