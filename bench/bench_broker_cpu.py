"""Mosquitto's CPU (and, with ``--strace``, its system calls) per QoS 1 message on the platform's path.

bench/loadgen.py publishes elevator telemetry to a private Mosquitto (the benchmark's layout); one
``MqttClient`` subscribes as the platform does (QoS 1, persistent session, PUBACK after handling).
Mosquitto's CPU comes from /proc; ``--strace`` attaches ``strace -c`` to it for the run (which slows
it down: use it for the counts, not the CPU figure). Prints figures; asserts nothing.

Run: .venv/bin/python bench/bench_broker_cpu.py [--devices 1000] [--seconds 5] [--inflight 1000] [--strace]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import run
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.mqtt import Message, MqttClient


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000, help="elevators at 10 Hz each")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--inflight", type=int, default=1000, help="Mosquitto max_inflight_messages")
    ap.add_argument("--strace", action="store_true", help="count Mosquitto's system calls (strace -c)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        layout = BrokerLayout(data_dir=Path(tmp) / "mosquitto", port=free_port(), max_inflight_messages=args.inflight)
        with MosquittoProcess(layout) as broker:
            assert broker.proc is not None
            received = [0]

            def count(batch: list[Message]) -> None:
                received[0] += len(batch)

            async with MqttClient(broker.url, "platform-like") as sub:
                sub.subscribe("vigil/v1/+/+/+", count)
                await asyncio.sleep(0.5)
                pid = broker.proc.pid
                spy = None
                if args.strace:
                    spy = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(Path(tmp) / "strace.txt")],
                                           stderr=subprocess.DEVNULL)
                    await asyncio.sleep(0.5)
                c0 = cpu_seconds(pid)
                result = await asyncio.to_thread(run, broker.url, "el0-", args.devices, 10.0, args.seconds)
                while received[0] < result.published:
                    await asyncio.sleep(0.05)
                c1 = cpu_seconds(pid)
                calls: dict[str, int] = {}
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(10)
                    calls = strace_calls((Path(tmp) / "strace.txt").read_text())
    n = result.published
    print(f"{n:,} messages, max_inflight_messages {args.inflight}: mosquitto {(c1 - c0) / n * 1e6:.1f} µs of CPU per message"
          f"{' (under strace)' if args.strace else ''}; load average {os.getloadavg()[0]:.2f}")
    if calls:
        print("system calls per message: " + ", ".join(
            f"{name} {count / n:.2f}" for name, count in sorted(calls.items(), key=lambda kv: -kv[1]) if count / n >= 0.01))


def strace_calls(summary: str) -> dict[str, int]:
    """syscall -> calls, from ``strace -c`` output."""
    out: dict[str, int] = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            out[parts[-1]] = int(parts[3])
    return out


if __name__ == "__main__":
    asyncio.run(main())
