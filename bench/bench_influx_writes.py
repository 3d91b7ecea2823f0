"""InfluxDB 1.6's CPU per point for the platform's write settings: batch size, gzip, Go's GC target.

Each setting gets a fresh private influxd (``storage.localservers.InfluxdProcess``) and the same
elevator telemetry lines (the bench fleet's payloads through ``LineEncoder``), written one request at
a time as the drainer does; influxd's CPU (from /proc) is reported per point for the writes and for
a settle period after them (snapshots, compactions). Prints figures; asserts nothing.

Run: .venv/bin/python bench/bench_influx_writes.py [--rounds 300] [--settings before,after,before,after]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import templates
from broker.contracts import Channel, Kind, decode_device_payload, parse_device_topic
from storage.lineproto import LineEncoder
from storage.localservers import InfluxdProcess


@dataclass(frozen=True)
class Setting:
    """One way of writing: points per request, gzip level (0: none), influxd's environment."""

    batch: int
    gzip_level: int
    env: dict[str, str] = field(default_factory=dict)


SETTINGS = {
    "before": Setting(5000, 1, {"GOGC": "100"}),
    "after": Setting(20_000, 0, {"GOGC": InfluxdProcess.GOGC}),
    "b20k-gzip": Setting(20_000, 1, {"GOGC": "100"}),
    "b5k-plain": Setting(5000, 0, {"GOGC": "100"}),
    "b5k-gogc": Setting(5000, 1, {"GOGC": InfluxdProcess.GOGC}),
    "b2k-after": Setting(2000, 0, {"GOGC": InfluxdProcess.GOGC}),
    "b10k-after": Setting(10_000, 0, {"GOGC": InfluxdProcess.GOGC}),
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def elevator_lines(devices: int, rounds: int) -> list[bytes]:
    """``rounds`` messages of each of ``devices`` elevators, 100 ms apart, as line protocol."""
    tmpl = templates("el0-", devices, 4, 10.0)
    enc = LineEncoder()
    t0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    topics = [parse_device_topic(f"vigil/v1/elevator/el0-{i + 1:05d}/{Channel.TELEMETRY.value}") for i in range(devices)]
    out = []
    for k in range(rounds):
        ts = (t0 + timedelta(milliseconds=100 * k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        for i in range(devices):
            dm = decode_device_payload(topics[i], tmpl[i][k % 4] % (ts, k + 1))
            line = enc.telemetry(Kind.ELEVATOR, dm.device_id, None, dm.payload)  # type: ignore[arg-type]
            assert line is not None
            out.append(line.encode())
    return out


def run(name: str, setting: Setting, lines: list[bytes], settle: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = InfluxdProcess(Path(tmp))
        saved = {k: os.environ.get(k) for k in setting.env}
        os.environ.update(setting.env)  # the caller's GOGC wins over InfluxdProcess.GOGC
        try:
            server.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            server.create_database("vigil")
            assert server.proc is not None
            pid = server.proc.pid
            c0, t0 = cpu_seconds(pid), time.monotonic()
            url = f"{server.url}/write?db=vigil&precision=ns"
            for i in range(0, len(lines), setting.batch):
                body = b"\n".join(lines[i:i + setting.batch])
                headers = {"Content-Type": "text/plain; charset=utf-8"}
                if setting.gzip_level:
                    comp = zlib.compressobj(setting.gzip_level, zlib.DEFLATED, 31)
                    body = comp.compress(body) + comp.flush()
                    headers["Content-Encoding"] = "gzip"
                with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as r:
                    r.read()
            c1, t1 = cpu_seconds(pid), time.monotonic()
            time.sleep(settle)
            c2 = cpu_seconds(pid)
        finally:
            server.stop()
    n = len(lines)
    print(f"{name:10} batch {setting.batch:>6,} gzip {setting.gzip_level} GOGC {setting.env.get('GOGC', '-'):>4}: "
          f"writes {(c1 - c0) / n * 1e6:5.1f} µs/point ({n / (t1 - t0):,.0f} points/s), settle {(c2 - c1) / n * 1e6:4.1f}, "
          f"total {(c2 - c0) / n * 1e6:5.1f} µs of influxd CPU per point; load average {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=300, help="messages per device (points = devices x rounds)")
    ap.add_argument("--settings", default="before,after,before,after", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds of influxd CPU counted after the writes")
    args = ap.parse_args()
    lines = elevator_lines(args.devices, args.rounds)
    for name in args.settings.split(","):
        run(name, SETTINGS[name], lines, args.settle)


if __name__ == "__main__":
    main()
