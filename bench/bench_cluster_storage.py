"""What the storage stage costs a cluster instance (vigil/cluster_storage.py): CPU per message, rules alone vs rules + storage.

A 3-node NATS JetStream cluster (R3, P partitions) is filled NATS-native with MESSAGES elevator
telemetry messages of DEVICES devices; then one `vigil run` instance drains it twice from scratch:
``services: [rules]``, then ``[rules, storage]`` writing to a local InfluxDB 1.6 (a fresh database).
Reported per run: messages per second from "every partition leased" to "every checkpoint covers its
stream" (and, with storage, ``stored_seq`` too: every point written), and the instance's CPU
microseconds per message (from /proc), with the load average (other work shares the 2 cores).

Run: .venv/bin/python bench/bench_cluster_storage.py [--messages 40000] [--devices 400] [--partitions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.contracts import Telemetry, encode  # noqa: E402
from broker.nats_server import local_cluster  # noqa: E402
from broker.nats_transport import CHECKPOINTS_BUCKET, ensure_layout, partition_stream  # noqa: E402
from storage.localservers import InfluxdProcess  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fill(servers: list[str], partitions: int, messages: int, devices: int) -> dict[int, int]:
    """Publish the fleet's messages (JetStream, 500 in flight); returns each partition's last sequence."""
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=30)
    for _ in range(60):
        try:
            await ensure_layout(js, partitions, 3, max_age_s=3600, duplicate_window_s=600)
            break
        except Exception:
            await asyncio.sleep(1)
    base = time.time() - 3600
    for chunk in range(0, messages, 500):
        sends = []
        for i in range(chunk, min(messages, chunk + 500)):
            payload = encode(Telemetry(ts=datetime.fromtimestamp(base + i * 0.01, UTC), seq=i, metrics={
                "speed_mps": 1.0, "floor": float(i % 20), "door_open": 0.0, "load_kg": 300.0, "temperature_c": 25.0}))
            sends.append(js.publish(f"vigil.v1.elevator.elev-b{i % devices:05d}.telemetry", payload))
        await asyncio.gather(*sends)
    ends = {p: (await js.stream_info(partition_stream(p))).state.last_seq for p in range(partitions)}
    await nc.close()
    return ends


async def state(servers: list[str], partitions: int, ends: dict[int, int], storage: bool) -> tuple[bool, bool]:
    """(every partition leased, every checkpoint at its stream's end, points written too with storage)."""
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=10)
    try:
        leases = await js.key_value("vigil_leases")
        cps = await js.key_value(CHECKPOINTS_BUCKET)
        leased = done = True
        for p in range(partitions):
            try:
                await leases.get(f"p{p}")
            except Exception:
                leased = False
            try:
                doc = json.loads((await cps.get(f"p{p}")).value)
                done = done and doc["seq"] >= ends[p] and (not storage or doc.get("stored_seq", 0) >= ends[p])
            except Exception:
                done = False
        return leased, done
    finally:
        await nc.close()


async def reset(servers: list[str], partitions: int) -> None:
    """Forget every checkpoint and consumer, so the next instance drains from the start."""
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=10)
    cps = await js.key_value(CHECKPOINTS_BUCKET)
    for p in range(partitions):
        try:
            await cps.purge(f"p{p}")
            await js.delete_consumer(partition_stream(p), f"rules-p{p}")
        except Exception:
            pass
    await nc.close()


def drain(tmp: Path, servers: list[str], args: argparse.Namespace, ends: dict[int, int], storage: str | None,
          run: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node": f"bench-{run}", "state_dir": str(tmp / "state"), "log_level": "warning",
        "services": ["rules", "storage"] if storage else ["rules"],
        "rules": {"packs": ["elevator"], "tick_interval_s": 1.0, "reload_interval_s": 0},
        "cluster": {"servers": servers, "partitions": args.partitions, "lease_ttl_s": 6, "checkpoint_interval_s": 2.0,
                    "fetch_batch": 1000, "stream_max_age_s": 3600},
        "health": {"enabled": False},
    }
    if storage:
        cfg["storage"] = {"backend": "influxdb-v1", "influxdb_v1": {"url": storage, "database": f"bench{run}"}}
    path = tmp / f"bench-{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with open(tmp / f"bench-{run}.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vigil.cli", "run", "--config", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        while not asyncio.run(state(servers, args.partitions, ends, bool(storage)))[0]:
            time.sleep(0.2)
        start, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
        while not asyncio.run(state(servers, args.partitions, ends, bool(storage)))[1]:
            time.sleep(0.2)
        wall, cpu = time.perf_counter() - start, cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    total = sum(ends.values())
    return {"services": cfg["services"], "messages": total, "drain_msg_s": round(total / wall),
            "cpu_us_per_msg": round(cpu / total * 1e6, 1), "load_avg": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-cluster-storage-"))
    nodes = local_cluster(tmp / "nats", args.partitions)
    influx = InfluxdProcess(tmp / "influxdb")
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_listening()
        influx.start()
        servers = [n.node.url for n in nodes]
        ends = asyncio.run(fill(servers, args.partitions, args.messages, args.devices))
        for run, storage in enumerate([None, influx.url]):
            asyncio.run(reset(servers, args.partitions))
            print(json.dumps(drain(tmp, servers, args, ends, storage, run)), flush=True)
    finally:
        for n in nodes:
            n.stop()
        influx.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
