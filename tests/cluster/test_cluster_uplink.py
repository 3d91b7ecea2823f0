"""The NATS uplink of the edge link on a real 3-node JetStream cluster: kill -9 a node, and the whole cluster.

A gateway's outbox (``edge.runtime.nats_link.NatsEdgeLink``) publishes its records as JetStream
publishes on the device subjects; the servers' mapping puts each device in one partition stream (R3).
A record leaves the outbox only after its stream's PubAck, with ``Nats-Msg-Id`` from the record.

- A node is SIGKILLed mid-stream (the node the link is connected to, so the link must fail over) and
  restarted: every record is in its device's partition stream exactly once, in the device's order.
- The whole cluster is SIGKILLed: records written meanwhile stay in the outbox on disk, across a
  restart of the link itself, and are all delivered, once, after the cluster is back. Before that,
  records already stored by "a previous run" (published with their ids, still in the outbox) are sent
  again and dropped by the streams as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.contracts import Telemetry, encode
from broker.mqtt import Message
from broker.nats_server import NatsNodeProcess
from broker.nats_transport import ensure_layout, partition_stream, topic_to_subject
from edge.runtime.identity import EdgeIdentity
from edge.runtime.nats_link import NatsEdgeLink, NatsLinkPublisher, record_msg_id
from edge.runtime.outbox import OutboxMessage
from edge.runtime.uplink import Uplink, open_uplink
from tests.cluster.harness import js_connect, read_stream, start_nats, wait_for

PARTITIONS = 6
DEVICES = 12


def _record(device: int, seq: int) -> tuple[str, bytes]:
    payload = encode(Telemetry(ts=datetime.fromtimestamp(time.time(), UTC), seq=seq, metrics={"speed_mps": 1.0}))
    return f"vigil/v1/elevator/elev-u{device:02d}/telemetry", payload


async def _layout(servers: list[str]) -> tuple[Any, Any]:
    nc, js = await js_connect(servers)

    async def created() -> bool:
        try:
            await ensure_layout(js, PARTITIONS, 3, max_age_s=3600, duplicate_window_s=600)
        except Exception:
            return False  # the cluster is still electing its meta leader
        return True

    await wait_for(created, 60, "the partition streams created")
    return nc, js


async def _per_device(js: Any) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
    """Each device's telemetry sequence numbers in stream order, and the partitions it was found in."""
    seqs: dict[str, list[int]] = defaultdict(list)
    parts: dict[str, set[int]] = defaultdict(set)
    for p in range(PARTITIONS):
        for m in await read_stream(js, partition_stream(p)):
            tokens = m.subject.split(".")
            if tokens[5] != "telemetry":
                continue  # the gateway's own status
            seqs[tokens[4]].append(int(json.loads(m.data)["seq"]))
            parts[tokens[4]].add(p)
    return seqs, parts


def _outbox_records(data_dir: Path) -> list[OutboxMessage]:
    """The records stored in an outbox folder, read beside the link that owns it."""
    with contextlib.closing(sqlite3.connect(data_dir / "outbox.sqlite3")) as db:
        rows = db.execute("SELECT seq, topic, payload, retain, queued_at FROM outbox ORDER BY seq").fetchall()
    return [OutboxMessage(int(r[0]), str(r[1]), bytes(r[2]), bool(r[3]), float(r[4])) for r in rows]


def _link(servers: list[str], data_dir: Path) -> NatsEdgeLink:
    return NatsEdgeLink(servers, EdgeIdentity.for_gateway("gw-uplink", agent="vigil-test"), data_dir,
                        publish_timeout_s=2.0, backoff_max=1.0, heartbeat_s=2.0)


def _node_of(link: NatsEdgeLink, nodes: list[NatsNodeProcess]) -> NatsNodeProcess:
    assert link.nc is not None and link.nc.connected_url is not None
    port = link.nc.connected_url.port
    return next(n for n in nodes if n.node.client_port == port)


@pytest.mark.timeout(300)
async def test_node_killed_mid_stream_every_record_once(tmp_path: Path) -> None:
    nodes = start_nats(tmp_path / "nats", PARTITIONS)
    servers = [n.node.url for n in nodes]
    nc = None
    try:
        nc, js = await _layout(servers)
        # The way a gateway opens it: the uplink chosen by configuration (NATS servers and a data folder).
        async with open_uplink("mqtt://127.0.0.1:1", client_id="unused", data_dir=tmp_path / "outbox",
                               gateway_name="gw-uplink", agent="vigil-test", nats_servers=servers,
                               publish_timeout_s=2.0, backoff_max=1.0, heartbeat_s=2.0) as uplink:
            assert isinstance(uplink.sink, NatsLinkPublisher)
            commands: list[Message] = []
            uplink.subscribe("vigil/v1/elevator/+/command", commands.extend)
            await _stream_with_node_killed(uplink, uplink.sink.link, nodes, nc, js, commands)
    finally:
        await cleanup_cluster(nc, nodes)


async def cleanup_cluster(nc: Any, nodes: list[NatsNodeProcess]) -> None:
    """Close the test's client and stop every node, whatever fails on the way (nodes outlive the test otherwise)."""
    try:
        if nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await nc.close()
    finally:
        for n in nodes:
            try:
                n.stop()
            except Exception:
                n.kill()


