"""``writer.gzip_level: 0`` sends bodies uncompressed (a local InfluxDB) and they land like gzip'd ones.

Also the private InfluxDB's Go GC target (``InfluxdProcess.GOGC``) reaches the server process.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from broker.contracts import Kind, Telemetry
from broker.mosquitto import free_port
from storage.backends import PointsRefused, compress, create_backend
from storage.config import InfluxV1Config, InfluxV2Config, StorageConfig, WriterConfig
from storage.lineproto import LineEncoder
from storage.localservers import InfluxdProcess, VictoriaMetricsProcess
from storage.query import influx_count, vm_sample_count
from tests.conftest import InfluxServer

T0 = datetime(2026, 12, 3, 6, 0, 0, tzinfo=UTC)
PLAIN = WriterConfig(gzip_level=0, timeout_s=5.0)


def body(count: int) -> bytes:
    enc = LineEncoder()
    lines = []
    for i in range(count):
        line = enc.telemetry(Kind.ELEVATOR, f"el-{i % 7}", "tower-a", Telemetry(
            ts=T0 + timedelta(milliseconds=i), metrics={"speed_mps": i / 10, "door": 'say "closed"', "floor": i % 9}))
        assert line is not None
        lines.append(line)
    return "\n".join(lines).encode()


async def test_level_zero_is_the_body_itself_and_level_one_is_gzip() -> None:
    data = body(50)
    assert await compress(data, 0) is data
    assert (await compress(data, 1))[:2] == b"\x1f\x8b"


async def test_influxdb_v1_stores_uncompressed_bodies_and_still_refuses_bad_lines(influxdb: InfluxServer) -> None:
    cfg = StorageConfig(backend="influxdb-v1", writer=PLAIN,
                        influxdb_v1=InfluxV1Config(url=influxdb.url, database=influxdb.database))
    backend = create_backend(cfg, Path("."))
    await backend.open()
    try:
        await backend.write(body(3000), 3000)
        with pytest.raises(PointsRefused):
            await backend.write(b"telemetry_elevator,device=x speed_mps=oops 1", 1)
    finally:
        await backend.close()
    count = await asyncio.to_thread(influx_count, influxdb.url, influxdb.database, "telemetry_elevator", "speed_mps")
    assert count == 3000


async def test_influxdb_v2_api_stores_uncompressed_bodies(victoria_metrics: VictoriaMetricsProcess) -> None:
    cfg = StorageConfig(backend="influxdb-v2", writer=PLAIN, influxdb_v2=InfluxV2Config(
        url=victoria_metrics.url, org="vigil", bucket="vigil", token="t0ken"))
    backend = create_backend(cfg, Path("."))
    await backend.open()
    try:
        await backend.write(body(200), 200)
    finally:
        await backend.close()
    victoria_metrics.force_flush()
    assert await asyncio.to_thread(vm_sample_count, victoria_metrics.url, '{__name__="telemetry_elevator_speed_mps"}') == 200


async def test_the_v1_request_says_how_its_body_is_encoded() -> None:
    seen: list[tuple[str | None, bytes]] = []

    async def on_write(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Content-Encoding"), await request.content.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/write", on_write)
    runner = web.AppRunner(app, auto_decompress=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        data = body(20)
        for level in (0, 1):
            cfg = StorageConfig(backend="influxdb-v1", writer=WriterConfig(gzip_level=level), influxdb_v1=InfluxV1Config(
                url=f"http://127.0.0.1:{port}", database="vigil", create_database=False))
            backend = create_backend(cfg, Path("."))
            try:
                await backend.write(data, 20)
            finally:
                await backend.close()
    finally:
        await runner.cleanup()
    assert seen[0] == (None, data)
    assert seen[1][0] == "gzip" and seen[1][1][:2] == b"\x1f\x8b"


def test_the_private_influxd_runs_with_its_gc_target(influxdb: InfluxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = influxdb.process.proc
    assert proc is not None
    env = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    assert f"GOGC={InfluxdProcess.GOGC}".encode() in env or f"GOGC={os.environ.get('GOGC')}".encode() in env
    monkeypatch.setenv("GOGC", "150")
    assert InfluxdProcess(Path("unused")).environment() == {}
