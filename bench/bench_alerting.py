"""Alerting benchmarks: hand-off latency with 10,000 open alerts, and pipeline throughput.

    .venv/bin/python bench/bench_alerting.py                 # both, default sizes
    .venv/bin/python bench/bench_alerting.py --open 10000 --probe 1000 --alerts 100000

1. latency: 10,000 alerts are opened first; then ``--probe`` new critical transitions arrive one by
   one (every 5 ms) through the service's MQTT handler. Measured: the handler's receipt time of the
   transition (``Message.received_at``) to the moment the sender thread hands the notification to
   Apprise. The transport stands in for Apprise's plugin (returns at once) so the figure is alerting's
   own cost; ``--real-apprise`` posts through Apprise's json:// plugin to a local receiver instead.
2. throughput: the pure pipeline stages route -> group -> mute (100 silences, 2 inhibition rules,
   1 maintenance window) on one core, alerts per second; and the whole service handler (lifecycle,
   SQLite, routing, grouping, muting, outbox) in batches of 100.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from alerting.config import (
    AlertingConfig,
    ApiConfig,
    InhibitRule,
    MaintenanceWindow,
    Receiver,
    Route,
    Storm,
)
from alerting.grouping import FIRING, Grouper
from alerting.inbox import NotificationInbox
from alerting.muting import Inhibitor, MaintenanceCalendar, Muter, SilenceEntry, SilenceSet
from alerting.router import Router
from alerting.sender import Message
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

KINDS = [Kind.ELEVATOR, Kind.CAMERA, Kind.VEHICLE, Kind.EMISSION]


def transition(i: int, status: str = "firing", severity: Severity = Severity.WARNING) -> Transition:
    now = datetime.now(UTC)
    kind = KINDS[i % 4]
    return Transition(ts=now, fingerprint=f"r{i % 7}:dev-{i}", rule=f"rule_{i % 7}", status=status,  # type: ignore[arg-type]
                      severity=severity, kind=kind, device_id=f"dev-{i}", site=f"site-{i % 300}",
                      labels={"unit": f"unit-{i % 12}", "industry": kind.value}, summary="bench", source_ts=now)


def route() -> Route:
    return Route(name="root", receivers=["room"], group_by=["device_id"], group_wait_s=0.0, group_interval_s=30,
                 repeat_interval_s=4 * 3600, routes=[
                     Route(name="crit", matchers=["severity=critical"]),
                     Route(name="elev", matchers=["kind=elevator"], group_by=["rule", "site"]),
                     Route(name="emi", matchers=["kind=emission", "unit=~unit-[0-5]"]),
                 ])


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def inbox_in_thread() -> tuple[str, Callable[[], None]]:
    """A json:// receiver on its own thread and event loop, so it does not compete with alerting's loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = NotificationInbox()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(box.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(box.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return box.url("/room"), stop


async def bench_latency(n_open: int, probes: int, real: bool) -> None:
    url, stop_inbox = inbox_in_thread() if real else ("bench://room", None)

    def fast(u: str, m: Message) -> tuple[bool, str | None]:
        return True, None

    cfg = AlertingConfig(receivers=[Receiver(name="room", urls=[url])], route=route(), escalation_policies=[],
                         inhibit_rules=[], api=ApiConfig(enabled=False), storm=Storm(max_per_minute=10**9))
    with tempfile.TemporaryDirectory() as tmp:
        svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "bench"), state_dir=Path(tmp),
                              transport=None if real else fast)
        task = asyncio.create_task(svc.run())
        t0 = time.perf_counter()
        for start in range(0, n_open, 200):
            svc.on_transitions([MqttMessage("t", encode(transition(i)), 1, False, time.time())
                                for i in range(start, min(n_open, start + 200))])
            await asyncio.sleep(0)
        while svc.store.pending_notifications(1) or svc.stats()["send_queue"]:
            await asyncio.sleep(0.05)
        print(f"opened {len(svc.open)} alerts in {time.perf_counter() - t0:.1f} s (with their notifications)")
        svc.handoffs.clear()
        for k in range(probes):
            i = n_open + k
            payload = encode(transition(i, severity=Severity.CRITICAL))
            svc.on_transitions([MqttMessage("t", payload, 1, False, time.time())])
            await asyncio.sleep(0.005)
        async with asyncio.timeout(60):
            while sum(1 for h in svc.handoffs if "recv" in h) < probes:
                await asyncio.sleep(0.01)
        lat = [(h["handed_at"] - h["recv"]) * 1000 for h in svc.handoffs if "recv" in h]
        print(f"latency transition received -> handed to Apprise, {len(svc.open)} open alerts, {len(lat)} probes"
              f" ({'real Apprise json://' if real else 'stand-in transport'}):")
        print(f"  p50 {percentile(lat, 0.5):.2f} ms  p90 {percentile(lat, 0.9):.2f} ms  "
              f"p99 {percentile(lat, 0.99):.2f} ms  max {max(lat):.2f} ms  mean {statistics.fmean(lat):.2f} ms")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        svc.store.close()
    if stop_inbox is not None:
        stop_inbox()


