"""End-to-end benchmark: simulated devices -> Mosquitto -> platform -> InfluxDB 1.6 and Apprise.

Everything runs on this machine as separate processes, as in production: a private Mosquitto,
a private InfluxDB 1.6, the platform (`vigil run --config`, rules + alerting + storage in one
process, or ``--partitions N`` processes split by device) and simulated elevator fleets publishing
QoS 1 telemetry (``--generator raw``: replayed over raw sockets by bench/loadgen.py, cheap enough
for 20,000 msg/s beside the platform; ``sim``: the simulated fleet through ``MqttClient``). The
platform gets a registry file with the fleet (``--no-registry`` to leave it out), as a deployment
does; partitions subscribe per registered device.

Phase 1, ingest: DEVICES elevators at RATE Hz each for DURATION s; then every point is counted
in InfluxDB with InfluxQL (zero loss means count == published). Reports the publishers' achieved
rate, the rate at which points landed, the platform's CPU share and RSS.
Phase 2, alert latency at half that load: while the fleet runs at half rate, a probe device
publishes a reading that breaks a zero-hold threshold rule; the time from its publish to the
notification reaching a local HTTP receiver through Apprise (json://) is measured, and, when
alerting exposes it, to the hand-off to Apprise.

Probes are of two kinds, alternating: a telemetry reading (rides the telemetry lane, so it waits
behind whatever telemetry is queued) and a device event (the alarm lane, ``vigil.runtime``). In
the capacity phase event probes are also published while the platform drains its backlog, to
show whether an alarm waits behind queued telemetry.

Run: .venv/bin/python bench/bench_e2e.py [--devices 1000] [--rate 10] [--duration 60] [--probes 100]
     [--profile-dir bench/profiles/NAME]  (py-spy samples the platform while it drains the backlog)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from storage.localservers import InfluxdProcess

# bench/loadgen.py is imported as ``bench.loadgen`` (here and in the spawned publisher processes).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROBE_RULE = """
rules:
  - name: bench_latency_probe
    kind: elevator
    devices: [{devices}]
    severity: critical
    condition:
      threshold: {{value: speed_mps, above: 100, clear_below: 50}}
    summary: "探针 {{device_id}}"
    summary_en: "probe {{device_id}}"
  - name: bench_latency_event_probe
    kind: elevator
    devices: [{event_devices}]
    severity: critical
    condition:
      event: {{type: bench_probe, resolve_after: 1min}}
    summary: "事件探针 {{device_id}}"
    summary_en: "event probe {{device_id}}"
"""


def fleet_process(url: str, count: int, rate: float, duration: float, prefix: str, out: Any,
                  generator: str = "raw") -> None:
    """One publisher process: a fleet of simulated elevators (``raw``: replayed over raw sockets, bench/loadgen.py)."""
    if generator == "raw":
        from bench.loadgen import run

        r = run(url, prefix, count, rate, duration)
        out.put((r.published, r.elapsed_s, r.cpu_s))
        return
    from simulators.elevator_fleet import run_fleet

    t = time.perf_counter()
    c = time.process_time()
    published = asyncio.run(run_fleet(url, count, rate, duration, id_prefix=prefix, connections=2))
    out.put((published, time.perf_counter() - t, time.process_time() - c))


FLEET_TAG = "el"
"""Every phase runs the same fleet (device ids ``el{publisher}-{n:05d}``); a phase counts its points by time."""
LIFT = {"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0, "maintained_on": "2026-11-20"}


def bench_registry(devices: int, publishers: int, probe_ids: list[str]) -> dict[str, Any]:
    """The platform's registry file: every device of every phase (a partition subscribes per device)."""
    from bench.loadgen import device_ids

    per = devices // publishers
    ids = [d for i in range(publishers) for d in device_ids(f"{FLEET_TAG}{i}-", per)]
    # Probes get a rated speed no reading reaches: only the probe rules fire for them.
    return {"devices": [{"id": d, "kind": "elevator", "attributes": LIFT} for d in ids]
            + [{"id": d, "kind": "elevator", "attributes": {**LIFT, "rated_speed_mps": 1000.0}} for d in probe_ids]}


