"""Channel isolation: delivery time on a healthy channel while other channels hang.

Real Apprise ``json://`` to a local aiohttp server: ``--hung`` channels answer after ``--hang-s``
seconds (a stalled webhook), one healthy channel answers at once. Alerts go to every channel at
``--rate`` per second for ``--seconds``; prints the healthy channel's delivery time (ask -> done)
and what became of the hung channels' messages.

    .venv/bin/python bench/bench_channels.py [--hung 4] [--hang-s 30] [--rate 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from alerting.config import Retry
from alerting.sender import AppriseSender, Message
from broker.mosquitto import free_port


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hung", type=int, default=4)
    ap.add_argument("--hang-s", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--timeout-s", type=float, default=15.0)
    args = ap.parse_args()

    async def on_post(request: web.Request) -> web.Response:
        if request.path.startswith("/hung"):
            await asyncio.sleep(args.hang_s)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", on_post)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    healthy = f"json://127.0.0.1:{port}/duty"
    hung = [f"json://127.0.0.1:{port}/hung{i}" for i in range(args.hung)]
    # As the alerting service does: Apprise's plugins are loaded at start, not on the first alert.
    sender = AppriseSender(Retry(attempts=3, backoff_s=0.5, backoff_max_s=30, timeout_s=args.timeout_s), threads=8,
                           urls=[healthy, *hung])
    healthy_ms: list[float] = []
    tasks: list[asyncio.Task[object]] = []

    async def to_healthy(n: int) -> None:
        t0 = time.perf_counter()
        out = await sender.deliver([healthy], Message(f"alert {n}", "body"))
        if out.ok:
            healthy_ms.append((time.perf_counter() - t0) * 1000)

    n = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for url in hung:
            tasks.append(asyncio.create_task(sender.deliver([url], Message(f"alert {n}", "body"))))
        tasks.append(asyncio.create_task(to_healthy(n)))
        n += 1
        await asyncio.sleep(1.0 / args.rate)
    await asyncio.gather(*[t for t in tasks if t.get_name()], return_exceptions=True)
    lat = sorted(healthy_ms)
    print(f"{args.hung} channels hanging {args.hang_s:.0f} s, {n} alerts to each channel at {args.rate:.0f}/s:")
    print(f"  healthy channel: {len(lat)}/{n} delivered, p50 {lat[len(lat) // 2]:.0f} ms, "
          f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.0f} ms, max {lat[-1]:.0f} ms")
    print(f"  sender counters: {dict(sender.counters)}")
    sender.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
