"""Storage backends, registered by type key; each takes batches of line protocol, and the drainer that
feeds them from the outbox (``OutboxDrainer``: batches, gzip, retries with jittered backoff, bisects refusals).

- ``influxdb-v1``: InfluxDB 1.x ``/write`` over aiohttp (also the v1-compatibility API of 2.x/3.x).
- ``influxdb-v2``: ``/api/v2/write`` through influxdb-client's async client (InfluxDB 2.x and 3.x).
- ``sqlite``:      an embedded file, so the demo works with no server at all.

Every backend classifies failures the same way, which is what the drainer relies on:
``PointsRefused`` (HTTP 400/413/422: the points themselves are bad; the drainer bisects the
batch and dead-letters the lines that fail alone) and ``BackendUnavailable`` (timeouts,
connection errors, 5xx, 429, and 401/403/404 which are configuration problems an operator can
fix: the drainer retries the same batch with jittered backoff and never drops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from storage.config import StorageConfig, WriterConfig
from storage.errors import StorageError
from storage.lineproto import LineSyntaxError, parse_line
from storage.outbox import Outbox

log = logging.getLogger(__name__)

_COMPRESS_IN_THREAD_BYTES = 64 * 1024
_GZIP_HEADERS = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
_PLAIN_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}


class BackendError(StorageError):
    """A write did not succeed; ``status`` is the HTTP status when there was one."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class PointsRefused(BackendError):
    """The server refused the points as invalid; sending them again cannot succeed."""


class BackendUnavailable(BackendError):
    """The server could not take the write now; the same batch should be retried."""


class StorageBackend(Protocol):
    """What the drainer needs from a backend."""

    name: str

    async def open(self) -> None:
        """Prepare (sessions, schema, database); raises ``BackendUnavailable`` to be retried."""

    async def write(self, body: bytes, lines: int) -> None:
        """Store ``lines`` newline-separated lines; raises ``PointsRefused`` or ``BackendUnavailable``."""

    async def close(self) -> None:
        """Release connections."""