def proc_sample(pid: int) -> tuple[float, int]:
    """CPU seconds used so far and resident memory (bytes) of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


def procs_sample(pids: list[int]) -> tuple[float, int]:
    """``proc_sample`` summed over processes (a partitioned platform)."""
    cpu, rss = 0.0, 0
    for pid in pids:
        c, r = proc_sample(pid)
        cpu += c
        rss += r
    return cpu, rss


class PlatformGroup:
    """The platform's processes: one, or one per partition (``--partitions``)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.procs]
        return next((c for c in codes if c is not None), None)

    def terminate(self) -> None:
        for p in self.procs:
            p.terminate()

    def wait(self, timeout: float) -> None:
        for p in self.procs:
            p.wait(timeout)


OTHERS: dict[str, int] = {}
"""Other server processes whose CPU share is reported beside the platform's (name -> pid)."""


def others_cpu() -> dict[str, float]:
    return {name: proc_sample(pid)[0] for name, pid in OTHERS.items()}


def others_share(before: dict[str, float], seconds: float) -> str:
    after = others_cpu()
    return ", ".join(f"{name} {(after[name] - before[name]) / seconds * 100:.0f}%" for name in OTHERS)


def others_per_message(before: dict[str, float], messages: int) -> str:
    """CPU seconds each other server used since ``before``, and µs of its CPU per message."""
    after = others_cpu()
    used = {name: after[name] - before[name] for name in OTHERS}
    return ", ".join(f"{name} {cpu:.1f} s = {cpu / max(messages, 1) * 1e6:.1f} µs/msg" for name, cpu in used.items())


def influx_count(url: str, query: str) -> int:
    q = urllib.parse.urlencode({"db": "vigil", "q": query})
    with urllib.request.urlopen(f"{url}/query?{q}", timeout=30) as resp:
        body = json.loads(resp.read())
    total = 0
    for result in body.get("results", []):
        for series in result.get("series", []):
            for row in series["values"]:
                total += int(row[1] or 0)
    return total


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


GENERATOR = "raw"


