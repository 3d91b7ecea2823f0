"""JT/T 809 gateway benchmark: positions decoded and published per core.

Usage::

    .venv/bin/python bench/bench_jt809.py [--positions 100000] [--skip-mqtt]

Prints one figure per line and a JSON summary:

1. core: ``Jt809Session.feed`` on 0x1202 real-time positions (split, unescape, CRC, envelope,
   plate lookup, GNSS block, contract JSON), plain and with the body cipher; positions per CPU second.
2. core-batch: the same with 0x1203 re-sent batches of 5 positions.
3. mqtt: one lower platform over loopback TCP into the gateway (the shared JT/T 808 server) with
   Vigil's ``MqttClient`` publishing QoS 1 into a real Mosquitto started in a temp dir; a second
   client subscribes and counts. Positions per wall second until the subscriber had them all, and
   per CPU second of this process (gateway, sender and subscriber share it: a lower bound per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.jt809.codec import Jt809Keys, encode_frame
from edge.jt809.directory import LowerPlatform, StaticPlatforms, StaticVehicles
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    MsgId,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
)
from edge.jt809.session import Jt809Limits, Jt809Platform

ACCESS = 20261203
VEHICLES = 500
KEYS = Jt809Keys(10_000_000, 20_000_000, 30_000_000)
START = __import__("datetime").datetime(2026, 12, 3, 8, 0, tzinfo=CHINA)


def plate(i: int) -> str:
    return f"浙A{i:05d}"


def make_platform(keys: Jt809Keys | None) -> Jt809Platform:
    lower = LowerPlatform(ACCESS, 1, "pw", "bench", keys=keys)
    return Jt809Platform(StaticPlatforms({ACCESS: lower}),
                         StaticVehicles.of({(plate(i), 2): f"veh-{i:05d}" for i in range(VEHICLES)}),
                         limits=Jt809Limits(per_platform_burst=1e9, per_address_burst=1e9))


def gnss(k: int) -> GnssData:
    return GnssData(False, START + timedelta(seconds=k // VEHICLES * 30), 120_150_000 + k % 1000, 30_270_000,
                    60, 60, 1000 + k, 90, 10, 3, 0)


def frames(n: int, keys: Jt809Keys | None, *, batch: bool = False) -> list[bytes]:
    out = [encode_frame(MsgId.UP_CONNECT_REQ, 1, ACCESS, build_login(LoginRequest(1, "pw", "", 0)), keys=keys,
                        key=99)]
    step = 5 if batch else 1
    for k in range(0, n, step):
        if batch:
            data = build_history([gnss(k + j) for j in range(5)])
            body = build_envelope(plate((k // 5) % VEHICLES), 2, DataType.UP_EXG_MSG_HISTORY_LOCATION, data)
        else:
            body = build_envelope(plate(k % VEHICLES), 2, DataType.UP_EXG_MSG_REAL_LOCATION, build_gnss(gnss(k)))
        out.append(encode_frame(MsgId.UP_EXG_MSG, k + 2, ACCESS, body, keys=keys, key=k * 7 + 1))
    return out


def bench_core(n: int, keys: Jt809Keys | None, *, batch: bool = False) -> float:
    data = frames(n, keys, batch=batch)
    chunks = [b"".join(data[i:i + 64]) for i in range(0, len(data), 64)]
    platform = make_platform(keys)
    session = platform.new_session("10.0.0.1:1")
    cpu = time.process_time()
    for i, chunk in enumerate(chunks):
        session.feed(chunk, float(i))
    elapsed = time.process_time() - cpu
    assert platform.counters.telemetry == n, platform.counters.snapshot()
    return n / elapsed


async def bench_mqtt(n: int) -> dict[str, float]:
    from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
    from broker.mqtt import Message, MqttClient
    from edge.jt809.gateway import Jt809Gateway
    from edge.runtime.server import GatewayLimits

    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoProcess(BrokerLayout(data_dir=Path(tmp) / "m", port=free_port()))
        broker.start()
        try:
            received = 0
            done = asyncio.Event()

            def count(batch: list[Message]) -> None:
                nonlocal received
                received += len(batch)
                if received >= n:
                    done.set()

            async with MqttClient(broker.url, "bench-809-sub", clean_start=True) as sub, \
                    MqttClient(broker.url, "bench-809-gw", clean_start=True) as mqtt:
                sub.subscribe("vigil/v1/vehicle/+/telemetry", count)
                await asyncio.sleep(0.3)
                gw = Jt809Gateway(make_platform(None), mqtt.publish, limits=GatewayLimits(queue_limit=10_000))
                host, port = await gw.start("127.0.0.1", 0)
                data = frames(n, None)
                _, writer = await asyncio.open_connection(host, port)
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(0, len(data), 256):
                    writer.write(b"".join(data[i:i + 256]))
                    await writer.drain()
                async with asyncio.timeout(600):
                    await done.wait()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                writer.close()
                await gw.stop()
                return {"mqtt_qos1_wall": n / wall, "mqtt_qos1_cpu": n / cpu, "received": float(received)}
        finally:
            broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positions", type=int, default=100_000)
    p.add_argument("--skip-mqtt", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {}
    results["core_plain"] = bench_core(args.positions, None)
    print(f"core, 0x1202 plain: {results['core_plain']:,.0f} positions/CPU s", flush=True)
    results["core_encrypted"] = bench_core(args.positions, KEYS)
    print(f"core, 0x1202 encrypted: {results['core_encrypted']:,.0f} positions/CPU s", flush=True)
    results["core_batch"] = bench_core(args.positions, None, batch=True)
    print(f"core, 0x1203 batches of 5: {results['core_batch']:,.0f} positions/CPU s", flush=True)
    if not args.skip_mqtt:
        mq = asyncio.run(bench_mqtt(args.positions))
        results.update(mq)
        print(f"gateway + MQTT QoS 1 into Mosquitto: {mq['mqtt_qos1_wall']:,.0f} positions/s wall, "
              f"{mq['mqtt_qos1_cpu']:,.0f} per CPU s of the process", flush=True)
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
