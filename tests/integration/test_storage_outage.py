"""Outages: InfluxDB stopped while telemetry flows, and storage restarted with points still queued."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_harness import eventually, registry, running_storage

from broker.contracts import Channel, Kind, Telemetry, device_topic, encode
from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient
from storage.config import InfluxV1Config, OutboxConfig, StorageConfig, WriterConfig
from storage.query import influx_count, influxql

T0 = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
DEVICES = {f"el-{d}": Kind.ELEVATOR for d in range(20)}


def config(influxdb: Any) -> StorageConfig:
    return StorageConfig(
        backend="influxdb-v1", outbox=OutboxConfig(fsync="interval", fsync_interval_s=0.05),
        writer=WriterConfig(batch_points=500, flush_interval_s=0.05, retry_min_s=0.05, retry_max_s=0.4, timeout_s=2),
        influxdb_v1=InfluxV1Config(url=influxdb.url, database=influxdb.database))


def message(n: int) -> tuple[str, bytes]:
    device = f"el-{n % 20}"
    ts = T0 + timedelta(milliseconds=n)
    return (device_topic(Kind.ELEVATOR, device, Channel.TELEMETRY),
            encode(Telemetry(ts=ts, seq=n, metrics={"speed_mps": (n % 50) / 10, "floor": n % 30})))


def stored_seqs(influxdb: Any) -> list[int]:
    series = influxql(influxdb.url, influxdb.database, 'SELECT "seq" FROM "telemetry_elevator"')
    return sorted(int(v[1]) for s in series for v in s.values)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_influxdb_stopped_while_telemetry_flows_loses_nothing(mosquitto: MosquittoProcess, influxdb: Any,
                                                                    tmp_path: Path, how: str) -> None:
    total = 3000
    async with running_storage(config(influxdb), mosquitto.url, tmp_path / "state", registry(DEVICES)) as run, \
            MqttClient(mosquitto.url, "flow-publisher") as pub:
        for n in range(total):
            if n == 1000:
                await asyncio.to_thread(getattr(influxdb.process, how))  # SIGTERM, or SIGKILL (no clean stop)
            if n == 2000:
                assert run.service.stats()["outbox_pending_lines"] > 0  # the outage is real: points wait
                await asyncio.to_thread(influxdb.process.start)
            await pub.publish(*message(n))
            if n % 100 == 99:
                await asyncio.sleep(0.05)  # about 1,500 msg/s for 2 s: the outage lasts about 0.7 s
        await pub.flush()
        await eventually(lambda: influx_count(influxdb.url, influxdb.database, "telemetry_elevator", "seq") >= total,
                         timeout=30, step=0.2)
        # The last batch is visible in InfluxDB a moment before the outbox records it as written.
        await eventually(lambda: run.service.stats()["outbox_pending_lines"] == 0, timeout=10, step=0.1)
        stats = run.service.stats()
    assert stored_seqs(influxdb) == list(range(total))  # every point, once (count would show duplicates)
    assert stats["writer_retries"] >= 1 and stats["writer_refused_lines"] == 0
    assert stats["outbox_pending_lines"] == 0 and stats["outbox_dropped"] == 0


async def test_points_queued_during_an_outage_survive_a_storage_restart(mosquitto: MosquittoProcess, influxdb: Any,
                                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    reg = registry(DEVICES)
    await asyncio.to_thread(influxdb.process.stop)
    async with running_storage(config(influxdb), mosquitto.url, state, reg, client_id="storage-a") as run, \
            MqttClient(mosquitto.url, "queue-publisher") as pub:
        for n in range(500):
            await pub.publish(*message(n))
        await pub.flush()
        await eventually(lambda: run.service.stats()["stored_telemetry"] == 500, timeout=10, step=0.05)
    # Storage is gone with 500 points in its outbox and InfluxDB still down; a new one starts later.
    await asyncio.to_thread(influxdb.process.start)
    async with running_storage(config(influxdb), mosquitto.url, state, reg, client_id="storage-a") as run:
        assert run.service.outbox.pending_lines == 500
        await eventually(lambda: influx_count(influxdb.url, influxdb.database, "telemetry_elevator", "seq") >= 500,
                         timeout=20, step=0.2)
    assert stored_seqs(influxdb) == list(range(500))
