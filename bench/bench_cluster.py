"""Cluster benchmark: a 3-node NATS JetStream cluster (MQTT listener, partition mapping) and N platform instances.

Everything runs on this machine as separate processes: three nats-server 2.9 nodes (R3 streams), MQTT
publisher processes (paho, QoS 1, a window of unacknowledged messages each) spread over the nodes'
MQTT listeners, and `vigil run` instances with a ``cluster:`` section (rules stage, elevator pack).

Phase 1, ingest: MESSAGES elevator telemetry messages from DEVICES devices are published over MQTT;
reported: the rate at which the cluster acknowledged them (each is stored in its partition's R3 stream,
and nats-server 2.9 also stores mapped QoS 1 messages in its own ``$MQTT_msgs`` stream), and the
nodes' CPU. Phase 2, drain: the instances start on the full streams; reported: messages per second
from the moment every partition is leased until every partition's checkpoint covers its stream, and
the instances' CPU per message. Phase 2 runs for each instance count given (a fresh cluster each).

Other modes: ``--no-mapping`` (ingest baseline without the partition mapping), ``--native`` (NATS-native
JetStream publishers instead of MQTT), ``--mqtt-node-kill`` (MQTT QoS 1 devices across a node SIGKILL:
acknowledged messages missing from the streams), ``--uplink`` (gateways' NATS uplink, edge/runtime/nats_link.py:
records/s from their outboxes into the streams, CPU per record), ``--mosquitto-shared`` (how Mosquitto 2
spreads a device over the members of a shared subscription). The nats-server binary is
``broker.nats_server.server_binary()`` (``VIGIL_NATS_SERVER=/path/to/nats-server`` picks another).

Run: .venv/bin/python bench/bench_cluster.py [--messages 60000] [--devices 1000] [--instances 1,3]
     [--partitions 12] [--publishers 3] [--qos 0|1] [--skip-drain] [--no-mapping] [--native]
     [--mqtt-node-kill] [--uplink] [--mosquitto-shared]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nats  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from broker.contracts import Telemetry, encode  # noqa: E402
from broker.nats_server import NatsNodeProcess, local_cluster  # noqa: E402
from broker.nats_transport import CHECKPOINTS_BUCKET, ensure_layout, partition_stream  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publisher(port: int, first: int, devices: int, count: int, window: int, qos: int, out: Any) -> None:
    """Publish ``count`` messages round-robin over ``devices`` devices with at most ``window`` unacknowledged."""
    import threading

    sem = threading.Semaphore(window)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}", protocol=paho.MQTTv311,
                    clean_session=True)
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    if qos:
        c.on_publish = lambda *_a: sem.release()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    base = time.time() - 3600
    start = time.perf_counter()
    for i in range(count):
        if qos:
            sem.acquire()
        device = f"elev-b{(first + i) % devices:05d}"
        ts = datetime.fromtimestamp(base + i * 0.001, UTC)
        payload = encode(Telemetry(ts=ts, seq=i, metrics={
            "speed_mps": 1.0 + (i % 7) * 0.1, "floor": float(i % 20), "door_open": 0.0, "load_kg": 300.0,
            "temperature_c": 25.0}))
        c.publish(f"vigil/v1/elevator/{device}/telemetry", payload, qos=qos)
    if qos:
        for _ in range(window):
            sem.acquire()
    else:
        time.sleep(0.5)  # QoS 0: let paho write what it queued
    out.put((count, time.perf_counter() - start))
    c.loop_stop()
    c.disconnect()


def native_publisher(url: str, first: int, devices: int, count: int, window: int, qos: int, out: Any) -> None:
    """Like ``publisher`` but NATS-native (what a Vigil gateway could do): JetStream publishes, ``window`` awaited at a time."""

    async def run() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream(timeout=30)
        base = time.time() - 3600
        start = time.perf_counter()
        for chunk in range(0, count, window):
            sends = []
            for i in range(chunk, min(count, chunk + window)):
                device = f"elev-b{(first + i) % devices:05d}"
                payload = encode(Telemetry(ts=datetime.fromtimestamp(base + i * 0.001, UTC), seq=i, metrics={
                    "speed_mps": 1.0, "floor": float(i % 20), "door_open": 0.0, "load_kg": 300.0,
                    "temperature_c": 25.0}))
                sends.append(js.publish(f"vigil.v1.elevator.{device}.telemetry", payload))
            await asyncio.gather(*sends)
        out.put((count, time.perf_counter() - start))
        await nc.close()

    asyncio.run(run())


async def stream_total(servers: list[str], partitions: int) -> int:
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=10)
    total = 0
    for p in range(partitions):
        total += (await js.stream_info(partition_stream(p))).state.messages
    with contextlib.suppress(Exception):
        total += (await js.stream_info("VIGIL_RAW")).state.messages
    await nc.close()
    return total


async def prepare(servers: list[str], partitions: int, no_mapping: bool = False) -> None:
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(timeout=10)
    for _ in range(60):
        try:
            await ensure_layout(js, partitions, 3, max_age_s=3600, duplicate_window_s=600)
            if no_mapping:  # the baseline: one R3 stream takes the device subjects as published
                await js.add_stream(StreamConfig(name="VIGIL_RAW", subjects=["vigil.v1.*.*.*"], num_replicas=3,
                                                 storage=StorageType.FILE))
            break
        except Exception:
            await asyncio.sleep(1)
    await nc.close()


async def drained(servers: list[str], partitions: int, ends: dict[int, int]) -> tuple[bool, bool]:
    """(every partition leased, every checkpoint at its stream's end)."""
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
                done = done and doc["seq"] >= ends[p]
            except Exception:
                done = False
        return leased, done
    finally:
        await nc.close()


def run_once(args: argparse.Namespace, instances: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-cluster-"))
    nodes: list[NatsNodeProcess] = local_cluster(tmp / "nats", 0 if args.no_mapping else args.partitions)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_listening()
        servers = [n.node.url for n in nodes]
        asyncio.run(prepare(servers, args.partitions, args.no_mapping))
        # Phase 1: MQTT ingest into the R3 partition streams.
        q: Any = mp.Queue()
        per = args.messages // args.publishers
        cpu0 = {n.node.name: cpu_seconds(n.proc.pid) for n in nodes if n.proc}
        t0 = time.perf_counter()
        pubs = [mp.Process(target=native_publisher if args.native else publisher,
                           args=(nodes[i % 3].node.url if args.native else nodes[i % 3].node.mqtt_port, i * 7919,
                                 args.devices, per, args.window, args.qos, q)) for i in range(args.publishers)]
        for p in pubs:
            p.start()
        results = [q.get(timeout=600) for _ in pubs]
        for p in pubs:
            p.join()
        if args.qos == 0:  # nothing acknowledged: wait until the streams stop growing
            before = -1
            while (now := asyncio.run(stream_total(servers, args.partitions))) != before:
                before = now
                time.sleep(1.0)
        ingest_s = time.perf_counter() - t0
        node_cpu = sum(cpu_seconds(n.proc.pid) for n in nodes if n.proc) - sum(cpu0.values())
        published = sum(r[0] for r in results)
        stored = asyncio.run(stream_total(servers, args.partitions))

        async def ends() -> dict[int, int]:
            nc = await nats.connect(servers=servers)
            js = nc.jetstream(timeout=10)
            out = {p: (await js.stream_info(partition_stream(p))).state.last_seq for p in range(args.partitions)}
            await nc.close()
            return out

        last = asyncio.run(ends())
        ingest = {"instances": instances, "qos": args.qos, "via": "nats" if args.native else "mqtt",
                  "published": published, "stored": stored,
                  "ingest_msg_s": round(stored / ingest_s),
                  "ingest_node_cpu_us_per_msg": round(node_cpu / max(1, stored) * 1e6)}
        if args.skip_drain or args.no_mapping:
            return {**ingest, "load_avg": os.getloadavg()}
        # Phase 2: instances drain the streams.
        rules = {"packs": ["elevator"], "tick_interval_s": 1.0, "reload_interval_s": 0}
        for i in range(instances):
            cfg = {"node": f"bench-{i}", "state_dir": str(tmp / "state"), "services": ["rules"],
                   "log_level": "warning", "rules": rules,
                   "cluster": {"servers": servers, "partitions": args.partitions, "lease_ttl_s": 6,
                               "checkpoint_interval_s": 2.0, "fetch_batch": 1000, "stream_max_age_s": 3600}}
            path = tmp / f"bench-{i}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            with open(tmp / f"bench-{i}.log", "ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "vigil.cli", "run", "--config", str(path)],
                                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                              env=dict(os.environ, PYTHONPATH=str(REPO))))
        while not asyncio.run(drained(servers, args.partitions, last))[0]:
            time.sleep(0.2)
        start = time.perf_counter()
        inst_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        while not asyncio.run(drained(servers, args.partitions, last))[1]:
            time.sleep(0.2)
        drain_s = time.perf_counter() - start
        inst_cpu = sum(cpu_seconds(p.pid) for p in procs) - inst_cpu0
        return {**ingest, "drain_msg_s": round(stored / drain_s), "drain_s": round(drain_s, 1),
                "instance_cpu_us_per_msg": round(inst_cpu / stored * 1e6), "load_avg": os.getloadavg()}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for n in nodes:
            n.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def mosquitto_shared_spread(devices: int = 50, per_device: int = 20, members: int = 3) -> dict[str, Any]:
    """How Mosquitto 2 spreads one device's messages over the members of an MQTT 5 shared subscription."""
    import threading

    from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port

    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-share-"))
    broker = MosquittoProcess(BrokerLayout(data_dir=tmp, port=free_port()))
    broker.start()
    seen: list[dict[str, int]] = [{} for _ in range(members)]
    lock = threading.Lock()
    subs = []
    try:
        for m in range(members):
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"share-{m}", protocol=paho.MQTTv5)

            def on_message(_c: Any, _u: Any, msg: Any, m: int = m) -> None:
                with lock:
                    device = msg.topic.split("/")[3]
                    seen[m][device] = seen[m].get(device, 0) + 1

            c.on_message = on_message
            c.connect("127.0.0.1", broker.layout.port)
            c.subscribe("$share/vigil/vigil/v1/+/+/+", qos=1)
            c.loop_start()
            subs.append(c)
        time.sleep(0.5)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="share-pub", protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", broker.layout.port)
        pub.loop_start()
        for _round in range(per_device):
            for d in range(devices):
                pub.publish(f"vigil/v1/elevator/elev-s{d:03d}/telemetry", b"{}", qos=1).wait_for_publish(5)
        time.sleep(1.0)
        pub.loop_stop()
        split = sum(1 for d in range(devices) if sum(1 for m in seen if f"elev-s{d:03d}" in m) > 1)
        return {"mosquitto_shared_members": members, "devices": devices, "devices_split_over_members": split,
                "per_member_messages": [sum(m.values()) for m in seen]}
    finally:
        for c in subs:
            c.loop_stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def mqtt_node_kill(args: argparse.Namespace) -> dict[str, Any]:
    """MQTT QoS 1 devices across a node SIGKILL: how many acknowledged messages miss from the streams."""
    import threading

    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-mqttkill-"))
    nodes = local_cluster(tmp / "nats", args.partitions)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_listening()
        servers = [n.node.url for n in nodes]
        asyncio.run(prepare(servers, args.partitions))
        ports = [n.node.mqtt_port for n in nodes]
        lock = threading.Lock()
        acked: dict[str, set[int]] = {}
        mids: dict[tuple[str, int], int] = {}
        early: set[tuple[str, int]] = set()
        clients = []
        for i in range(args.devices):
            device = f"elev-k{i:04d}"
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311, clean_session=False)
            c.max_inflight_messages_set(0)
            c.max_queued_messages_set(0)
            c.reconnect_delay_set(0.2, 1.0)
            state = {"index": i % 3}

            def rotate(client: Any, *_a: Any, state: dict[str, int] = state) -> None:
                state["index"] = (state["index"] + 1) % 3
                client._port = ports[state["index"]]  # paho retries the same port otherwise

            def on_publish(_c: Any, _u: Any, mid: int, *_a: Any, device: str = device) -> None:
                with lock:
                    seq = mids.pop((device, mid), None)
                    if seq is not None:
                        acked.setdefault(device, set()).add(seq)
                    else:
                        early.add((device, mid))

            c.on_disconnect = rotate
            c.on_connect_fail = rotate
            c.on_publish = on_publish
            c.connect("127.0.0.1", ports[i % 3], keepalive=5)
            c.loop_start()
            clients.append((device, c))
        time.sleep(1.0)
        seconds, rate = 20, 10
        start = time.time()
        for k in range(seconds * rate):
            time.sleep(max(0.0, start + k / rate - time.time()))
            for device, c in clients:
                payload = encode(Telemetry(ts=datetime.fromtimestamp(time.time(), UTC), seq=k,
                                           metrics={"speed_mps": 1.0}))
                # Not under the lock: paho calls on_publish holding its own lock, which publish() takes too.
                info = c.publish(f"vigil/v1/elevator/{device}/telemetry", payload, qos=1)
                with lock:
                    if (device, info.mid) in early:  # acknowledged before we recorded it
                        early.discard((device, info.mid))
                        acked.setdefault(device, set()).add(k)
                    else:
                        mids[(device, info.mid)] = k
            if k == 8 * rate:
                nodes[1].kill()
        deadline = time.time() + 60
        while mids and time.time() < deadline:
            time.sleep(0.5)

        async def stored() -> dict[str, set[int]]:
            nc = await nats.connect(servers=[servers[0], servers[2]])
            js = nc.jetstream(timeout=10)
            out: dict[str, set[int]] = {}
            for p in range(args.partitions):
                total = (await js.stream_info(partition_stream(p))).state.messages
                if not total:
                    continue
                sub = await js.pull_subscribe(f"vigil.p.{p}.>", stream=partition_stream(p),
                                              config=ConsumerConfig(ack_policy=AckPolicy.NONE))
                got = 0
                while got < total:
                    for m in await sub.fetch(min(1000, total - got), timeout=10):
                        got += 1
                        out.setdefault(m.subject.split(".")[4], set()).add(json.loads(m.data)["seq"])
            await nc.close()
            return out

        for attempt in range(10):  # the cluster may still be electing leaders after the kill
            try:
                in_streams = asyncio.run(stored())
                break
            except Exception:
                if attempt == 9:
                    raise
                time.sleep(2.0)
        lost = {d: sorted(acked.get(d, set()) - in_streams.get(d, set())) for d, _c in clients}
        for _d, c in clients:
            c.loop_stop()
        return {"mqtt_devices": args.devices, "acked": sum(len(v) for v in acked.values()),
                "never_acked": len(mids), "acked_but_lost": sum(len(v) for v in lost.values()),
                "devices_with_loss": sum(1 for v in lost.values() if v),
                "lost_seq_range": [min((min(v) for v in lost.values() if v), default=None),
                                   max((max(v) for v in lost.values() if v), default=None)],
                "node_killed_at_seq": 8 * rate, "load_avg": os.getloadavg()}
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def uplink_publisher(servers: list[str], data_dir: str, devices: int, count: int, window: int, out: Any) -> None:
    """A gateway's ``NatsEdgeLink`` delivering a backlog of ``count`` outbox records; reports (count, s, CPU s)."""
    from edge.runtime.identity import EdgeIdentity
    from edge.runtime.nats_link import NatsEdgeLink

    async def run() -> None:
        link = NatsEdgeLink(servers, EdgeIdentity.for_gateway("bench-uplink", agent="bench"), Path(data_dir),
                            max_queued=count + 1, window=window)
        base = time.time() - 3600
        items = []
        for i in range(count):
            payload = encode(Telemetry(ts=datetime.fromtimestamp(base + i * 0.001, UTC), seq=i, metrics={
                "speed_mps": 1.0, "floor": float(i % 20), "door_open": 0.0, "load_kg": 300.0, "temperature_c": 25.0}))
            items.append((f"vigil/v1/elevator/elev-b{i % devices:05d}/telemetry", payload, False))
        link.outbox.append_many(items, now=time.time())
        cpu0, t0 = time.process_time(), time.perf_counter()
        await link.start()
        while len(link.outbox) or link.in_flight:
            await asyncio.sleep(0.05)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        counters = dict(link.counters)
        await link.stop()
        out.put((count, elapsed, cpu, counters))

    asyncio.run(run())