def run_fleets(url: str, devices: int, rate: float, duration: float, processes: int, tag: str) -> mp.Queue:  # type: ignore[type-arg]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    per = devices // processes
    for i in range(processes):
        ctx.Process(target=fleet_process, args=(url, per, rate, duration, f"{FLEET_TAG}{i}-", out, GENERATOR),
                    daemon=True).start()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0, help="messages per device per second")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--platform-log", help="keep the platform's log in this file (default: a temporary one)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--broker-inflight", type=int, default=1000,
                    help="Mosquitto max_inflight_messages per client (0: no limit)")
    ap.add_argument("--capacity-messages", type=int, default=200_000,
                    help="messages queued while the platform is stopped, then drained (0 skips)")
    ap.add_argument("--backlog-probes", type=int, default=20,
                    help="event probes published while the platform drains the capacity backlog")
    ap.add_argument("--partitions", type=int, default=1,
                    help="platform processes, each handling the devices of one partition (mqtt.partition)")
    ap.add_argument("--profile-dir", help="sample the draining platform with py-spy into this folder")
    ap.add_argument("--influx-batch", type=int, default=20_000, help="storage.writer.batch_points of the platform")
    ap.add_argument("--influx-gzip", type=int, default=0, help="storage.writer.gzip_level (0: uncompressed)")
    ap.add_argument("--influx-flush", type=float, default=0.5, help="storage.writer.flush_interval_s of the platform")
    ap.add_argument("--generator", choices=("raw", "sim"), default="raw",
                    help="raw: replayed simulator telemetry over raw sockets (bench/loadgen.py, ~8 µs/msg); "
                         "sim: the simulated fleet through MqttClient (physics per message)")
    ap.add_argument("--no-registry", action="store_true",
                    help="no registry file: every device id accepted, partitions read everything and drop the rest")
    args = ap.parse_args()
    global GENERATOR
    GENERATOR = args.generator

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        registry = DeviceRegistry.from_data({"services": [
            {"name": "vigil-platform", "role": "platform", "password": "bench-platform"},
            # Many publisher connections share this account: on the field listener the client id is the
            # account, so they would replace each other; the platform listener lets them choose ids.
            {"name": "vigil-simulator", "role": "platform", "password": "bench-sim"},
        ]})
        influx = InfluxdProcess(tmp / "influxdb")
        influx.start()
        received: list[tuple[float, dict[str, Any]]] = []
        app = web.Application()

        async def on_post(request: web.Request) -> web.Response:
            received.append((time.time(), await request.json()))
            return web.Response(text="ok")

        app.router.add_post("/{tail:.*}", on_post)
        runner = web.AppRunner(app)
        await runner.setup()
        recv_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", recv_port).start()

        probe_ids = [f"probe-{'te'[i % 2]}-{i:04d}" for i in range(args.probes)]
        backlog_ids = [f"probe-b-{i:04d}" for i in range(args.backlog_probes)]
        (tmp / "probe.yaml").write_text(PROBE_RULE.format(
            devices=", ".join(d for d in probe_ids if d.startswith("probe-t-")) or "none",
            event_devices=", ".join([d for d in probe_ids if d.startswith("probe-e-")] + backlog_ids) or "none"))
        if not args.no_registry:
            (tmp / "registry.yaml").write_text(yaml.safe_dump(
                bench_registry(args.devices, args.publishers, probe_ids + backlog_ids)))
        layout = BrokerLayout(data_dir=tmp / "mosquitto", port=free_port(), max_inflight_messages=args.broker_inflight)
        with MosquittoProcess(layout, registry) as broker:
            assert broker.proc is not None and influx.proc is not None
            OTHERS.update({"mosquitto": broker.proc.pid, "influxd": influx.proc.pid})
            plat_url = broker.account_url("vigil-platform", "bench-platform")
            sim_url = broker.account_url("vigil-simulator", "bench-sim")
            def config(part: int) -> dict[str, Any]:
                # Partition 0 runs alerting (one notifier per deployment); the others send it their
                # transitions over MQTT.
                n = args.partitions
                mqtt: dict[str, Any] = {"url": plat_url, "client_id": "vigil-bench" + (f"-p{part}" if part else "")}
                if n > 1:
                    mqtt["partition"] = f"{part}/{n}"
                return {
                    **({} if args.no_registry else {"registry": str(tmp / "registry.yaml")}),
                    "node": "bench" + (f"-p{part}" if part else ""), "state_dir": str(tmp / "state"),
                    "log_level": "warning",
                    "services": ["rules", "alerting", "storage"] if part == 0 else ["rules", "storage"],
                    "mqtt": mqtt,
                    "rules": {"packs": ["elevator"], "paths": [str(tmp / "probe.yaml")]},
                    # InfluxDB on the same host: bodies uncompressed (gzip costs the platform CPU and saves
                    # nothing on loopback) and large writes (influxd's CPU per point falls with the batch size:
                    # up to 20,000 points, and at 20,000 msg/s a write every 0.5 s carries ~10,000; see
                    # docs/benchmarks.md, issue 15 session 3).
                    "storage": {"backend": "influxdb-v1", "influxdb_v1": {"url": influx.url, "database": "vigil"},
                                "writer": {"batch_points": args.influx_batch, "gzip_level": args.influx_gzip,
                                           "flush_interval_s": args.influx_flush}},
                    "alerting": {
                        "receivers": [{"name": "duty", "urls": [f"json://127.0.0.1:{recv_port}/duty"]}],
                        "people": [], "escalation_policies": [], "inhibit_rules": [],
                        "route": {"receivers": ["duty"], "group_by": ["rule", "device_id"], "group_wait_s": 0,
                                  "group_interval_s": 0, "repeat_interval_s": 3600},
                        "storm": {"max_per_minute": 1_000_000},
                        "api": {"enabled": False},
                    },
                }

            for part in range(args.partitions):
                (tmp / f"vigil-{part}.yaml").write_text(yaml.safe_dump(config(part)))
            log_path = Path(args.platform_log) if args.platform_log else tmp / "platform.log"

            def start_platform() -> PlatformGroup:
                return PlatformGroup([
                    subprocess.Popen([sys.executable, "-m", "vigil.cli", "run", "--config", str(tmp / f"vigil-{part}.yaml")],
                                     stderr=log_path.open("a")) for part in range(args.partitions)])

            platform = start_platform()
            await asyncio.sleep(4)
            print(f"machine: {os.cpu_count()} cores; Mosquitto {broker.url}; InfluxDB 1.6 {influx.url}; "
                  f"platform pids {platform.pids}")
            try:
                if not args.skip_ingest:
                    await ingest_phase(args, sim_url, influx.url, platform.pids)
                if args.capacity_messages:
                    platform = await capacity_phase(args, sim_url, influx.url, platform, start_platform,
                                                    backlog_ids, received, tmp / "state")
                if not args.skip_latency:
                    await latency_phase(args, sim_url, plat_url, probe_ids, received, platform.pids, tmp / "state")
            finally:
                platform.terminate()
                try:
                    platform.wait(60)
                except subprocess.TimeoutExpired:  # still print the log tail and stop InfluxDB below
                    print("platform did not stop within 60 s of SIGTERM; killed")
                    for p in platform.procs:
                        p.kill()
                    platform.wait(10)
                tail = log_path.read_text().splitlines()[-5:]
                if any("Traceback" in line or "ERROR" in line for line in tail):
                    print("platform log tail:\n" + "\n".join(tail))
        await runner.cleanup()
        influx.stop()


