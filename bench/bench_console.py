"""Console benchmark: board paging/filter latency with 10,000 open alerts, and server push to 50 pages.

Starts a private Mosquitto and the platform (rules, alerting, console) in this process, feeds
10,000 firing transitions through MQTT to alerting, then measures over real HTTP:
- ``GET /api/board`` latency for the common queries (sequential, then 50 in parallel),
- push latency from publishing a transition to each of 50 connected SSE pages receiving the alert.

    .venv/bin/python bench/bench_console.py [--alerts 10000] [--pages 50] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.contracts import Kind, Severity, Transition, encode, transition_topic
from tests.support.console_stack import ConsoleStack, token_of, wait_until

SEVERITIES = [Severity.CRITICAL, Severity.MAJOR, Severity.WARNING, Severity.INFO]


def transition(i: int, prefix: str = "bench") -> Transition:
    now = datetime.now(UTC)
    return Transition(ts=now, fingerprint=f"{prefix}-{i}", rule=f"bench_rule_{i % 12}", status="firing",
                      severity=SEVERITIES[i % 4], kind=Kind.ELEVATOR, device_id=f"elev-{i % 2000:05d}",
                      site=f"site-{i % 50:02d}", labels={"unit": f"unit-{i % 8}", "industry": "elevator"},
                      summary=f"压测告警 {i}", summary_en=f"bench alert {i}", source_ts=now)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    async with http.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:200]
    return (time.perf_counter() - t0) * 1000, json.loads(body)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    route = {"name": "root", "receivers": [], "group_by": ["rule", "site"], "group_wait_s": 0,
             "group_interval_s": 300, "repeat_interval_s": 86400}
    with tempfile.TemporaryDirectory() as tmp:
        async with ConsoleStack(Path(tmp), alerting_options={"route": route, "escalation_policies": [],
                                                             "rosters": []}) as st:
            assert st.device_client is not None
            t0 = time.perf_counter()
            for i in range(args.alerts):
                await st.device_client.publish(transition_topic(Kind.ELEVATOR, f"elev-{i % 2000:05d}"),
                                               encode(transition(i)))
            await st.device_client.flush()
            await wait_until(lambda: len(st.alerting.open) >= args.alerts, 300, "all alerts open", step=0.2)
            print(f"{args.alerts} open alerts loaded through MQTT in {time.perf_counter() - t0:.1f} s")

            headers = {"Authorization": f"Bearer {token_of('admin')}"}
            queries = {
                "first page (open, newest, 50)": "",
                "first page + facets": "facets=1",
                "filter site": "site=site-07",
                "filter severity + unit": "severity=critical&unit=unit-4",
                "text search": "q=告警 999",
                "sort by severity": "sort=severity",
                "deep page (offset 9950)": "offset=9950",
                "history path (status=all)": "status=all",
            }
            async with aiohttp.ClientSession(headers=headers) as http:
                console = st.console
                assert console is not None
                print(f"\nGET /api/board, {args.alerts} open alerts, 30 sequential requests each, ms "
                      f"(computed: shared cache emptied before each request; cached: repeated request):")
                print(f"  {'query':32s} {'p50':>7s} {'p95':>7s} {'max':>7s} {'cached':>7s}  total")
                for name, qs in queries.items():
                    lat, hits = [], []
                    total = 0
                    for _ in range(30):
                        console._board_cache.clear()
                        ms, body = await timed_get(http, f"{st.url}/api/board?{qs}")
                        lat.append(ms)
                        hits.append((await timed_get(http, f"{st.url}/api/board?{qs}"))[0])
                        total = body["total"]
                    print(f"  {name:32s} {statistics.median(lat):7.1f} {pct(lat, 0.95):7.1f} {max(lat):7.1f} "
                          f"{statistics.median(hits):7.1f}  {total}")
                views: list[tuple[str, Callable[[int], str]]] = [
                    ("50 different filters", lambda i: f"site=site-{i % 50:02d}&sort=severity"),
                    ("50 pages, same view", lambda i: "facets=1")]
                for label, make in views:
                    # A fresh alert invalidates the shared cache first, as a live change would.
                    await st.device_client.publish(transition_topic(Kind.ELEVATOR, "elev-00001"),
                                                   encode(transition(len(label), prefix=f"inv-{label}")))
                    await asyncio.sleep(0.3)
                    t1 = time.perf_counter()
                    par = await asyncio.gather(*(timed_get(http, f"{st.url}/api/board?{make(i)}") for i in range(50)))
                    wall = (time.perf_counter() - t1) * 1000
                    lat = [p[0] for p in par]
                    print(f"  {label} in parallel: wall {wall:.0f} ms, per request p50 "
                          f"{statistics.median(lat):.0f} ms, max {max(lat):.0f} ms")
                if st.console is not None:
                    print(f"  board queries computed {st.console.counters['board_queries']}, "
                          f"served from the shared cache {st.console.counters['board_cache_hits']}")

            # ---------------------------------------------------------------- 50 SSE pages
            received: dict[str, dict[int, float]] = {}
            ready = 0

            async def page(n: int) -> None:
                nonlocal ready
                async with aiohttp.ClientSession(headers=headers) as http, \
                        http.get(f"{st.url}/api/events", timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    event = ""
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            event = line[7:]
                            if event == "hello":
                                ready += 1
                        elif line.startswith("data: ") and event == "alert":
                            fp = json.loads(line[6:])["fingerprint"]
                            received.setdefault(fp, {}).setdefault(n, time.time())

            tasks = [asyncio.create_task(page(n)) for n in range(args.pages)]
            await wait_until(lambda: ready >= args.pages, 30, "all pages connected")
            sent: dict[str, float] = {}
            for i in range(args.changes):
                t = transition(i, prefix="push")
                sent[t.fingerprint] = time.time()
                await st.device_client.publish(transition_topic(Kind.ELEVATOR, t.device_id), encode(t))
                await asyncio.sleep(0.1)
            await wait_until(lambda: all(len(received.get(fp, [])) >= args.pages for fp in sent), 30,
                             "every page to receive every change")
            lat = [(r - sent[fp]) * 1000 for fp, rs in received.items() if fp in sent for r in rs.values()]
            print(f"\nServer push: {args.pages} SSE pages x {args.changes} new alerts (publish on MQTT -> page "
                  f"receives, {len(lat)} deliveries, {args.alerts} alerts already open):")
            print(f"  p50 {statistics.median(lat):.1f} ms, p95 {pct(lat, 0.95):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
                  f"max {max(lat):.1f} ms; resyncs {st.console.hub.resyncs if st.console else '?'}")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
