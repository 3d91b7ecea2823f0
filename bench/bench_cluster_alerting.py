"""What replicating alerting's database costs in a cluster (vigil.cluster_alerting): one snapshot, by database size.

Fills a real alerting stage (``AlertingService``, its SQLite store) with N alerts that fired and
resolved (each with its audit events and two notifications in the outbox), then measures one
snapshot as the holder takes it: ``serialize`` + zlib level 1 on a reading connection (CPU ms), and
writing it to a JetStream KV bucket on one local nats-server (R1; an R3 cluster adds its replication
round trip), chunks plus the fenced head update (wall ms). Also the sent-notification record: one KV
get before and one put after each send (wall ms per notification).

Run: .venv/bin/python bench/bench_cluster_alerting.py [--alerts 100,1000,10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, transition_topic
from broker.mosquitto import free_port
from broker.mqtt import Message
from broker.nats_server import NatsNode, NatsNodeProcess
from vigil.cluster_alerting import DB_NAME, DatabaseSnapshots, alerting_buckets
from vigil.config import parse_config


class _Quiet:
    def subscribe(self, *_: Any, **__: Any) -> None:
        pass

    def publish_nowait(self, *_: Any, **__: Any) -> None:
        pass


def _service(state: Path) -> AlertingService:
    cfg = parse_config({"node": "bench", "services": ["alerting"], "alerting": {
        "locale": "en", "receivers": [{"name": "duty", "urls": ["json://127.0.0.1:9/duty"]}], "people": [],
        "escalation_policies": [], "inhibit_rules": [], "api": {"enabled": False}, "reopen_window_s": 0,
        "storm": {"max_per_minute": 1_000_000, "digest_s": 60},
        "route": {"receivers": ["duty"], "group_by": ["..."], "group_wait_s": 0, "group_interval_s": 0,
                  "repeat_interval_s": 86400, "send_resolved": True}}})
    return AlertingService(cfg.alerting, mqtt=_Quiet(), ingest=None, state_dir=state)  # type: ignore[arg-type]


def _fill(service: AlertingService, alerts: int) -> None:
    start = datetime.now(UTC) - timedelta(days=1)
    batch: list[Message] = []
    for i in range(alerts):
        t0 = start + timedelta(seconds=i)
        for status, ts in (("firing", t0), ("resolved", t0 + timedelta(milliseconds=500))):
            t = Transition(ts=ts, fingerprint=f"elevator/e{i}/level", rule="level_high", status=status,  # type: ignore[arg-type]
                           severity=Severity.MAJOR, kind=Kind.ELEVATOR, device_id=f"e{i}",
                           summary=f"液位偏高 e{i}", summary_en=f"level high e{i}", values={"level": 60.0},
                           started_at=t0)
            batch.append(Message(transition_topic(t.kind, t.device_id), encode(t), 1, False, time.time()))
        if len(batch) >= 400:
            service.on_transitions(batch[:200])
            service.on_transitions(batch[200:])
            batch = []
    if batch:
        service.on_transitions(batch)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", default="100,1000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-alerting-"))
    store = tmp / "nats" / "js"
    spec = NatsNode("solo", "127.0.0.1", free_port(), free_port(), free_port(), store)
    node = NatsNodeProcess(spec, f"server_name: solo\nlisten: 127.0.0.1:{spec.client_port}\nmax_payload: 8MB\n"
                                 f'jetstream {{\n  store_dir: "{store}"\n}}\n'
                                 f"mqtt {{\n  listen: 127.0.0.1:{spec.mqtt_port}\n}}\n")
    node.start()
    node.wait_listening()
    import nats

    nc = await nats.connect(spec.url)
    js = nc.jetstream(timeout=10)
    try:
        snaps_kv, sent_kv = await alerting_buckets(js, 1)
        print(f"load average {os.getloadavg()[0]:.2f}; one nats-server, R1 KV")
        print(f"{'alerts':>8} {'db KB':>8} {'zlib KB':>8} {'encode CPU ms':>14} {'KV write ms':>12}")
        for n in [int(x) for x in args.alerts.split(",")]:
            state = tmp / f"a{n}"
            service = _service(state)
            _fill(service, n)
            service.store.commit()
            snaps = DatabaseSnapshots(snaps_kv, f"bench{n}")
            await snaps.load()  # take over the head from the previous size's run (fencing)
            snaps.open(state / DB_NAME)
            cpu, wall = [], []
            for _ in range(args.repeat):
                c0 = time.process_time()
                blob, raw = snaps._image()
                cpu.append((time.process_time() - c0) * 1000)
                w0 = time.perf_counter()
                await snaps.save(1)
                wall.append((time.perf_counter() - w0) * 1000)
            print(f"{n:>8} {raw / 1024:>8.0f} {len(blob) / 1024:>8.0f} {statistics.median(cpu):>14.1f} "
                  f"{statistics.median(wall):>12.1f}")
            snaps.close()
            service.close()
        lat = []
        for i in range(200):
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                await sent_kv.get(f"n.bench{i}")
            await sent_kv.put(f"n.bench{i}", b"{}")
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        print(f"sent record (get + put) per notification: p50 {lat[100]:.2f} ms, p99 {lat[197]:.2f} ms")
    finally:
        await nc.close()
        node.stop()


if __name__ == "__main__":
    asyncio.run(main())
