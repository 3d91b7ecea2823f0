"""Modbus poller benchmark: tags polled per second per core against a real pymodbus TCP server.

Prints figures; asserts nothing. The server runs in another process (a pymodbus TCP server with
a register image like a gas detection controller or DCS gateway: uint16 and float32 tags); this
process runs ``--devices`` pollers (one TCP connection each) polling back to back. Reported:
tags per second of wall time, and tags per CPU-second of this process (the poller's cost per
core). Parts:
  1. poll:    DevicePoller.poll_once (block reads, decoding, quality)
  2. gateway: ModbusGateway.poll_device (the same plus per-asset Telemetry JSON and limit checks,
              into a null sink: the MQTT side is measured by bench_mqtt / bench_elevator)
  3. decode:  decode_tag alone on register images (no I/O), for reference

Run: .venv/bin/python bench/bench_modbus.py [--tags 1000] [--devices 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.mosquitto import free_port  # noqa: E402
from edge.modbus.gateway import ModbusGateway  # noqa: E402
from edge.modbus.poller import DevicePoller  # noqa: E402
from edge.modbus.tagmap import TagMap, decode_tag, encode_value, plan_blocks  # noqa: E402


def tag_map(port: int, tags: int, devices: int, assets_per_device: int) -> dict[str, Any]:
    """Half uint16 (x0.1) and half float32 tags, contiguous, spread over assets."""
    out = []
    for d in range(devices):
        rows = []
        addr = 0
        for i in range(tags):
            asset = f"a{d}-{i % assets_per_device}"
            if i % 2 == 0:
                rows.append({"asset": asset, "name": f"t{i}", "address": addr, "type": "uint16", "scale": 0.1})
                addr += 1
            else:
                rows.append({"asset": asset, "name": f"t{i}", "address": addr, "type": "float32"})
                addr += 2
        out.append({"name": f"dev{d}", "host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 2.0,
                    "max_block": 120, "tags": rows})
    return {"gateway": "bench", "devices": out}


def registers(tags: int) -> list[int]:
    regs: list[int] = []
    for i in range(tags):
        regs += [i % 1000] if i % 2 == 0 else encode_value("float32", i * 0.5)
    return regs


def serve(port: int, tags: int, ready: Any) -> None:
    """The server process: one pymodbus TCP server with the register image."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    regs = registers(tags)

    async def main() -> None:
        device = SimDevice(id=1, simdata=([SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                          [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                          [SimData(0, values=regs, datatype=DataType.REGISTERS)],
                                          [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)]))
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def run_polls(tm: TagMap, seconds: float, gateway: bool) -> tuple[int, float, float, int]:
    """(tags polled, wall seconds, CPU seconds of this process, polls that were not fully good)."""
    async def null_sink(topic: str, payload: bytes, *, retain: bool = False) -> None:
        return None

    gw = ModbusGateway(tm, null_sink)
    pollers = list(gw.pollers.values())
    for p in pollers:
        await p.poll_once()  # connect and warm up
    tags = 0
    bad = 0
    stop_at = time.perf_counter() + seconds

    async def loop(p: DevicePoller) -> None:
        nonlocal tags, bad
        while time.perf_counter() < stop_at:
            result = await (gw.poll_device(p.spec.name) if gateway else p.poll_once())
            tags += len(result.readings)
            bad += 0 if result.ok else 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(p) for p in pollers))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for p in pollers:
        await p.close()
    return tags, wall, cpu, bad


def decode_only(tm: TagMap, seconds: float) -> tuple[int, float]:
    dev = tm.devices[0]
    blocks = plan_blocks(tm.tags[dev.name], dev.max_block, dev.max_gap)
    regs = registers(len(tm.tags[dev.name]))
    images = [(b, regs[b.start:b.start + b.count]) for b in blocks]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b, values in images:
            for tag in b.tags:
                decode_tag(tag, values, b.start)
            n += len(b.tags)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=1000, help="tags per device")
    ap.add_argument("--devices", type=int, default=4, help="devices (TCP connections) polled concurrently")
    ap.add_argument("--assets", type=int, default=50, help="assets (Vigil devices) per Modbus device")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=serve, args=(port, args.tags, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("server did not start")
        tm = TagMap.from_data(tag_map(port, args.tags, args.devices, args.assets))
        reads = sum(len(plan_blocks(tm.tags[d.name], d.max_block, d.max_gap)) for d in tm.devices)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared with other jobs)")
        print(f"{args.devices} devices x {args.tags} tags (half uint16, half float32) = "
              f"{args.devices * args.tags} tags in {reads} block reads per round; server in another process")
        for label, gateway in (("poll", False), ("gateway", True)):
            tags, wall, cpu, bad = asyncio.run(run_polls(tm, args.seconds, gateway))
            print(f"{label:8s} {tags / wall:10,.0f} tags/s wall, {tags / max(cpu, 1e-9):10,.0f} tags per CPU-second "
                  f"of the poller process ({tags:,} tags, {wall:.1f} s, CPU {cpu:.1f} s, {bad} incomplete polls)")
        n, secs = decode_only(tm, min(args.seconds, 3.0))
        print(f"decode   {n / secs:10,.0f} tags/s (decode_tag alone, no I/O)")
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
