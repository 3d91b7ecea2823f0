"""Reading stored points back: InfluxQL over ``/query``, VictoriaMetrics export, SQLite selects.

Small blocking helpers for the console's history, tests, benchmarks, the demo and operators'
scripts; call them from a thread inside an event loop. Reads go out as ``GET /query`` (the
read method of the InfluxDB 1.x API; 1.6 still executes some changing statements sent that way, so
readers must also use a user with ``GRANT READ`` only); values put into a query go through
``quote_ident`` and ``quote_literal``.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import StorageError
from storage.lineproto import FieldValue


class QueryError(StorageError):
    """The server refused or could not answer the query."""


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an InfluxQL result."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        """The values as dicts keyed by column."""
        return [dict(zip(self.columns, v, strict=False)) for v in self.values]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field key) in double quotes, escaped.

    Raises:
        ValueError: the name holds control characters (InfluxQL cannot quote them).
    """
    if any(ord(c) < 32 for c in name):
        raise ValueError("identifier holds control characters")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL string literal in single quotes, escaped.

    Raises:
        ValueError: the value holds control characters (InfluxQL strings cannot hold newlines).
    """
    if any(ord(c) < 32 for c in value):
        raise ValueError("string literal holds control characters")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql(url: str, database: str, query: str, *, username: str = "", password: str = "",
             timeout: float = 30.0, epoch: str = "ns", method: str = "GET") -> list[Series]:
    """Run InfluxQL statements on an InfluxDB 1.x ``/query`` endpoint and return every series.

    ``method="GET"`` (the default) is for reads; pass ``"POST"`` for statements that change the server
    (CREATE, DROP, ...). GET is not a guarantee on InfluxDB 1.6: read with a read-only user.

    Raises:
        QueryError: HTTP or statement error.
    """
    if method not in ("GET", "POST"):
        raise ValueError("method is GET or POST")
    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": epoch})
    if method == "GET":
        req = urllib.request.Request(f"{url.rstrip('/')}/query?{params}", method="GET")
    else:
        req = urllib.request.Request(f"{url.rstrip('/')}/query", data=params.encode(), method="POST")
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(f"HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise QueryError(f"{url}: {exc}") from None
    out: list[Series] = []
    for result in doc.get("results", []):
        if "error" in result:
            raise QueryError(str(result["error"]))
        for s in result.get("series", []):
            out.append(Series(s.get("name", ""), s.get("tags", {}), s["columns"], s["values"]))
    return out


def influx_count(url: str, database: str, measurement: str, field: str, where: str = "", **kw: Any) -> int:
    """``SELECT count(field) FROM measurement [WHERE ...]``: the number of points with that field."""
    clause = f" WHERE {where}" if where else ""
    series = influxql(url, database, f"SELECT count({quote_ident(field)}) FROM {quote_ident(measurement)}{clause}",
                      **kw)
    return int(series[0].values[0][1]) if series and series[0].values else 0


def vm_export(url: str, match: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """VictoriaMetrics ``/api/v1/export`` for a series selector: one dict per series.

    Raises:
        QueryError: HTTP error.
    """
    params = urllib.parse.urlencode({"match[]": match, "start": "0"})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/export?{params}", timeout=timeout) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise QueryError(f"HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise QueryError(f"{url}: {exc}") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def vm_sample_count(url: str, match: str) -> int:
    """How many samples VictoriaMetrics holds for a selector (all time)."""
    return sum(len(s.get("values", [])) for s in vm_export(url, match))


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """A point read from the SQLite backend."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts: int


def sqlite_points(path: Path, measurement: str, *, tags: dict[str, str] | None = None,
                  since_ns: int | None = None, limit: int | None = None) -> list[StoredPoint]:
    """Points of one measurement from the SQLite backend, oldest first, optionally filtered by tags."""
    sql = "SELECT measurement, tags, fields, ts FROM points WHERE measurement = ?"
    args: list[Any] = [measurement]
    for key, value in (tags or {}).items():
        sql += " AND json_extract(tags, ?) = ?"
        args += [f'$."{key}"', value]
    if since_ns is not None:
        sql += " AND ts >= ?"
        args.append(since_ns)
    sql += " ORDER BY ts"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(sql, args).fetchall()
    finally:
        db.close()
    return [StoredPoint(m, json.loads(t), json.loads(f), ts) for m, t, f, ts in rows]