BackendFactory = Callable[[StorageConfig, Path], StorageBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(key: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend factory under a type key (the config's ``storage.backend``)."""
    def wrap(factory: BackendFactory) -> BackendFactory:
        _REGISTRY[key] = factory
        return factory
    return wrap


def backend_keys() -> list[str]:
    """The registered type keys."""
    return sorted(_REGISTRY)


def create_backend(config: StorageConfig, state_dir: Path) -> StorageBackend:
    """The configured backend (not yet opened).

    Raises:
        KeyError: no backend is registered under ``config.backend``.
    """
    return _REGISTRY[config.backend](config, state_dir)


async def compress(body: bytes, level: int) -> bytes:
    """gzip a request body; large bodies in a thread (zlib releases the GIL). Level 0: the body unchanged."""
    if level <= 0:
        return body
    if len(body) >= _COMPRESS_IN_THREAD_BYTES:
        return await asyncio.to_thread(_gzip, body, level)
    return _gzip(body, level)


def _describe(exc: BaseException) -> str:
    # aiohttp's connection errors name host and port only; never the URL's credentials.
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _gzip(body: bytes, level: int) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return comp.compress(body) + comp.flush()


def masked_url(url: str) -> str:
    """A URL for logs and errors: any ``user:password@`` is replaced by ``***@``."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def classify_status(status: int, detail: str) -> BackendError:
    """Map an HTTP error status to refused points or a retryable failure."""
    if status in (400, 413, 422):
        return PointsRefused(detail[:500], status)
    return BackendUnavailable(detail[:500], status)


# ---------------------------------------------------------------------------- InfluxDB 1.x

class InfluxV1Backend:
    """InfluxDB 1.x ``/write`` with gzip'd bodies (unless ``gzip_level`` is 0) and nanosecond timestamps."""

    name = "influxdb-v1"

    def __init__(self, config: StorageConfig, state_dir: Path) -> None:
        self.cfg = config.influxdb_v1
        self.writer = config.writer
        self._session: aiohttp.ClientSession | None = None
        self._database_ready = not self.cfg.create_database
        base = self.cfg.url.rstrip("/")
        self._write_url = f"{base}/write"
        self._query_url = f"{base}/query"
        self._params = {"db": self.cfg.database, "precision": "ns"}
        if self.cfg.retention_policy:
            self._params["rp"] = self.cfg.retention_policy
        self._auth = aiohttp.BasicAuth(self.cfg.username, self.cfg.password) if self.cfg.username else None
        self._where = masked_url(base)

    async def open(self) -> None:
        """Create the HTTP session and, when configured, the database."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.writer.timeout_s), auth=self._auth)
        if not self._database_ready:
            await self._create_database()

    async def _create_database(self) -> None:
        assert self._session is not None
        q = f'CREATE DATABASE "{self.cfg.database}"'
        try:
            async with self._session.post(self._query_url, data={"q": q}) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise BackendUnavailable(f"CREATE DATABASE failed: {text[:300]}", resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"{self._where}: {type(exc).__name__}") from None
        self._database_ready = True

    async def write(self, body: bytes, lines: int) -> None:
        """POST the lines to ``/write``."""
        if self._session is None or not self._database_ready:
            await self.open()
        assert self._session is not None
        data = await compress(body, self.writer.gzip_level)
        headers = _GZIP_HEADERS if self.writer.gzip_level > 0 else _PLAIN_HEADERS
        try:
            async with self._session.post(self._write_url, params=self._params, data=data, headers=headers) as resp:
                if resp.status in (200, 204):
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"{self._where}: {_describe(exc)}") from None
        if resp.status == 404 and self.cfg.create_database:
            self._database_ready = False  # dropped behind our back: create it again on the retry
        raise classify_status(resp.status, text)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---------------------------------------------------------------------------- InfluxDB 2.x / 3.x

class InfluxV2Backend:
    """``/api/v2/write`` through influxdb-client's async client; the body is gzip'd by us (level 1)."""

    name = "influxdb-v2"

    def __init__(self, config: StorageConfig, state_dir: Path) -> None:
        self.cfg = config.influxdb_v2
        self.writer = config.writer
        self._client: Any = None
        self._service: Any = None
        self._where = masked_url(self.cfg.url)

    async def open(self) -> None:
        """Create the client (it opens connections lazily)."""
        if self._client is None:
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
            from influxdb_client.service.write_service import WriteService

            self._client = InfluxDBClientAsync(url=self.cfg.url, token=self.cfg.token, org=self.cfg.org,
                                               timeout=int(self.writer.timeout_s * 1000), enable_gzip=False)
            self._service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]

    async def write(self, body: bytes, lines: int) -> None:
        """Write through the client's WriteService with ``Content-Encoding: gzip``."""
        from influxdb_client.rest import ApiException

        if self._service is None:
            await self.open()
        data = await compress(body, self.writer.gzip_level)
        try:
            await self._service.post_write_async(
                org=self.cfg.org, bucket=self.cfg.bucket, body=data, precision="ns",
                content_encoding="gzip" if self.writer.gzip_level > 0 else "identity",
                content_type="text/plain; charset=utf-8")
        except ApiException as exc:
            status = int(exc.status or 0)
            detail = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
            if status == 0:
                raise BackendUnavailable(f"{self._where}: {exc.reason}") from None
            raise classify_status(status, detail) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"{self._where}: {_describe(exc)}") from None

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._service = None


# ---------------------------------------------------------------------------- SQLite

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    series      TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    fields      TEXT NOT NULL,
    PRIMARY KEY (measurement, series, ts)
) WITHOUT ROWID;
"""

# Same series and time merge their fields, as in InfluxDB, so a replayed batch changes nothing.
_SQLITE_UPSERT = """
INSERT INTO points (measurement, series, ts, tags, fields) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (measurement, series, ts) DO UPDATE SET fields = json_patch(points.fields, excluded.fields)
"""


class SqliteBackend:
    """Points in one SQLite file: a row per point, tags and fields as JSON (the no-server default)."""

    name = "sqlite"

    def __init__(self, config: StorageConfig, state_dir: Path) -> None:
        path = Path(config.sqlite.path)
        self.path = path if path.is_absolute() else state_dir / path
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open the file (WAL mode) and create the table."""
        if self._db is None:
            try:
                self._db = await asyncio.to_thread(self._connect)
            except (sqlite3.Error, OSError) as exc:
                raise BackendUnavailable(f"sqlite {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SQLITE_SCHEMA)
        return db

    async def write(self, body: bytes, lines: int) -> None:
        """Parse and upsert the lines in one transaction (in a thread)."""
        if self._db is None:
            await self.open()
        await asyncio.to_thread(self._write, body)

    def _write(self, body: bytes) -> None:
        assert self._db is not None
        rows = []
        for raw in body.split(b"\n"):
            if not raw.strip():
                continue
            try:
                p = parse_line(raw.decode("utf-8"))
            except (LineSyntaxError, UnicodeDecodeError) as exc:
                raise PointsRefused(f"unable to parse {raw[:120]!r}: {exc}", 400) from None
            rows.append((p.measurement, p.series, p.ts, json.dumps(p.tags, sort_keys=True),
                         json.dumps(p.fields, ensure_ascii=False)))
        try:
            self._db.execute("BEGIN")
            self._db.executemany(_SQLITE_UPSERT, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise BackendUnavailable(f"sqlite {self.path}: {exc}") from None

    async def close(self) -> None:
        """Close the file."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)


register_backend("influxdb-v1")(InfluxV1Backend)
register_backend("influxdb-v2")(InfluxV2Backend)
register_backend("sqlite")(SqliteBackend)


RefusedSink = Callable[[bytes, BackendError], None]
"""Receives each line the backend refused on its own, with the refusal."""

_LOG_EVERY_S = 30.0


class OutboxDrainer:
    """Sends outbox batches to the backend in order; commits each batch once it is stored.

    A batch that fails for a retryable reason is sent again, unchanged, until it succeeds;
    later batches wait behind it so points arrive in order. A batch the backend refuses as
    invalid is split in halves, recursively, so the good lines are stored (rewriting lines a
    partial write already stored changes nothing) and each line refused on its own goes to
    ``on_refused``; the queue never blocks on bad points.
    """

    def __init__(self, outbox: Outbox, backend: StorageBackend, config: WriterConfig, *,
                 on_refused: RefusedSink, clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.backend = backend
        self.config = config
        self.on_refused = on_refused
        self.clock = clock
        self.counters: dict[str, int] = {
            "batches": 0, "points_written": 0, "requests": 0, "retries": 0, "refused_requests": 0,
            "refused_lines": 0, "bytes_sent": 0,
        }
        self.unavailable_since: float | None = None
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._last_log = 0.0
        self._attempt = 0

    def notify(self) -> None:
        """Tell the drainer lines were appended (called by the handler after each append)."""
        self._wakeup.set()
        if self.outbox.pending_lines >= self.config.batch_points:
            self._full.set()

    async def run(self) -> None:
        """Open the backend, then drain forever (until cancelled)."""
        await self._with_retries(self.backend.open, "open")
        while True:
            if self.outbox.pending_lines == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.outbox.pending_lines < self.config.batch_points:
                # Wait for a full batch, but never longer than flush_interval_s after the first line.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_interval_s):
                        await self._full.wait()
            await self.drain_once()

    async def drain_once(self) -> int:
        """Write the next batch (retrying until it is stored) and commit it; returns its lines."""
        batch = self.outbox.peek(self.config.batch_points)
        if batch is None:
            return 0
        body = batch.body()
        await self._deliver(body, batch.lines)
        self.outbox.commit(batch)
        self.counters["batches"] += 1
        return batch.lines

    async def drain_all(self) -> int:
        """Write everything pending now (tests, shutdown with a live backend)."""
        total = 0
        while self.outbox.pending_lines:
            total += await self.drain_once()
        return total

    async def _deliver(self, body: bytes, lines: int) -> None:
        try:
            await self._with_retries(lambda: self.backend.write(body, lines), "write")
            self.counters["points_written"] += lines
            self.counters["bytes_sent"] += len(body)
        except PointsRefused as exc:
            self.counters["refused_requests"] += 1
            if lines <= 1:
                self.counters["refused_lines"] += 1
                self.on_refused(body, exc)
                return
            parts = body.split(b"\n")
            half = len(parts) // 2
            await self._deliver(b"\n".join(parts[:half]), half)
            await self._deliver(b"\n".join(parts[half:]), len(parts) - half)

    async def _with_retries(self, op: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            self.counters["requests"] += 1
            try:
                await op()
            except BackendUnavailable as exc:
                self._failed(exc, what)
                low, high = self.config.retry_min_s, self.config.retry_max_s
                delay = min(high, low * (2 ** min(self._attempt - 1, 16))) * random.uniform(0.5, 1.0)
                self.counters["retries"] += 1
                await asyncio.sleep(delay)
                continue
            if self.unavailable_since is not None:
                log.info("storage: %s is back after %.1f s (%d attempts)", self.backend.name,
                         self.clock() - self.unavailable_since, self._attempt)
            self.unavailable_since = None
            self._attempt = 0
            return

    def _failed(self, exc: BackendError, what: str) -> None:
        now = self.clock()
        self._attempt += 1
        if self.unavailable_since is None:
            self.unavailable_since = now
        if self._attempt == 1 or now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("storage: %s %s failed (attempt %d, %d lines waiting): %s", self.backend.name, what,
                        self._attempt, self.outbox.pending_lines, exc)
