"""A gateway process for the fault suite: numbered elevator telemetry through the real edge runtime.

It publishes through ``edge.runtime.EdgeLink`` (the store-and-forward link every Vigil gateway uses:
SQLite outbox, QoS 1, delete on PUBACK) and writes each message's number to a ledger after the
outbox committed it, so the ledger is exactly what this gateway took responsibility for. Killed
with SIGKILL and started again with the same ``--data-dir``, it replays its outbox and continues
after the last number in the ledger. Message ``i`` is deterministic (device, timestamp, values), so
one produced twice is the same point. Every ``EPISODE`` messages of a device, two overspeed
samples make one alert episode (rule ``fault_overspeed`` in the suite's rule file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from broker.contracts import Kind, Telemetry
from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLink

EPISODE = 25
"""Messages per device between alert episodes."""


def device_of(i: int, devices: int) -> str:
    """The device that sends message ``i``."""
    return f"elev-f{i % devices + 1}"


def message(i: int, devices: int, base_ts: float, rate: float, jump: tuple[int, int, float] | None) -> Telemetry:
    """Message ``i``: deterministic, so producing it twice makes the same point."""
    k = i // devices
    ts = base_ts + i / rate
    if jump is not None and jump[0] <= i < jump[1] and i % devices == 0:
        ts += jump[2]  # device elev-f1's clock jumps
    speed = 5.0 if k % EPISODE in (10, 11) else 1.0
    return Telemetry(ts=datetime.fromtimestamp(round(ts, 3), UTC), seq=i,
                     metrics={"speed_mps": speed, "episode": float(k // EPISODE), "floor": 3})


def last_in_ledger(path: Path) -> int:
    """The highest number in the ledger, -1 when empty (a torn last line is ignored)."""
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        return -1
    nums = [int(x) for x in lines if x.strip().isdigit()]
    return max(nums, default=-1)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--base-ts", type=float, required=True)
    ap.add_argument("--jump", default="", help="FROM:TO:SECONDS device elev-f1's clock offset for those messages")
    args = ap.parse_args()
    jump = None
    if args.jump:
        a, b, s = args.jump.split(":")
        jump = (int(a), int(b), float(s))
    ledger_path = Path(args.ledger)
    start = last_in_ledger(ledger_path) + 1
    link = EdgeLink(args.url, EdgeIdentity.for_gateway("faults-gw", agent="vigil-faults-gateway"),
                    Path(args.data_dir), backoff_min=0.05, backoff_max=0.5, heartbeat_s=3600, hold_unrouted=True)
    await link.start()
    ledger = open(ledger_path, "a", buffering=1)  # noqa: SIM115 - line-buffered for the whole run
    try:
        period = 1.0 / args.rate
        loop = asyncio.get_running_loop()
        t_next = loop.time()
        for i in range(start, args.count):
            link.publish_telemetry(Kind.ELEVATOR, device_of(i, args.devices),
                                   message(i, args.devices, args.base_ts, args.rate, jump))
            ledger.write(f"{i}\n")  # after the outbox commit: the ledger never claims more than was kept
            t_next += period
            delay = t_next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 50 == 0:
                await asyncio.sleep(0)
        print("published", flush=True)
        await link.flush()
        print("flushed", flush=True)
        await asyncio.Event().wait()  # stay connected until the suite stops us
    finally:
        ledger.close()
        await link.stop(timeout=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
