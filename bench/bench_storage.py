"""Storage-side benchmark: handler cost per message, drain rate and a paced run into InfluxDB 1.6.

Prints figures; asserts nothing. Starts its own influxd (Debian's 1.6) in a temporary folder.

    .venv/bin/python bench/bench_storage.py                # all three parts
    .venv/bin/python bench/bench_storage.py --part handler
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from broker.contracts import (
    Channel,
    DeviceMessage,
    Kind,
    Telemetry,
    decode_device_message,
    device_topic,
    encode,
)
from broker.ingest import DeviceIngest
from broker.mqtt import MqttClient
from broker.registry import Device, DeviceRegistry, Site
from storage.config import InfluxV1Config, OutboxConfig, StorageConfig, WriterConfig
from storage.localservers import InfluxdProcess
from storage.query import influx_count
from storage.service import StorageService

T0 = datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC)


def elevator_payload(n: int, devices: int) -> tuple[str, bytes]:
    """A realistic elevator telemetry message (11 catalogue metrics) as published by a device."""
    d = n % devices
    metrics = {
        "speed_mps": round((n % 17) * 0.1, 2), "position_m": round((n % 90) * 0.5, 1), "floor": n % 30,
        "direction": "up", "door": "closed", "door_zone": n % 5 == 0, "occupancy": n % 8, "load_kg": 75.0 * (n % 8),
        "power": "mains", "mode": "normal", "safety_circuit_ok": True,
    }
    ts = T0 + timedelta(milliseconds=n * 7)
    msg = Telemetry(ts=ts, seq=n // devices, metrics=metrics)  # type: ignore[arg-type]
    return device_topic(Kind.ELEVATOR, f"el-{d:04d}", Channel.TELEMETRY), encode(msg)


def registry(devices: int) -> DeviceRegistry:
    return DeviceRegistry.build([Site(id="tower-a")], [
        Device(id=f"el-{d:04d}", kind=Kind.ELEVATOR, site="tower-a") for d in range(devices)], [])


def decoded(count: int, devices: int) -> list[DeviceMessage]:
    return [decode_device_message(*elevator_payload(n, devices)) for n in range(count)]


def make_service(cfg: StorageConfig, state: Path, devices: int) -> StorageService:
    mqtt = MqttClient("mqtt://127.0.0.1:1", "bench-storage")  # never connected: handlers only
    service = StorageService(cfg, mqtt=mqtt, ingest=DeviceIngest(mqtt), registry=registry(devices), state_dir=state)
    service.attach()
    return service


def bench_handler(tmp: Path, count: int, devices: int) -> None:
    """Cost of on_device_messages (line protocol + outbox append) per message, by batch size and fsync."""
    raw = [elevator_payload(n, devices) for n in range(count)]
    t = time.perf_counter()
    msgs = [decode_device_message(topic, payload) for topic, payload in raw]
    decode_us = (time.perf_counter() - t) / count * 1e6
    print(f"ingest decode (contracts, for reference): {decode_us:.1f} us/msg, payload {len(raw[0][1])} B")
    for fsync in ("interval", "batch"):
        for batch in (1, 10, 100):
            # One fdatasync per message is slow: keep that run short.
            n = min(count, 2000) if fsync == "batch" and batch == 1 else count
            cfg = StorageConfig(outbox=OutboxConfig(fsync=fsync))  # type: ignore[arg-type]
            service = make_service(cfg, tmp / f"h-{fsync}-{batch}", devices)
            samples = []
            for rep in range(3):
                t = time.perf_counter()
                for i in range(0, n, batch):
                    service.on_device_messages(msgs[i:i + batch])
                samples.append((time.perf_counter() - t) / n * 1e6)
                del rep
            service.close()
            print(f"handler fsync={fsync:8s} batch={batch:3d}: {statistics.median(samples):7.1f} us/msg "
                  f"(median of 3 x {n} msgs; min {min(samples):.1f})")


async def bench_drain(tmp: Path, count: int, devices: int, batch_points: int) -> None:
    """Prefill the outbox, then drain it into a fresh influxd as fast as it goes."""
    influx = InfluxdProcess(tmp / "influx-drain")
    influx.start()
    try:
        cfg = StorageConfig(backend="influxdb-v1", writer=WriterConfig(batch_points=batch_points),
                            influxdb_v1=InfluxV1Config(url=influx.url, database="bench"),
                            outbox=OutboxConfig(fsync="off"))
        service = make_service(cfg, tmp / "drain", devices)
        msgs = decoded(count, devices)
        for i in range(0, count, 100):
            service.on_device_messages(msgs[i:i + 100])
        backend = service.backend
        await backend.open()
        t = time.perf_counter()
        await service.drainer.drain_all()
        elapsed = time.perf_counter() - t
        c = service.drainer.counters
        stored = await asyncio.to_thread(influx_count, influx.url, "bench", "telemetry_elevator", "seq")
        print(f"drain to influxd 1.6: {count} points in {elapsed:.2f} s = {count / elapsed:,.0f} points/s "
              f"({c['requests']} requests of {batch_points}, {c['bytes_sent'] / c['batches'] / 1024:.0f} KiB "
              f"before gzip, retries {c['retries']}); stored {stored}")
        await backend.close()
        service.close()
    finally:
        influx.stop()


async def bench_paced(tmp: Path, rate: int, seconds: float, devices: int, outage: float = 0.0) -> None:
    """Handlers fed at ``rate`` msg/s (in batches every 10 ms) while the drainer writes to influxd.

    With ``outage`` > 0, influxd is killed (SIGKILL) a third of the way in and started again
    ``outage`` seconds later.
    """
    influx = InfluxdProcess(tmp / "influx-paced")
    influx.start()
    try:
        cfg = StorageConfig(backend="influxdb-v1", influxdb_v1=InfluxV1Config(url=influx.url, database="bench"))
        service = make_service(cfg, tmp / "paced", devices)
        total = int(rate * seconds)
        msgs = decoded(total, devices)
        per_tick = max(1, rate // 100)
        task = asyncio.create_task(service.run())
        max_pending = 0
        handler_time = 0.0
        down_at = int(total / 3) if outage > 0 else -1
        up_at = down_at + int(outage * rate) if outage > 0 else -1
        start = time.perf_counter()
        for i in range(0, total, per_tick):
            if i == down_at:
                influx.kill()
            elif i == up_at:
                await asyncio.to_thread(influx.start)
            h = time.perf_counter()
            service.on_device_messages(msgs[i:i + per_tick])
            handler_time += time.perf_counter() - h
            max_pending = max(max_pending, service.outbox.pending_lines)
            due = start + (i + per_tick) / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        fed = time.perf_counter() - start
        while service.outbox.pending_lines:
            await asyncio.sleep(0.01)
        done = time.perf_counter() - start
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stored = await asyncio.to_thread(influx_count, influx.url, "bench", "telemetry_elevator", "seq")
        s = service.stats()
        what = f" with influxd killed for {outage:.0f} s" if outage > 0 else ""
        print(f"paced {rate:,} msg/s for {seconds:.0f} s from {devices} devices{what}: fed in {fed:.2f} s, all written "
              f"after {done:.2f} s; stored {stored}/{total} (lost {total - stored}); handler {handler_time / total * 1e6:.1f}"
              f" us/msg; max outbox backlog {max_pending} lines; {s['writer_requests']:.0f} requests, "
              f"{s['writer_retries']:.0f} retries, {s['outbox_fsyncs']:.0f} fsyncs")
    finally:
        influx.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", choices=["handler", "drain", "paced", "all"], default="all")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--drain-points", type=int, default=200_000)
    ap.add_argument("--batch-points", type=int, default=5000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--outage", type=float, default=0.0, help="kill influxd for this many seconds mid-run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-storage-") as d:
        tmp = Path(d)
        if args.part in ("handler", "all"):
            bench_handler(tmp, args.messages, args.devices)
        if args.part in ("drain", "all"):
            asyncio.run(bench_drain(tmp, args.drain_points, args.devices, args.batch_points))
        if args.part in ("paced", "all"):
            asyncio.run(bench_paced(tmp, args.rate, args.seconds, args.devices, args.outage))


if __name__ == "__main__":
    main()