async def ingest_phase(args: argparse.Namespace, sim_url: str, influx_url: str, pids: list[int]) -> None:
    target = args.devices * args.rate
    print(f"\n[ingest] {args.devices} devices x {args.rate} Hz = {target:,.0f} msg/s target, QoS 1, "
          f"{args.duration:.0f} s, {args.publishers} publisher processes")
    cpu0, _ = procs_sample(pids)
    pcpu0 = [proc_sample(pid)[0] for pid in pids]
    o0 = others_cpu()
    t0 = time.time()
    out = run_fleets(sim_url, args.devices, args.rate, args.duration, args.publishers, "ing")
    since = int((t0 - 1) * 1e9)
    rss_peak = 0
    while time.time() - t0 < args.duration:
        await asyncio.sleep(1)
        rss_peak = max(rss_peak, procs_sample(pids)[1])
    results = [await asyncio.to_thread(out.get, True, 300) for _ in range(args.publishers)]
    published = sum(r[0] for r in results)
    pub_time = max(r[1] for r in results)
    gen_cpu = sum(r[2] for r in results)
    cpu1, _ = procs_sample(pids)
    pub_done = time.time()
    others_while_publishing = others_share(o0, pub_done - t0)
    query = f"SELECT count(speed_mps) FROM telemetry_elevator WHERE device =~ /^{FLEET_TAG}/ AND time >= {since}"
    landed = 0
    while time.time() - pub_done < 180:
        landed = await asyncio.to_thread(influx_count, influx_url, query)
        if landed >= published:
            break
        await asyncio.sleep(1)
    done = time.time()
    cpu2, rss = procs_sample(pids)
    others_per_msg = others_per_message(o0, landed)
    print(f"  published {published:,} in {pub_time:.1f} s = {published / pub_time:,.0f} msg/s (publishers' pace)")
    print(f"  landed in InfluxDB: {landed:,} ({published - landed:,} missing) ; all landed "
          f"{done - pub_done:.1f} s after the last publish; end-to-end {landed / (done - t0):,.0f} points/s")
    print(f"  platform CPU while publishing: {(cpu1 - cpu0) / pub_time * 100:.0f}% of one core; "
          f"total CPU {cpu2 - cpu0:.1f} s; RSS peak {rss_peak / 2**20:.0f} MiB, at end {rss / 2**20:.0f} MiB")
    print(f"  other servers while publishing: {others_while_publishing}; load generators "
          f"{gen_cpu / pub_time * 100:.0f}% ({gen_cpu / max(published, 1) * 1e6:.1f} µs/msg, {args.generator})")
    print(f"  platform CPU per message over the run (publishing + tail): {(cpu2 - cpu0) / max(landed, 1) * 1e6:.0f} µs; "
          f"per process: {per_process_cpu(pids, pcpu0, landed)}")
    print(f"  CPU per message over the run, other servers: {others_per_msg}")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")


