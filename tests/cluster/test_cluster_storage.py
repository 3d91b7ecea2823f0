"""Storage, /health and /metrics in cluster mode: real nats-server nodes, real `vigil run` instances, real InfluxDB.

Two instances (rules + storage + alerting) share 4 partitions of a 3-node NATS JetStream cluster.
Both answer /health and /metrics over HTTP with the cluster's facts. Then 8 devices behind gateways
publish numbered telemetry NATS-native at 10 Hz. InfluxDB is stopped at 3 s, so each instance's
storage outbox fills with lines it cannot write; at 6 s the instance holding some partitions (not
alerting) is SIGKILLed and never restarted, taking its undrained outbox with it; at 8 s InfluxDB comes
back. The survivor takes the partitions over, re-stores what the dead instance's checkpoints did not
mark as written (``stored_seq``) and goes on. Checked: every message acknowledged to a publisher is a
point in InfluxDB; the survivor caught up from the dead instance's stored position; the survivor's
/health shows every partition held.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    GatewayDevice,
    InstanceProc,
    checkpoint,
    episode_metrics,
    health_base,
    http_get,
    instance_health,
    js_connect,
    leases,
    partition_streams,
    start_nats,
    wait_for,
)
from tests.conftest import InfluxServer
from tests.faults.harness import Receiver

PARTITIONS = 4
DEVICES = 8
RATE = 10.0
DURATION_S = 14.0


def _influxql(influx: InfluxServer, q: str) -> list[dict[str, Any]]:
    """Rows of an InfluxQL query, each with its series' tags (empty while InfluxDB does not answer)."""
    url = f"{influx.url}/query?" + urllib.parse.urlencode({"db": influx.database, "q": q, "epoch": "ms"})
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            body = json.loads(resp.read())
    except OSError:
        return []
    rows = []
    for result in body.get("results", []):
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(dict(zip(series["columns"], values, strict=True)) | series.get("tags", {}))
    return rows


def _influx_seqs(influx: InfluxServer) -> dict[str, set[int]]:
    """device -> the ``seq`` fields stored in InfluxDB."""
    out: dict[str, set[int]] = {}
    for row in _influxql(influx, 'SELECT "seq" FROM "telemetry_elevator" GROUP BY "device"'):
        if row.get("seq") is not None:
            out.setdefault(row["device"], set()).add(int(row["seq"]))
    return out


def _alert_states(influx: InfluxServer) -> set[tuple[str, str]]:
    """(device, status) of the alert state points stored."""
    rows = _influxql(influx, 'SELECT "id" FROM "alerts" GROUP BY "device", "status"')
    return {(r["device"], r["status"]) for r in rows}


async def _check_endpoints(tmp: Path, name: str) -> dict[str, Any]:
    """/health (JSON with the cluster's facts) and /metrics (Prometheus text) of one instance, over HTTP."""
    report = await wait_for(lambda: _held_report(tmp, name), 60, f"{name}'s /health with partitions")
    cluster = report["stats"]["cluster"]
    assert cluster["nats_connected"] is True and cluster["nats_server"]
    assert cluster["partitions_total"] == PARTITIONS
    assert cluster["partitions_held"] == len(cluster["partitions"]) >= 1
    for key, p in cluster["partitions"].items():
        assert key in cluster["leases"], key
        assert {"lag", "checkpoint_age_s", "seq", "stored_seq"} <= set(p)
    assert "checkpoint" in report["checks"] and "broker" in report["checks"]
    base = health_base(tmp, name)
    status, text = await http_get(f"{base}/metrics")
    assert status == 200
    assert f'vigil_cluster_partitions_held{{node="{name}"}} {cluster["partitions_held"]}' in text
    assert f'vigil_cluster_nats_connected{{node="{name}"}} 1' in text
    assert "_checkpoint_age_s{" in text and "_lag{" in text
    return report


async def _held_report(tmp: Path, name: str) -> dict[str, Any] | None:
    report = await instance_health(tmp, name)
    if report is None or not report["stats"]["cluster"]["partitions"]:
        return None
    # Every held partition has checkpointed once (its age is known).
    if any(p["checkpoint_age_s"] < 0 for p in report["stats"]["cluster"]["partitions"].values()):
        return None
    return report