def bench_pipeline(n: int) -> None:
    router = Router(route())
    grouper = Grouper(router.plans)
    silences = SilenceSet()
    for k in range(100):
        silences.put(SilenceEntry(id=f"s{k}", matchers=[f"site=site-{k}-x", "kind=camera"], starts_at=0,
                                  ends_at=2e9, author="bench"))
    inhibitor = Inhibitor([
        InhibitRule(name="power", source=["rule=site_power_failure"], target=["kind=elevator"], equal=["site"]),
        InhibitRule(name="offline", source=["rule=device_offline"], target=["rule!=device_offline"],
                    equal=["device_id"])])
    for s in range(0, 300, 10):
        inhibitor.update(f"p{s}", {"rule": "site_power_failure", "site": f"site-{s}"}, True)
    muter = Muter(silences, MaintenanceCalendar([MaintenanceWindow(name="m", matchers=["site=site-7"])]), inhibitor)
    labels = []
    for i in range(n):
        kind = KINDS[i % 4].value
        labels.append({"rule": f"rule_{i % 7}", "severity": "critical" if i % 10 == 0 else "warning", "kind": kind,
                       "device_id": f"dev-{i}", "site": f"site-{i % 300}", "unit": f"unit-{i % 12}",
                       "industry": kind})
    now = 1_790_000_000.0
    muted = 0
    t0 = time.perf_counter()
    for i, lab in enumerate(labels):
        for plan in router.routes_for(lab):
            grouper.update(plan, lab, f"a{i}", FIRING, now)
        if i % 100 == 99:
            for fl in grouper.due(now):
                for aid in fl.firing:
                    if muter.mute_reason(aid, labels[int(aid[1:])], now) is not None:
                        muted += 1
    for fl in grouper.due(now):
        for aid in fl.firing:
            if muter.mute_reason(aid, labels[int(aid[1:])], now) is not None:
                muted += 1
    dt = time.perf_counter() - t0
    print(f"pipeline route -> group -> mute: {n} alerts in {dt:.2f} s = {n / dt:,.0f} alerts/s on one core "
          f"({len(grouper.groups)} groups, {muted} muted)")


async def bench_service_throughput(n: int) -> None:
    cfg = AlertingConfig(receivers=[Receiver(name="room", urls=["bench://room"])], route=route(),
                         escalation_policies=[], inhibit_rules=[], api=ApiConfig(enabled=False),
                         storm=Storm(max_per_minute=10**9))
    with tempfile.TemporaryDirectory() as tmp:
        svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "bench"), state_dir=Path(tmp),
                              transport=lambda u, m: (True, None))
        batches = [[MqttMessage("t", encode(transition(i)), 1, False, 0.0) for i in range(s, s + 100)]
                   for s in range(0, n, 100)]
        t0 = time.perf_counter()
        for b in batches:
            svc.on_transitions(b)
        dt = time.perf_counter() - t0
        print(f"service handler (decode, lifecycle, SQLite, route, group, mute, outbox): {n} new alerts in "
              f"{dt:.2f} s = {n / dt:,.0f} alerts/s (batches of 100, delivery not included)")
        svc.store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--open", type=int, default=10000)
    ap.add_argument("--probe", type=int, default=1000)
    ap.add_argument("--alerts", type=int, default=100000)
    ap.add_argument("--real-apprise", action="store_true")
    args = ap.parse_args()
    bench_pipeline(args.alerts)
    asyncio.run(bench_service_throughput(min(args.alerts, 20000)))
    asyncio.run(bench_latency(args.open, args.probe, args.real_apprise))


if __name__ == "__main__":
    main()
