"""One contract for every storage backend, against real servers (InfluxDB 1.6, VictoriaMetrics, SQLite).

- lines written come back with their values and timestamps;
- writing the same batch again (a retry after a lost answer) changes no query result;
- a server that is down is ``BackendUnavailable`` (retry), never ``PointsRefused`` (drop);
- HTTP statuses are classified the same way by both HTTP backends (scripted server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.contracts import Kind, Telemetry
from broker.mosquitto import free_port
from storage.backends import (
    BackendUnavailable,
    PointsRefused,
    StorageBackend,
    backend_keys,
    create_backend,
)
from storage.config import InfluxV1Config, InfluxV2Config, SqliteConfig, StorageConfig, WriterConfig
from storage.lineproto import LineEncoder, parse_line
from storage.localservers import LocalServer
from storage.query import influxql, sqlite_points, vm_export

T0 = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)


@dataclass
class Target:
    """A backend under test and how to read a numeric field back: {(device, ts_ms): value}."""

    config: StorageConfig
    state_dir: Path
    read: Callable[[str, str], dict[tuple[str, int], float]]
    server: LocalServer | None


@pytest.fixture(params=["sqlite", "influxdb-v1", "influxdb-v2"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
    writer = WriterConfig(timeout_s=3.0)
    if kind == "sqlite":
        cfg = StorageConfig(backend="sqlite", sqlite=SqliteConfig(path="pts.sqlite3"), writer=writer)

        def read_sqlite(measurement: str, field: str) -> dict[tuple[str, int], float]:
            return {(p.tags["device"], p.ts // 1_000_000): float(p.fields[field])
                    for p in sqlite_points(tmp_path / "pts.sqlite3", measurement) if field in p.fields}

        yield Target(cfg, tmp_path, read_sqlite, None)
    elif kind == "influxdb-v1":
        server = request.getfixturevalue("influxdb")
        cfg = StorageConfig(backend="influxdb-v1", writer=writer,
                            influxdb_v1=InfluxV1Config(url=server.url, database=server.database))

        def read_v1(measurement: str, field: str) -> dict[tuple[str, int], float]:
            out = {}
            for s in influxql(server.url, server.database,
                              f'SELECT "{field}" FROM "{measurement}" GROUP BY "device"', epoch="ms"):
                for ts, value in s.values:
                    out[(s.tags["device"], int(ts))] = float(value)
            return out

        yield Target(cfg, tmp_path, read_v1, server.process)
    else:
        vm = request.getfixturevalue("victoria_metrics")
        cfg = StorageConfig(backend="influxdb-v2", writer=writer,
                            influxdb_v2=InfluxV2Config(url=vm.url, org="vigil", bucket="vigil", token="t0ken"))

        def read_vm(measurement: str, field: str) -> dict[tuple[str, int], float]:
            vm.force_flush()
            out = {}
            for s in vm_export(vm.url, f'{{__name__="{measurement}_{field}"}}'):
                for ts, value in zip(s["timestamps"], s["values"], strict=True):
                    out[(s["metric"]["device"], int(ts))] = float(value)
            return out

        yield Target(cfg, tmp_path, read_vm, vm)


@pytest.fixture
async def backend(target: Target) -> AsyncIterator[StorageBackend]:
    b = create_backend(target.config, target.state_dir)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


def telemetry_batch(devices: int = 5, per_device: int = 20) -> tuple[bytes, dict[tuple[str, int], float]]:
    enc = LineEncoder()
    lines, expected = [], {}
    for d in range(devices):
        for i in range(per_device):
            ts = T0 + timedelta(milliseconds=250 * i + d)
            speed = round(0.1 * i + d, 3)
            line = enc.telemetry(Kind.ELEVATOR, f"el-{d}", "tower-a", Telemetry(
                ts=ts, metrics={"speed_mps": speed, "floor": i % 12, "door_zone": i % 2 == 0, "door": "closed"}))
            assert line is not None
            lines.append(line)
            expected[(f"el-{d}", int(ts.timestamp() * 1000))] = speed
    return "\n".join(lines).encode(), expected


def test_every_builtin_backend_is_registered() -> None:
    assert backend_keys() == ["influxdb-v1", "influxdb-v2", "sqlite"]


async def test_points_come_back_and_a_replay_changes_nothing(target: Target, backend: StorageBackend) -> None:
    body, expected = telemetry_batch()
    await backend.write(body, len(expected))
    first = await asyncio.to_thread(target.read, "telemetry_elevator", "speed_mps")
    assert first == expected
    await backend.write(body, len(expected))  # the answer was lost: the drainer sends it again
    assert await asyncio.to_thread(target.read, "telemetry_elevator", "speed_mps") == first
    floors = await asyncio.to_thread(target.read, "telemetry_elevator", "floor")
    assert sorted(set(floors.values())) == [float(f) for f in range(12)]


async def test_a_stopped_server_means_retry(target: Target, backend: StorageBackend) -> None:
    body, expected = telemetry_batch(1, 3)
    if target.server is None:
        # SQLite has no server; a file it cannot open is its way of being unavailable.
        blocked = target.state_dir / "blocked"
        blocked.write_text("not a folder")
        cfg = StorageConfig(backend="sqlite", sqlite=SqliteConfig(path=str(blocked / "x.sqlite3")))
        with pytest.raises(BackendUnavailable):
            await create_backend(cfg, target.state_dir).write(body, len(expected))
        return
    target.server.stop()
    try:
        with pytest.raises(BackendUnavailable):
            await backend.write(body, len(expected))
    finally:
        target.server.start()
    await backend.write(body, len(expected))
    assert await asyncio.to_thread(target.read, "telemetry_elevator", "speed_mps") == expected


async def test_influxdb_1x_refuses_a_type_conflict_as_bad_points(influxdb: Any, tmp_path: Path) -> None:
    cfg = StorageConfig(backend="influxdb-v1", influxdb_v1=InfluxV1Config(url=influxdb.url, database="fresh"))
    b = create_backend(cfg, tmp_path)
    await b.open()  # creates the database
    try:
        await b.write(b"m,device=a v=1.0 1700000000000000000", 1)
        with pytest.raises(PointsRefused) as err:
            await b.write(b'm,device=a v="text" 1700000000001000000', 1)
        assert err.value.status == 400 and "conflict" in err.value.detail
    finally:
        await b.close()


async def test_sqlite_refuses_unparsable_lines(tmp_path: Path) -> None:
    b = create_backend(StorageConfig(), tmp_path)
    try:
        with pytest.raises(PointsRefused):
            await b.write(b"m v=1.0 1\nnot line protocol", 2)
    finally:
        await b.close()


# ---------------------------------------------------------------------------- status classification

@pytest.fixture
async def scripted_server() -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP server answering every write with the next scripted status (a timeout for 0)."""
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        status = statuses.pop(0)
        if status == 0:
            await asyncio.sleep(1.0)  # longer than the client timeout of 0.5 s
        return web.Response(status=status, text='{"error":"scripted"}')

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", statuses
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("key", ["influxdb-v1", "influxdb-v2"])
@pytest.mark.parametrize(("status", "error"), [
    (204, None), (400, PointsRefused), (413, PointsRefused), (422, PointsRefused),
    (401, BackendUnavailable), (403, BackendUnavailable), (404, BackendUnavailable), (429, BackendUnavailable),
    (500, BackendUnavailable), (503, BackendUnavailable), (0, BackendUnavailable),
])
async def test_http_status_classification(scripted_server: tuple[str, list[int]], tmp_path: Path, key: str,
                                          status: int, error: type[Exception] | None) -> None:
    url, statuses = scripted_server
    writer = WriterConfig(timeout_s=0.5)
    cfg = StorageConfig(backend=key, writer=writer,  # type: ignore[arg-type]
                        influxdb_v1=InfluxV1Config(url=url, create_database=False),
                        influxdb_v2=InfluxV2Config(url=url, token="t"))
    b = create_backend(cfg, tmp_path)
    await b.open()
    statuses.append(status)
    try:
        if error is None:
            await b.write(b"m v=1.0 1", 1)
        else:
            with pytest.raises(error):
                await b.write(b"m v=1.0 1", 1)
    finally:
        await b.close()


async def test_influxdb_1x_reads_escaped_names_and_strings_as_the_parser_does(influxdb: Any, tmp_path: Path) -> None:
    site = 'Tower A, east=1 \\ 电梯\t"q"'
    note = 'say "hi" \\ back\\slash, a=b\nnext line 中文'
    line = LineEncoder().telemetry(Kind.SENSOR, "s-1", site, Telemetry(ts=T0, metrics={"note": note, "odd key,=": 1.5}))
    assert line is not None
    expected = parse_line(line)
    cfg = StorageConfig(backend="influxdb-v1", influxdb_v1=InfluxV1Config(url=influxdb.url, database=influxdb.database))
    b = create_backend(cfg, tmp_path)
    await b.open()
    try:
        await b.write(line.encode(), 1)
    finally:
        await b.close()
    series = await asyncio.to_thread(influxql, influxdb.url, influxdb.database,
                                     'SELECT "note", "odd key,=" FROM "telemetry_sensor" GROUP BY *')
    assert len(series) == 1
    assert series[0].tags == expected.tags
    row = series[0].rows()[0]
    assert row["note"] == expected.fields["note"] and row["odd key,="] == 1.5
    assert row["time"] == expected.ts