def per_process_cpu(pids: list[int], before: list[float], messages: int) -> str:
    """CPU seconds of each platform process since ``before`` (and µs per message of the whole fleet)."""
    now = [proc_sample(pid)[0] for pid in pids]
    return ", ".join(f"pid {pid} {b - a:.1f} s" for pid, a, b in zip(pids, before, now, strict=True))


async def capacity_phase(args: argparse.Namespace, sim_url: str, influx_url: str, platform: PlatformGroup,
                         start_platform: Any, backlog_ids: list[str], received: list[tuple[float, dict[str, Any]]],
                         state_dir: Path) -> PlatformGroup:
    """The platform's own capacity: queue messages in its persistent session while it is stopped,
    then start it and time the drain into InfluxDB, with the load generators no longer competing."""
    platform.terminate()
    platform.wait(60)
    seconds = args.capacity_messages / (args.devices * args.rate)
    print(f"\n[capacity] platform stopped; {args.capacity_messages:,} messages queued in its session by the fleet")
    since = int((time.time() - 1) * 1e9)
    out = run_fleets(sim_url, args.devices, args.rate, seconds, args.publishers, "cap")
    results = [await asyncio.to_thread(out.get, True, 600) for _ in range(args.publishers)]
    published = sum(r[0] for r in results)
    query = f"SELECT count(speed_mps) FROM telemetry_elevator WHERE device =~ /^{FLEET_TAG}/ AND time >= {since}"
    t0 = time.time()
    o0 = others_cpu()
    platform = start_platform()
    spy = None
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(platform.pid),
                                "--rate", "97", "--format", "raw", "--nonblocking",
                                "--output", str(Path(args.profile_dir) / "drain.collapsed.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0 = 0.0
    landed = 0
    samples: list[tuple[float, float, int]] = []
    state = {"landed": 0, "done": False}
    prober = asyncio.create_task(backlog_probes(sim_url, backlog_ids, received, published, state))
    while time.time() - t0 < 600:
        await asyncio.sleep(0.5)
        if platform.poll() is None:
            cpu0 = max(cpu0, procs_sample(platform.pids)[0])
        landed = await asyncio.to_thread(influx_count, influx_url, query)
        state["landed"] = landed
        samples.append((time.time(), cpu0, landed))
        if landed >= published:
            break
    took = time.time() - t0
    state["done"] = True
    others = others_share(o0, took)
    others_per_msg = others_per_message(o0, landed)
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)
    lat = await prober
    print(f"  {landed:,} of {published:,} landed {took:.1f} s after the platform started (includes its start-up): "
          f"{landed / took:,.0f} msg/s; platform CPU {cpu0:.1f} s = {cpu0 / took * 100:.0f}% of one core, "
          f"{cpu0 / max(landed, 1) * 1e6:.0f} µs of CPU per message; meanwhile {others}")
    print(f"  CPU per message of the drain, per process: platform {cpu0 / max(landed, 1) * 1e6:.1f} µs, "
          f"{others_per_msg} (mosquitto: delivering the queued messages to the platform); load average {os.getloadavg()[0]:.2f}")
    # Steady state, without start-up: between 20% and 90% of the backlog landed.
    window = [x for x in samples if 0.2 * published <= x[2] <= 0.9 * published]
    if len(window) >= 2 and window[-1][2] > window[0][2]:
        (ta, ca, la), (tb, cb, lb) = window[0], window[-1]
        print(f"  steady drain (20% -> 90% landed): {(lb - la) / (tb - ta):,.0f} msg/s, platform CPU "
              f"{(cb - ca) / (tb - ta) * 100:.0f}% of one core, {(cb - ca) / (lb - la) * 1e6:.0f} µs of CPU per message")
    if lat:
        backlogs = [b for _, b in lat]
        ms = [m for m, _ in lat]
        print(f"  event probes during the drain: n={len(ms)} of {len(backlog_ids)} (telemetry still queued then: "
              f"{min(backlogs):,} - {max(backlogs):,}); publish -> notification p50 {statistics.median(ms):.1f} ms, "
              f"p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms")
    await asyncio.sleep(2)
    legs = probe_legs(state_dir / "bench" / "alerting" / "alerting.sqlite3", "probe-b-")
    print_legs(legs)
    return platform


