"""`vigil edge jt808 --nats ... --data-dir` into a real 3-node JetStream cluster, killed with SIGKILL mid-stream.

Real processes and sockets: 3 nats-server nodes (partition mapping, R3 streams), the JT/T 808 gateway
as a child process publishing through the NATS uplink, a terminal over real TCP. The terminal sends
positions; half-way the gateway is SIGKILLed and started again on the same folder. Every position the
gateway acknowledged to the terminal is in the vehicle's partition stream exactly once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.mosquitto import free_port
from broker.nats_transport import ensure_layout, partition_stream
from edge.jt808.messages import (
    AuthRequest,
    MsgId,
    RegisterRequest,
    build_auth,
    build_register,
    parse_general_reply,
    parse_register_reply,
)
from tests.cluster.harness import js_connect, read_stream, start_nats, wait_for
from tests.cluster.test_cluster_uplink import cleanup_cluster
from tests.integration.test_jt808_restart import DEVICE, V2013, Terminal, wait_listening

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def start_gateway(port: int, servers: list[str], data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "vigil.cli", "edge", "jt808", "--listen", f"127.0.0.1:{port}",
                                 "--nats", ",".join(servers), "--accept-unknown-devices", "--data-dir", str(data_dir)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(240)
async def test_jt808_gateway_on_the_nats_uplink_killed_mid_stream(tmp_path: Path) -> None:
    nodes = start_nats(tmp_path / "nats", PARTITIONS)
    servers = [n.node.url for n in nodes]
    port, data_dir, log = free_port(), tmp_path / "jt808", tmp_path / "gateway.log"
    nc, js = await js_connect(servers)
    gateway: subprocess.Popen[bytes] | None = None
    sent: list[float] = []
    try:
        async def created() -> bool:
            try:
                await ensure_layout(js, PARTITIONS, 3, max_age_s=3600, duplicate_window_s=600)
            except Exception:
                return False
            return True

        await wait_for(created, 60, "the partition streams created")
        gateway = start_gateway(port, servers, data_dir, log)
        await wait_listening(port, gateway)
        term = await Terminal.connect(port)
        reply = parse_register_reply(await term.ask(MsgId.REGISTER, build_register(
            RegisterRequest(33, 100, "VIGIL", "SIM-808", "T009001", 2, "浙A39001"), V2013)))
        assert reply.result == 0
        assert parse_general_reply(await term.ask(MsgId.AUTHENTICATE, build_auth(AuthRequest(reply.auth_code),
                                                                                  V2013))).result == 0
        base = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
        for i in range(40):
            at = base + timedelta(seconds=i)
            await term.position(0, at)
            sent.append(at.timestamp())
            if i == 19:
                # The gateway answers a position before its publish queue hands it to the outbox (edge/runtime/
                # server.py); kill it once the last one is on disk, in the outbox or already in the stream.
                await wait_for(lambda: _durable(data_dir, js, sent[-1]), 30, "the last position on disk")
                gateway.send_signal(signal.SIGKILL)  # a crash: records in the outbox, some maybe unsent
                gateway.wait(timeout=10)
                term.close()
                gateway = start_gateway(port, servers, data_dir, log)
                await wait_listening(port, gateway)
                term = await Terminal.connect(port)
                assert parse_general_reply(await term.ask(MsgId.AUTHENTICATE, build_auth(
                    AuthRequest(reply.auth_code), V2013))).result == 0
        term.close()

        async def positions() -> list[float]:
            return await _stream_positions(js)

        seen: list[float] = []

        async def all_in() -> bool:
            seen[:] = await positions()
            return set(seen) >= set(sent)

        await wait_for(all_in, 60, lambda: f"positions in the streams: missing {sorted(set(sent) - set(seen))}; "
                       "gateway log:\n" + log.read_text(errors="replace")[-3000:])
        got = await positions()
        assert sorted(got) == sent, f"missing {sorted(set(sent) - set(got))}, extra {len(got) - len(set(got))}"
    finally:
        try:
            if gateway is not None and gateway.poll() is None:
                gateway.terminate()
                try:
                    gateway.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    gateway.kill()
                    gateway.wait(timeout=10)
        finally:
            await cleanup_cluster(nc, nodes)


async def _stream_positions(js: Any) -> list[float]:
    """The times of the vehicle's positions in the partition streams, in stream order."""
    out: list[float] = []
    for p in range(PARTITIONS):
        for m in await read_stream(js, partition_stream(p)):
            if m.subject.endswith(f".vehicle.{DEVICE}.telemetry"):
                out.append(_ts(m.data))
    return out


async def _durable(data_dir: Path, js: Any, ts: float) -> bool:
    """Whether the position of time ``ts`` is in the gateway's outbox file or already in a stream."""
    with contextlib.closing(sqlite3.connect(data_dir / "outbox.sqlite3")) as db:
        rows = db.execute("SELECT payload FROM outbox WHERE topic LIKE '%/telemetry'").fetchall()
    return any(_ts(bytes(r[0])) == ts for r in rows) or ts in await _stream_positions(js)


def _ts(payload: bytes) -> float:
    return datetime.fromisoformat(json.loads(payload)["ts"].replace("Z", "+00:00")).timestamp()