@pytest.mark.timeout(400)
async def test_storage_lands_every_point_across_an_instance_kill(tmp_path: Path, influxdb: InfluxServer) -> None:
    receiver = Receiver()
    await receiver.start()
    nodes = start_nats(tmp_path / "nats", PARTITIONS)
    servers = [n.node.url for n in nodes]
    extra = {
        "services": ["rules", "storage", "alerting"],
        "storage": {"backend": "influxdb-v1",
                    "influxdb_v1": {"url": influxdb.url, "database": influxdb.database, "create_database": True},
                    "writer": {"timeout_s": 2.0}},
        "health": {"interval_s": 1.0},
    }
    instances = [InstanceProc(tmp_path, f"inst-{c}", servers, PARTITIONS, receiver.url("duty"), extra=extra)
                 for c in "ab"]
    devices: list[GatewayDevice] = []
    nc = None
    influx_stopped = False
    try:
        for inst in instances:
            inst.start()
        nc, js = await js_connect(servers)
        wanted = {f"p{n}" for n in range(PARTITIONS)} | {"alerting"}

        async def shared() -> bool:
            owners = await leases(js)
            return set(owners) >= wanted and len({v for k, v in owners.items() if k.startswith("p")}) == 2

        await wait_for(shared, 90, lambda: "partitions leased by both instances; "
                       + "\n".join(i.log_tail(8) for i in instances))
        for inst in instances:
            await _check_endpoints(tmp_path, inst.name)

        devices = [GatewayDevice(f"elev-s{i:02d}", servers[i % 3:] + servers[:i % 3]) for i in range(DEVICES)]
        for d in devices:
            await d.start()
        # One message no stage can read: its partition's ingest dead-letters it, and storage keeps the letter.
        await js.publish("vigil.v1.elevator.elev-bad.telemetry", b"{not json")
        base = time.time()
        total = int(DURATION_S * RATE)
        victim: InstanceProc | None = None
        moved: set[str] = set()
        for seq in range(total):
            await asyncio.sleep(max(0.0, base + seq / RATE - time.time()))
            for d in devices:
                d.publish(seq, base + seq / RATE, episode_metrics(seq, 10_000, 10_000))
            if seq == int(3 * RATE):
                influx_stopped = True
                await asyncio.to_thread(influxdb.process.stop)  # the loop keeps the devices publishing
            if seq == int(6 * RATE):
                owners = await leases(js)
                victim = next(i for i in instances if owners.get("alerting") != i.name)
                moved = {k for k, v in owners.items() if v == victim.name and k.startswith("p")}
                assert moved, f"{victim.name} holds no partition: {owners}"
                # Killed while lines it could not write wait in its outbox (InfluxDB is down).
                name = victim.name
                await wait_for(lambda: _undrained(tmp_path, name), 60, f"{name}'s outbox to fill")  # noqa: B023
                victim.kill()
            if seq == int(8 * RATE):
                await asyncio.to_thread(influxdb.process.start)
                influx_stopped = False
        assert victim is not None
        survivor = next(i for i in instances if i is not victim)

        await wait_for(lambda: all(d.unacked == 0 for d in devices), 90,
                       lambda: f"devices' messages stored in the streams: {[d.unacked for d in devices]}")
        streams = await partition_streams(js, PARTITIONS)
        last_seq = {p: (msgs[-1].metadata.sequence.stream if msgs else 0) for p, msgs in streams.items()}

        async def written() -> bool:
            for p in range(PARTITIONS):
                doc = await checkpoint(js, p)
                if doc is None or doc["seq"] < last_seq[p] or doc.get("stored_seq", 0) < last_seq[p]:
                    return False
            return True

        await wait_for(written, 120, lambda: "every partition's checkpoint stored to its stream's end; "
                       + survivor.log_tail(15))
        expected = {d.device_id: set(d.acked) for d in devices}
        assert all(len(v) == total for v in expected.values())

        def complete() -> bool:
            got = _influx_seqs(influxdb)
            return all(expected[dev] <= got.get(dev, set()) for dev in expected)

        try:
            await wait_for(complete, 60, "every acknowledged message in InfluxDB", step=1.0)
        except AssertionError:
            got = _influx_seqs(influxdb)
            missing = {dev: sorted(expected[dev] - got.get(dev, set()))[:10] for dev in expected}
            raise AssertionError(f"points missing from InfluxDB: {missing}\n{survivor.log_tail(20)}") from None

        # Alert state changes (the overspeed episodes, told by the alerting holder) and the dead letter are stored.
        wanted_states = {(d.device_id, st) for d in devices for st in ("firing", "resolved")}
        await wait_for(lambda: wanted_states <= _alert_states(influxdb), 60,
                       lambda: f"alert states in InfluxDB; missing {sorted(wanted_states - _alert_states(influxdb))[:6]}",
                       step=1.0)
        letters = _influxql(influxdb, 'SELECT "topic" FROM "dead_letters"')
        assert any(r["topic"] == "vigil/v1/elevator/elev-bad/telemetry" for r in letters), letters

        # The survivor holds everything, took the dead instance's partitions from their checkpoints and
        # re-stored what the dead instance had not written (its outbox died with it).
        report = await wait_for(lambda: _all_held(tmp_path, survivor.name), 60, "the survivor's /health")
        cluster = report["stats"]["cluster"]
        assert cluster["partitions_held"] == PARTITIONS and cluster["alerting_held"] is True
        workers = report["stats"]["workers"]
        caught_up = {k: workers[k]["storage"]["caught_up"] for k in moved}
        assert sum(caught_up.values()) > 0, f"no storage catch-up on the taken-over partitions: {caught_up}"
        for k in moved:
            doc = await checkpoint(js, int(k[1:]))
            assert doc is not None and doc["owner"] == survivor.name
        await _check_endpoints(tmp_path, survivor.name)
        stored = _influx_seqs(influxdb)
        print(f"\ncluster storage: {DEVICES} devices x {total} messages, all {sum(len(v) for v in expected.values())} "
              f"in InfluxDB ({sum(len(v) for v in stored.values())} distinct points); {victim.name} killed holding "
              f"{sorted(moved)}; re-stored after takeover: {caught_up}")
    finally:
        for d in devices:
            await d.stop()
        if nc is not None:
            await nc.close()
        for inst in instances:
            inst.stop()
        for n in nodes:
            n.stop()
        if influx_stopped:
            influxdb.process.start()
        await receiver.stop()


async def _all_held(tmp: Path, name: str) -> dict[str, Any] | None:
    report = await instance_health(tmp, name)
    if report is None or report["stats"]["cluster"]["partitions_held"] != PARTITIONS:
        return None
    return report


async def _undrained(tmp: Path, name: str) -> bool:
    report = await instance_health(tmp, name)
    if report is None:
        return False
    workers = report["stats"]["workers"]
    return any(w.get("storage", {}).get("outbox_pending_lines", 0) > 0 for k, w in workers.items() if k.startswith("p"))