async def backlog_probes(sim_url: str, probe_ids: list[str], received: list[tuple[float, dict[str, Any]]],
                         published: int, state: dict[str, Any]) -> list[tuple[float, int]]:
    """Event probes while the capacity backlog drains: (ms publish -> notification, telemetry still queued)."""
    out: list[tuple[float, int]] = []
    if not probe_ids:
        return out
    while not state["landed"] and not state["done"]:
        await asyncio.sleep(0.1)  # the platform's start-up: probe once it is draining
    async with MqttClient(sim_url, "bench-backlog-probe", clean_start=True) as probe:
        for dev in probe_ids:
            if state["done"]:
                break
            backlog = published - state["landed"]
            ms = await one_probe(probe, dev, "event", received)
            if ms is not None:
                out.append((ms, backlog))
            await asyncio.sleep(0.2)
    return out


async def one_probe(probe: MqttClient, dev: str, channel: str, received: list[tuple[float, dict[str, Any]]],
                    timeout: float = 10.0) -> float | None:
    """Publish one alarm-raising message for ``dev``; ms until its notification reached the receiver."""
    before = len(received)
    now = datetime.now(UTC).isoformat()
    if channel == "event":
        payload = json.dumps({"ts": now, "type": "bench_probe", "state": "start", "event_id": dev}).encode()
    else:
        payload = json.dumps({"ts": now, "metrics": {"speed_mps": 150.0}}).encode()
    t_pub = time.time()
    await probe.publish(f"vigil/v1/elevator/{dev}/{channel}", payload)
    deadline = time.time() + timeout
    while time.time() < deadline:
        for t_recv, body in received[before:]:
            if dev in json.dumps(body, ensure_ascii=False):
                ARRIVED[dev] = t_recv
                return (t_recv - t_pub) * 1000
        await asyncio.sleep(0.002)
    return None


ARRIVED: dict[str, float] = {}
"""Probe device -> wall time its notification reached the HTTP receiver (joined with alerting's log by device)."""
PROBE_ID = re.compile(r"probe-[a-z]-\d{4}")


def print_legs(legs: dict[str, list[float]]) -> None:
    if legs:
        print(f"  per probe, from alerting's notification log (n={len(legs['publish -> handed to Apprise'])}):")
        for name, values in legs.items():
            print(f"    {name:34} p50 {statistics.median(values):7.1f} ms  p99 {pct(values, 99):7.1f} ms  "
                  f"max {max(values):7.1f} ms")