async def _stream_with_node_killed(uplink: Uplink, link: NatsEdgeLink, nodes: list[NatsNodeProcess], nc: Any,
                                   js: Any, commands: list[Message]) -> None:
    """Stream 12 devices x 150 records while the link's node is killed and restarted; check the streams."""
    assert await link.wait_connected(30)
    # A platform command on plain NATS (mapped into a partition like every device subject) reaches
    # the gateway under its MQTT topic.
    await wait_for(lambda: link.counters["connects"] >= 1, 10, "subscribed")
    assert link.nc is not None
    await link.nc.flush()
    await nc.publish("vigil.v1.elevator.elev-u03.command", b'{"cmd": "ping"}')
    await wait_for(lambda: commands, 10, "the command")
    assert [(m.topic, m.payload) for m in commands] == [("vigil/v1/elevator/elev-u03/command", b'{"cmd": "ping"}')]
    rounds, rate = 150, 10.0  # 12 devices x 150 records over 15 s
    start = time.time()
    killed: NatsNodeProcess | None = None
    for seq in range(rounds):
        await asyncio.sleep(max(0.0, start + seq / rate - time.time()))
        for d in range(DEVICES):
            await uplink.publish(*_record(d, seq))
        if seq == 40:
            killed = _node_of(link, nodes)  # the link's own node: it has to fail over
            killed.kill()
        if seq == 100:
            assert killed is not None
            killed.start()
    await wait_for(lambda: len(link.outbox) == 0 and link.in_flight == 0, 120,
                   lambda: f"outbox delivered: {link.stats()}")
    assert link.counters["disconnects"] >= 1, "the killed node was not the link's"
    assert link.outbox.delivered == rounds * DEVICES and link.outbox.dropped == 0

    seqs, parts = await _per_device(js)
    assert sorted(seqs) == [f"elev-u{d:02d}" for d in range(DEVICES)]
    for device, got in seqs.items():
        assert len(parts[device]) == 1, f"{device} in partitions {parts[device]}"
        assert got == list(range(rounds)), (
            f"{device}: missing {sorted(set(range(rounds)) - set(got))[:10]}, "
            f"duplicated {sorted(s for s in set(got) if got.count(s) > 1)[:10]}, in order {got == sorted(got)}")
    print(f"\nuplink: {rounds * DEVICES} records, node {killed.node.name if killed else '?'} killed and "
          f"restarted; {link.stats()}")


@pytest.mark.timeout(300)
async def test_records_written_while_cluster_down_delivered_after(tmp_path: Path) -> None:
    nodes = start_nats(tmp_path / "nats", PARTITIONS)
    servers = [n.node.url for n in nodes]
    nc = first = second = None
    before, during = 20, 100
    try:
        nc, js = await _layout(servers)
        first = _link(servers, tmp_path / "outbox")
        for seq in range(before):
            for d in range(DEVICES):
                first.publish(*_record(d, seq))
        # As if a previous run had these stored and died before removing them from its outbox: the
        # same records are sent again with the same ids, and the streams keep one copy.
        stored_before = _outbox_records(tmp_path / "outbox")[: before * DEVICES // 2]
        for message in stored_before:
            await js.publish(topic_to_subject(message.topic), message.payload,
                             headers={"Nats-Msg-Id": record_msg_id(first.identity.client_id, message)})
        await nc.close()
        nc = None
        await first.start()
        await wait_for(lambda: first is not None and len(first.outbox) == 0, 60, "records before the outage")
        assert first.counters["duplicates"] == len(stored_before)

        for n in nodes:
            n.kill()
        await wait_for(lambda: first is not None and not first.connected, 30, "the link to notice the outage")
        for seq in range(before, before + during):
            for d in range(DEVICES):
                first.publish(*_record(d, seq))
        await asyncio.sleep(2.0)  # publishes tried meanwhile fail and stay queued
        assert len(first.outbox) == during * DEVICES
        await first.stop(timeout=1.0)
        first = None

        # A restarted gateway finds its outbox on disk; the cluster comes back after it.
        second = _link(servers, tmp_path / "outbox")
        assert len(second.outbox) == during * DEVICES
        await second.start()
        await asyncio.sleep(1.0)
        assert not second.connected
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_listening()
        await wait_for(lambda: second is not None and len(second.outbox) == 0 and second.in_flight == 0, 120,
                       lambda: f"outbox delivered after the outage: {second.stats() if second else {}}")

        nc, js = await js_connect(servers)
        seqs, parts = await _per_device(js)
        assert sorted(seqs) == [f"elev-u{d:02d}" for d in range(DEVICES)]
        for device, got in seqs.items():
            assert len(parts[device]) == 1, f"{device} in partitions {parts[device]}"
            assert got == list(range(before + during)), f"{device}: {got}"
        print(f"\nuplink outage: {during * DEVICES} records kept on disk across the outage and a restart; "
              f"{second.stats()}")
    finally:
        try:
            for link in (first, second):
                if link is not None:
                    await link.stop()
        finally:
            await cleanup_cluster(nc, nodes)
