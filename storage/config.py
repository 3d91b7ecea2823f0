"""Configuration of the storage stage (the ``storage:`` section of ``vigil.yaml``)."""

from __future__ import annotations

from typing import Literal

import msgspec

BackendKey = Literal["sqlite", "influxdb-v1", "influxdb-v2"]


class InfluxV1Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An InfluxDB 1.x server (``/write`` and ``/query``; also InfluxDB 2.x/3.x v1-compatibility)."""

    url: str = "http://127.0.0.1:8086"
    database: str = "vigil"
    retention_policy: str = ""
    """Empty: the database's default retention policy."""
    username: str = ""
    password: str = ""
    create_database: bool = True
    """Send ``CREATE DATABASE`` at start (idempotent; needs admin rights when auth is on)."""
    read_username: str = ""
    """The user the console's history reads with: give it ``GRANT READ ON <database>`` only. Required when
    ``username`` is set (an authenticated server); without it the console shows only its in-memory history."""
    read_password: str = ""

    def __repr__(self) -> str:
        return (f"InfluxV1Config(url={self.url!r}, database={self.database!r}, "
                f"retention_policy={self.retention_policy!r}, username={self.username!r}, password='***', "
                f"read_username={self.read_username!r}, read_password='***')")


class InfluxV2Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An InfluxDB 2.x / 3.x server (``/api/v2/write``) reached through influxdb-client."""

    url: str = "http://127.0.0.1:8086"
    org: str = "vigil"
    bucket: str = "vigil"
    token: str = ""

    def __repr__(self) -> str:
        return f"InfluxV2Config(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, token='***')"


class SqliteConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The embedded default: one SQLite file (relative paths are inside the stage's state folder)."""

    path: str = "points.sqlite3"


class WriterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the outbox is drained to the backend."""

    batch_points: int = 5000
    """Largest number of lines per write request."""
    flush_interval_s: float = 0.1
    """A partial batch is sent once its oldest line waited this long."""
    timeout_s: float = 10.0
    gzip_level: int = 1
    """1 is fastest; higher levels barely shrink line protocol further and cost CPU. 0 sends the body
    uncompressed: for an InfluxDB on the same host or LAN, where compressing costs the platform about
    0.5-1 µs of CPU per line and saves nothing worth having (docs/benchmarks.md, issue 15)."""
    retry_min_s: float = 0.2
    retry_max_s: float = 30.0
    shutdown_flush_s: float = 2.0
    """On stop, keep writing what is pending for at most this long (the rest waits in the outbox)."""


class OutboxConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The durable on-disk queue in front of the backend."""

    max_bytes: int = 1 << 30
    segment_bytes: int = 16 << 20
    fsync: Literal["batch", "interval", "off"] = "interval"
    """When lines reach the disk itself (they reach the OS before the MQTT ack in every mode, which is what
    survives a process crash): ``interval`` fdatasyncs in a thread every ``fsync_interval_s`` (group commit;
    power loss can cost that window), ``batch`` fdatasyncs every handler batch in the event loop before the
    ack (power-loss safe, but 0.15-4 ms per handler call on this machine's disk), ``off`` leaves it to the OS."""
    fsync_interval_s: float = 0.1
    overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    min_free_bytes: int = 64 << 20
    """Disk space the outbox leaves free for the rest of the platform (alerting's database, the rules
    journal), so the platform can still raise its own "disk full" alert; 0 turns the guard off."""


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where telemetry, events, status, alert changes and dead letters are kept."""

    backend: BackendKey = "sqlite"
    influxdb_v1: InfluxV1Config = InfluxV1Config()
    influxdb_v2: InfluxV2Config = InfluxV2Config()
    sqlite: SqliteConfig = SqliteConfig()
    writer: WriterConfig = WriterConfig()
    outbox: OutboxConfig = OutboxConfig()
    store_telemetry: bool = True
    store_events: bool = True
    store_status: bool = True
    store_alerts: bool = True
    store_dead_letters: bool = True

    def __post_init__(self) -> None:
        if self.writer.batch_points < 1:
            raise ValueError("storage.writer.batch_points must be at least 1")
        if not 0 <= self.writer.gzip_level <= 9:
            raise ValueError("storage.writer.gzip_level must be 0..9")
        if self.outbox.max_bytes < 2 * self.outbox.segment_bytes or self.outbox.segment_bytes < 4096:
            raise ValueError("storage.outbox.max_bytes must be at least twice segment_bytes (>= 4096)")
