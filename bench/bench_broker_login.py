"""Broker CPU per login against the PBKDF2 iteration count of the password hashes.

Starts a real Mosquitto from a registry whose hashes use each iteration count, logs in N times
in a row with mosquitto_pub and prints the mean wall time per connect-publish-disconnect and the
broker's CPU time per login (from /proc). Run: ``.venv/bin/python bench/bench_broker_login.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.registry import DeviceRegistry

REG = DeviceRegistry.from_data({"devices": [{"id": "elev-1", "kind": "elevator", "password": "bench-pw"}]})


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(iterations: int, logins: int) -> tuple[float, float]:
    """Mean wall seconds per login and broker CPU seconds per login."""
    with tempfile.TemporaryDirectory() as tmp:
        layout = BrokerLayout(data_dir=Path(tmp), port=free_port(), password_iterations=iterations)
        with MosquittoProcess(layout, REG) as broker:
            assert broker.proc is not None
            cpu0, t0 = _cpu_s(broker.proc.pid), time.perf_counter()
            for _ in range(logins):
                subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-u", "elev-1", "-P", "bench-pw", "-q", "1",
                                "-t", "vigil/v1/elevator/elev-1/telemetry", "-m", "{}"], check=True, timeout=30)
            wall, cpu = time.perf_counter() - t0, _cpu_s(broker.proc.pid) - cpu0
    return wall / logins, cpu / logins


def main() -> None:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--logins", type=int, default=20)
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {args.logins} logins per count")
    for iterations in (101, 10_000, 100_000, 210_000):
        wall, cpu = measure(iterations, args.logins)
        print(f"{iterations:>8} iterations: {wall * 1000:7.1f} ms per login (wall), broker CPU {cpu * 1000:7.1f} ms "
              f"per login -> 10,000 reconnecting devices need {cpu * 10_000 / 60:5.1f} min of broker CPU")


if __name__ == "__main__":
    main()