def uplink(args: argparse.Namespace) -> dict[str, Any]:
    """The NATS uplink (edge/runtime/nats_link.py): records/s from a gateway's outbox into the R3 partition streams."""
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-uplink-"))
    nodes = local_cluster(tmp / "nats", args.partitions)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_listening()
        servers = [n.node.url for n in nodes]
        asyncio.run(prepare(servers, args.partitions))
        q: Any = mp.Queue()
        per = args.messages // args.publishers
        procs = [mp.Process(target=uplink_publisher, args=(servers[i % 3:] + servers[:i % 3], str(tmp / f"gw{i}"),
                                                           args.devices, per, args.window, q))
                 for i in range(args.publishers)]
        node_cpu0 = sum(cpu_seconds(n.proc.pid) for n in nodes if n.proc)
        for p in procs:
            p.start()
        results = [q.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
        node_cpu = sum(cpu_seconds(n.proc.pid) for n in nodes if n.proc) - node_cpu0
        records = sum(r[0] for r in results)
        stored = asyncio.run(stream_total(servers, args.partitions))
        return {"uplink_gateways": args.publishers, "window": args.window, "records": records,
                "stored_in_streams": stored,
                "records_s": round(records / max(r[1] for r in results)),
                "gateway_cpu_us_per_record": round(sum(r[2] for r in results) / records * 1e6),
                "node_cpu_us_per_record_incl_status_and_setup": round(node_cpu / records * 1e6),
                "retries": sum(r[3]["publish_errors"] for r in results),
                "server": nodes[0].binary, "load_avg": os.getloadavg()}
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--instances", default="1,3")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1, help="devices' MQTT QoS (0: no PUBACK, no loss bound)")
    ap.add_argument("--skip-drain", action="store_true", help="ingest only")
    ap.add_argument("--native", action="store_true", help="publish NATS-native JetStream messages instead of MQTT")
    ap.add_argument("--no-mapping", action="store_true",
                    help="baseline without the partition mapping: one R3 stream takes the device subjects (ingest only)")
    ap.add_argument("--mqtt-node-kill", action="store_true",
                    help="MQTT QoS 1 devices (--devices) across a node SIGKILL: acknowledged messages missing from the streams")
    ap.add_argument("--uplink", action="store_true",
                    help="gateways' NATS uplink (--publishers of them, --messages records in all, --window): records/s, CPU")
    ap.add_argument("--mosquitto-shared", action="store_true",
                    help="only measure how Mosquitto's shared subscription spreads a device's messages")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
    if args.mqtt_node_kill:
        print(json.dumps(mqtt_node_kill(args)), flush=True)
        return
    if args.mosquitto_shared:
        print(json.dumps(mosquitto_shared_spread()), flush=True)
        return
    if args.uplink:
        print(json.dumps(uplink(args)), flush=True)
        return
    for n in (int(x) for x in args.instances.split(",")):
        r = run_once(args, n)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
