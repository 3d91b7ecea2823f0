"""StorageService end to end: real Mosquitto, real InfluxDB 1.6 (v1 API) and VictoriaMetrics (v2 API)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from storage_harness import eventually, registry, running_storage

from broker.contracts import (
    Alert,
    AlertStatus,
    Channel,
    DeviceEvent,
    DeviceStatus,
    Kind,
    Severity,
    Telemetry,
    alert_topic,
    device_topic,
    encode,
)
from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient
from storage.config import InfluxV1Config, InfluxV2Config, OutboxConfig, StorageConfig, WriterConfig
from storage.query import influx_count, influxql, sqlite_points, vm_sample_count

T0 = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
WRITER = WriterConfig(flush_interval_s=0.05, retry_min_s=0.05, retry_max_s=0.5, timeout_s=3.0)
DEVICES = {"el-1": Kind.ELEVATOR, "truck-7": Kind.VEHICLE, "stack-2": Kind.EMISSION, "cam-3": Kind.CAMERA}


def v1_config(influxdb: Any) -> StorageConfig:
    return StorageConfig(backend="influxdb-v1", writer=WRITER, outbox=OutboxConfig(fsync="off"),
                         influxdb_v1=InfluxV1Config(url=influxdb.url, database=influxdb.database))


async def publish_scene(pub: MqttClient) -> None:
    for i in range(10):
        ts = T0 + timedelta(seconds=i)
        await pub.publish(device_topic(Kind.ELEVATOR, "el-1", Channel.TELEMETRY), encode(Telemetry(
            ts=ts, seq=i, metrics={"speed_mps": i * 0.1 if i else 0, "floor": i, "door": "closed",
                                   "door_zone": True, "occupancy": 2})))
        await pub.publish(device_topic(Kind.VEHICLE, "truck-7", Channel.TELEMETRY), encode(Telemetry(
            ts=ts, metrics={"lat": 31.2 + i / 1000, "lon": 121.5, "speed_kmh": 61, "ignition": True,
                            "alarm_flags": 2})))
        await pub.publish(device_topic(Kind.EMISSION, "stack-2", Channel.TELEMETRY), encode(Telemetry(
            ts=ts, metrics={"a21026.Rtd": 30.5, "a21026.ZsAvg": 33, "cn": 2011}, quality={"a21026": "N"})))
    await pub.publish(device_topic(Kind.CAMERA, "cam-3", Channel.EVENT), encode(DeviceEvent(
        ts=T0, type="intrusion", state="start", event_id="ev-1", zone="gate", severity=Severity.MAJOR)))
    await pub.publish(device_topic(Kind.CAMERA, "cam-3", Channel.STATUS), encode(DeviceStatus(ts=T0, online=True)))
    await pub.publish(alert_topic(Kind.ELEVATOR, "el-1", "a-1"), encode(Alert(
        id="a-1", fingerprint="fp-1", rule="trapped_passenger", severity=Severity.CRITICAL,
        status=AlertStatus.FIRING, kind=Kind.ELEVATOR, device_id="el-1", summary="电梯困人",
        starts_at=T0, updated_at=T0 + timedelta(seconds=5))))
    # Refused by the ingest (schema): it publishes a dead letter, which storage keeps too.
    await pub.publish(device_topic(Kind.ELEVATOR, "el-1", Channel.TELEMETRY), b'{"v":1,"ts":"yesterday"}')
    await pub.flush()


async def test_everything_the_platform_says_lands_in_influxdb_typed(mosquitto: MosquittoProcess, influxdb: Any,
                                                                    tmp_path: Path) -> None:
    reg = registry(DEVICES)
    async with running_storage(v1_config(influxdb), mosquitto.url, tmp_path / "state", reg) as run, \
            MqttClient(mosquitto.url, "scene-publisher") as pub:
        await publish_scene(pub)
        url, db = influxdb.url, influxdb.database
        await eventually(lambda: influx_count(url, db, "dead_letters", "size") == 1
                         and influx_count(url, db, "telemetry_emission", "cn") == 10, timeout=15)
        stats = run.service.stats()
    assert influx_count(url, db, "telemetry_elevator", "speed_mps", "device='el-1' AND site='tower-a'") == 10
    assert influx_count(url, db, "telemetry_vehicle", "lat") == 10
    assert influx_count(url, db, "events", "count", "type='intrusion' AND state='start'") == 1
    assert influx_count(url, db, "status", "online", "device='cam-3'") == 1
    assert influx_count(url, db, "alerts", "id", "status='firing' AND rule='trapped_passenger'") == 1
    types = {}
    for s in influxql(url, db, "SHOW FIELD KEYS"):
        types.update({(s.name, k): t for k, t in s.values})
    assert types[("telemetry_elevator", "speed_mps")] == "float"  # the first value was the JSON integer 0
    assert types[("telemetry_elevator", "floor")] == "integer"
    assert types[("telemetry_elevator", "door_zone")] == "boolean"
    assert types[("telemetry_elevator", "door")] == "string"
    assert types[("telemetry_vehicle", "alarm_flags")] == "integer"
    assert types[("telemetry_emission", "a21026.ZsAvg")] == "float"
    assert types[("telemetry_emission", "a21026.Flag")] == "string"
    rows = influxql(url, db, 'SELECT "summary", "age_s" FROM "alerts"')[0].rows()
    assert rows[0]["summary"] == "电梯困人" and rows[0]["age_s"] == 5.0
    first = influxql(url, db, 'SELECT "speed_mps" FROM "telemetry_elevator" LIMIT 1', epoch="ms")[0].values[0]
    assert first[0] == int(T0.timestamp() * 1000)
    assert stats["stored_telemetry"] == 30 and stats["writer_refused_lines"] == 0


async def test_a_point_influxdb_refuses_is_dead_lettered_and_the_rest_flows(mosquitto: MosquittoProcess,
                                                                            influxdb: Any, tmp_path: Path) -> None:
    reg = registry({"s-1": Kind.SENSOR})
    topic = device_topic(Kind.SENSOR, "s-1", Channel.TELEMETRY)
    async with running_storage(v1_config(influxdb), mosquitto.url, tmp_path / "state", reg) as run, \
            MqttClient(mosquitto.url, "conflict-publisher") as pub:
        for i in range(20):
            # Message 7 sends a string where the others send a number: a type conflict in InfluxDB 1.x.
            value: float | str = "broken" if i == 7 else float(i)
            await pub.publish(topic, encode(Telemetry(ts=T0 + timedelta(seconds=i), metrics={"level": value})))
        await pub.flush()
        url, db = influxdb.url, influxdb.database
        await eventually(lambda: influx_count(url, db, "telemetry_sensor", "level") == 19, timeout=15)
        await eventually(lambda: influx_count(url, db, "dead_letters", "size", "stage='storage'") == 1, timeout=15)
        assert run.service.stats()["writer_refused_lines"] == 1
    rejected = (tmp_path / "state" / "rejected.jsonl").read_text()
    assert 'level=\\"broken\\"' in rejected and "conflict" in rejected


async def test_v2_api_through_influxdb_client_into_victoria_metrics(mosquitto: MosquittoProcess,
                                                                     victoria_metrics: Any, tmp_path: Path) -> None:
    cfg = StorageConfig(backend="influxdb-v2", writer=WRITER, outbox=OutboxConfig(fsync="off"),
                        influxdb_v2=InfluxV2Config(url=victoria_metrics.url, org="city", bucket="vigil", token="x"))
    async with running_storage(cfg, mosquitto.url, tmp_path / "state", registry(DEVICES)) as run, \
            MqttClient(mosquitto.url, "v2-publisher") as pub:
        await publish_scene(pub)

        def arrived() -> bool:
            victoria_metrics.force_flush()
            return vm_sample_count(victoria_metrics.url, '{__name__="telemetry_elevator_speed_mps"}') == 10

        await eventually(arrived, timeout=15, step=0.3)
        assert vm_sample_count(victoria_metrics.url, '{__name__="telemetry_vehicle_lat",site="tower-a"}') == 10
        assert vm_sample_count(victoria_metrics.url, '{__name__="events_count",type="intrusion"}') == 1
        assert run.service.stats()["writer_batches"] >= 1


async def test_default_config_keeps_the_demo_working_with_sqlite(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = state / "points.sqlite3"
    cfg = StorageConfig(writer=WriterConfig(flush_interval_s=0.05))  # the defaults: SQLite in the state folder
    async with running_storage(cfg, mosquitto.url, state, registry(DEVICES)), \
            MqttClient(mosquitto.url, "sqlite-publisher") as pub:
        await publish_scene(pub)
        await eventually(lambda: db.exists() and len(sqlite_points(db, "dead_letters")) == 1, timeout=15)
    elevator = sqlite_points(db, "telemetry_elevator", tags={"device": "el-1"})
    assert [p.fields["seq"] for p in elevator] == list(range(10))
    assert elevator[3].tags == {"device": "el-1", "kind": "elevator", "site": "tower-a"}
    assert elevator[3].fields["floor"] == 3 and elevator[3].fields["door_zone"] is True
    assert len(sqlite_points(db, "telemetry_emission")) == 10
    alert = sqlite_points(db, "alerts")[0]
    assert alert.tags["status"] == "firing" and alert.fields["summary"] == "电梯困人"


async def test_stopping_writes_what_is_pending(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = StorageConfig(writer=WriterConfig(flush_interval_s=30.0))  # nothing would be sent before the stop
    async with running_storage(cfg, mosquitto.url, state, registry(DEVICES)) as run, \
            MqttClient(mosquitto.url, "stop-publisher") as pub:
        await publish_scene(pub)
        await eventually(lambda: run.service.stats()["stored_telemetry"] == 30, timeout=10, step=0.05)
        assert run.service.stats()["writer_batches"] == 0
    assert len(sqlite_points(state / "points.sqlite3", "telemetry_vehicle")) == 10


async def test_messages_delivered_after_the_stage_stopped_are_kept_for_the_next_start(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = StorageConfig(writer=WriterConfig(flush_interval_s=0.05, shutdown_flush_s=0))
    topic = device_topic(Kind.ELEVATOR, "el-1", Channel.TELEMETRY)
    async with running_storage(cfg, mosquitto.url, state, registry(DEVICES), client_id="late") as run, \
            MqttClient(mosquitto.url, "late-publisher") as pub:
        run.task.cancel()  # the runtime cancels the stages before it stops the MQTT client
        await asyncio.gather(run.task, return_exceptions=True)
        await pub.publish(topic, encode(Telemetry(ts=T0, seq=1, metrics={"speed_mps": 1.0})))
        await pub.flush()
        await eventually(lambda: run.service.stats()["stored_telemetry"] == 1, timeout=10, step=0.05)
    async with running_storage(cfg, mosquitto.url, state, registry(DEVICES), client_id="late"):
        await eventually(lambda: (state / "points.sqlite3").exists()
                         and len(sqlite_points(state / "points.sqlite3", "telemetry_elevator")) == 1, timeout=10)