async def latency_phase(args: argparse.Namespace, sim_url: str, plat_url: str, probe_ids: list[str],
                        received: list[tuple[float, dict[str, Any]]], pids: list[int], state_dir: Path) -> None:
    half = args.devices * args.rate / 2
    duration = max(30.0, args.probes * 0.25 + 10)
    print(f"\n[latency] fleet at {half:,.0f} msg/s for {duration:.0f} s; {len(probe_ids)} probes; "
          f"load average {os.getloadavg()[0]:.2f}")
    out = run_fleets(sim_url, args.devices, args.rate / 2, duration, args.publishers, "lat")
    await asyncio.sleep(3)
    lat: dict[str, list[float]] = {"telemetry": [], "event": []}
    async with MqttClient(sim_url, "bench-probe", clean_start=True) as probe:
        for dev in probe_ids:
            channel = "event" if dev.startswith("probe-e-") else "telemetry"
            ms = await one_probe(probe, dev, channel, received)
            if ms is not None:
                lat[channel].append(ms)
            await asyncio.sleep(0.05)
    _, rss = procs_sample(pids)
    for _ in range(args.publishers):
        await asyncio.to_thread(out.get, True, 300)
    await asyncio.sleep(11)  # the platform rewrites stats.json every 10 s
    stats = json.loads((state_dir / "bench" / "stats.json").read_text())
    al = stats.get("alerting", {})
    lp = stats.get("loop", {})
    if lp:
        print(f"  platform event loop (last 10 s): timer lag p50 {lp.get('lag_ms_p50', 0):.2f} ms, "
              f"p99 {lp.get('lag_ms_p99', 0):.1f} ms; worst lag of the run {lp['lag_ms_max']:.0f} ms; "
              f"GC pauses >= 10 ms: {lp['gc_pauses_over_10ms']:.0f}, worst full collection {lp['gc_gen2_max_ms']:.0f} ms "
              f"({lp['gc_gen2_collections']:.0f} full collections)")
    print(f"  transition received -> handed to Apprise (alerting's own clock): p50 {al.get('handoff_internal_ms_p50', 0):.1f} ms,"
          f" p99 {al.get('handoff_internal_ms_p99', 0):.1f} ms (all alerts of the run); transitions "
          f"{al.get('transitions', 0):.0f}, notifications queued {al.get('notifications_queued', 0):.0f}, sent "
          f"{al.get('notifications_sent', 0):.0f}, open alerts {al.get('open_alerts', 0):.0f}")
    for channel, values in lat.items():
        if values:
            print(f"  {channel} probes, publish -> notification received over HTTP (Apprise json://): n={len(values)} "
                  f"p50 {statistics.median(values):.1f} ms, p99 {pct(values, 99):.1f} ms, max {max(values):.1f} ms")
    missing = len(probe_ids) - sum(len(v) for v in lat.values())
    print(f"  probes without a notification within 10 s: {missing}; platform RSS {rss / 2**20:.0f} MiB; "
          f"load average {os.getloadavg()[0]:.2f}")
    for prefix, channel in (("probe-t-", "telemetry"), ("probe-e-", "event")):
        print(f"  [{channel} probes]")
        print_legs(probe_legs(state_dir / "bench" / "alerting" / "alerting.sqlite3", prefix))


def probe_legs(db_path: Path, prefix: str = "probe-") -> dict[str, list[float]]:
    """Where each probe's time went: device publish (its ts) -> rules received -> notification
    created by alerting -> handed to Apprise, from the timestamps alerting keeps per notification."""
    import sqlite3

    if not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT source_ts, received_at, created_at, handed_at, title FROM notifications "
                          "WHERE kind = 'firing' AND (title LIKE ? OR body LIKE ?) AND handed_at IS NOT NULL "
                          "AND source_ts IS NOT NULL AND received_at IS NOT NULL",
                          (f"%{prefix}%", f"%{prefix}%")).fetchall()
    finally:
        db.close()
    legs: dict[str, list[float]] = {"publish -> rules received": [], "rules received -> notification": [],
                                    "notification -> handed to Apprise": [], "publish -> handed to Apprise": []}
    to_http: list[float] = []
    end_to_end: list[float] = []
    for src, recv, created, handed, title in rows:
        legs["publish -> rules received"].append((recv - src) * 1000)
        legs["rules received -> notification"].append((created - recv) * 1000)
        legs["notification -> handed to Apprise"].append((handed - created) * 1000)
        legs["publish -> handed to Apprise"].append((handed - src) * 1000)
        m = PROBE_ID.search(title or "")
        if m is not None and m.group(0) in ARRIVED:
            to_http.append((ARRIVED[m.group(0)] - handed) * 1000)
            end_to_end.append((ARRIVED[m.group(0)] - src) * 1000)
    if to_http:
        legs["handed to Apprise -> HTTP received"] = to_http
        legs["publish -> HTTP received"] = end_to_end
    return legs if rows else {}


if __name__ == "__main__":
    asyncio.run(main())
