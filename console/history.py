"""Device telemetry history from the storage stage's backend (SQLite or InfluxDB 1.x), read in a thread.

The console keeps only a short ring of recent points per device in memory; longer windows (the
device history page, an old alert's chart) are read back from wherever the storage stage of the
same process writes. Without a storage stage only the in-memory ring is available.

The device id comes from a URL, so it is checked against the contracts' id pattern (full match)
and quoted; InfluxDB is read with ``GET /query`` (read statements only) as a read-only user.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.contracts import DEVICE_ID_PATTERN, Kind
from storage.query import QueryError, influxql, quote_ident, quote_literal, sqlite_points

log = logging.getLogger(__name__)
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN.strip("^$"))
_KINDS = {str(k.value) for k in Kind}

Point = tuple[float, dict[str, float]]


@dataclass(frozen=True)
class HistoryReader:
    """Reads one device's numeric telemetry for a time window from the storage backend."""

    backend: str
    sqlite_path: Path | None = None
    influx_url: str = ""
    influx_db: str = ""
    influx_user: str = ""
    influx_password: str = field(default="", repr=False)
    max_points: int = 5000

    def read(self, kind: str, device_id: str, since: float, until: float) -> list[Point]:
        """Points in [since, until], oldest first (blocking; run it in a thread).

        Raises:
            QueryError: the backend could not answer.
            ValueError: the device id or kind is not a valid one.
        """
        if not _DEVICE_ID.fullmatch(device_id):
            raise ValueError(f"device id must match {DEVICE_ID_PATTERN}")
        if kind not in _KINDS:
            raise ValueError("unknown device kind")
        measurement = f"telemetry_{kind}"
        if self.backend == "sqlite" and self.sqlite_path is not None:
            if not self.sqlite_path.exists():
                return []
            pts = sqlite_points(self.sqlite_path, measurement, tags={"device": device_id},
                                since_ns=int(since * 1e9))
            out = [(p.ts / 1e9, _numeric(p.fields)) for p in pts if p.ts / 1e9 <= until]
        elif self.backend == "influxdb-v1":
            # Checked above and quoted anyway: the id is URL input and must never become InfluxQL syntax.
            q = (f"SELECT * FROM {quote_ident(measurement)} WHERE {quote_ident('device')} = {quote_literal(device_id)}"
                 f" AND time >= {int(since * 1e3)}ms AND time <= {int(until * 1e3)}ms ORDER BY time"
                 f" LIMIT {int(self.max_points)}")
            series = influxql(self.influx_url, self.influx_db, q, username=self.influx_user,
                              password=self.influx_password, epoch="ms", timeout=10.0, method="GET")
            out = []
            for s in series:
                for row in s.rows():
                    ts = row.pop("time", None)
                    if isinstance(ts, int | float):
                        out.append((ts / 1e3, _numeric(row)))
        else:
            return []
        out = [p for p in out if p[1]]
        step = max(1, len(out) // self.max_points)
        return out[::step]

    async def aread(self, kind: str, device_id: str, since: float, until: float) -> list[Point]:
        """``read`` in a worker thread; an unreachable backend gives an empty list (logged)."""
        try:
            return await asyncio.to_thread(self.read, kind, device_id, since, until)
        except (QueryError, OSError, ValueError) as exc:
            log.warning("console: history of %s unavailable: %s", device_id, exc)
            return []


def _numeric(fields: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in fields.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("seq", "device", "kind", "site")}


def reader_for(storage: Any) -> HistoryReader | None:
    """A history reader for a storage stage object of this process, or None if it is not usable."""
    cfg = getattr(storage, "config", None)
    backend = getattr(cfg, "backend", None)
    if backend == "sqlite":
        path = getattr(getattr(storage, "backend", None), "path", None)
        return HistoryReader("sqlite", sqlite_path=Path(path)) if path else None
    if backend == "influxdb-v1" and cfg is not None:
        v1 = cfg.influxdb_v1
        if v1.username and not v1.read_username:
            # Never read with the writer's (possibly admin) account: a console bug must not be able to write.
            log.warning("console: storage.influxdb_v1.read_username is not set; device history older than "
                        "the in-memory ring is not shown (give a user with GRANT READ only)")
            return None
        return HistoryReader("influxdb-v1", influx_url=v1.url, influx_db=v1.database, influx_user=v1.read_username,
                             influx_password=v1.read_password)
    return None
