"""SQLite persistence for alerts, the audit trail, the notification outbox/log, silences and groups.

One connection used from the event loop thread only; WAL with ``synchronous=NORMAL`` keeps a
commit well under a millisecond. Writes made while handling an MQTT batch are committed before
the batch is acknowledged, so a restart loses no open alert; notifications are written to the
outbox in the same transaction as the state change that caused them (sent at most once per
``dedup_key``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from alerting.lifecycle import AlertRecord, AuditEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
  id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status TEXT NOT NULL, severity TEXT NOT NULL,
  kind TEXT NOT NULL, device_id TEXT NOT NULL, site TEXT, unit TEXT, industry TEXT,
  starts_at REAL NOT NULL, ends_at REAL, updated_at REAL NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_fp ON alerts(fingerprint, ends_at);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts(status);
CREATE INDEX IF NOT EXISTS alerts_starts ON alerts(starts_at);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, ts REAL NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_alert ON events(alert_id, seq);
CREATE TABLE IF NOT EXISTS notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT, dedup_key TEXT UNIQUE, kind TEXT NOT NULL, recipient TEXT NOT NULL,
  alert_ids TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL, attach TEXT, status TEXT NOT NULL,
  created_at REAL NOT NULL, handed_at REAL, done_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
  channel TEXT, error TEXT, source_ts REAL, received_at REAL);
CREATE INDEX IF NOT EXISTS notifications_status ON notifications(status);
CREATE TABLE IF NOT EXISTS attempts (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, notification_id INTEGER NOT NULL, ts REAL NOT NULL,
  channel TEXT NOT NULL, attempt INTEGER NOT NULL, ok INTEGER NOT NULL, error TEXT, elapsed_ms REAL);
CREATE INDEX IF NOT EXISTS attempts_n ON attempts(notification_id);
CREATE TABLE IF NOT EXISTS kv (kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY(kind, key));
"""

FILTER_COLUMNS = ("kind", "site", "unit", "industry", "severity", "device_id", "fingerprint")
"""Alert columns a query may filter on (anything else is ignored)."""
_REC_ENC = msgspec.json.Encoder()
_REC_DEC = msgspec.json.Decoder(AlertRecord)


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One notification of the outbox / log."""

    id: int
    dedup_key: str
    kind: str
    recipient: str
    alert_ids: list[str]
    title: str
    body: str
    attach: str | None
    status: str
    created_at: float
    handed_at: float | None
    done_at: float | None
    attempts: int
    channel: str | None
    error: str | None
    source_ts: float | None
    received_at: float | None

    def public(self) -> dict[str, Any]:
        """The row for API responses (channels are already masked)."""
        return {k: getattr(self, k) for k in self.__slots__}


_NOTIF_COLS = ("id, dedup_key, kind, recipient, alert_ids, title, body, attach, status, created_at, handed_at, "
               "done_at, attempts, channel, error, source_ts, received_at")


def _notif(row: tuple[Any, ...]) -> NotificationRow:
    vals = list(row)
    vals[4] = json.loads(vals[4])
    return NotificationRow(*vals)


def where_clause(*, one_of: Mapping[str, Sequence[str]], time_column: str, since: float | None,
                 until: float | None, filters: Mapping[str, str] | None,
                 columns: Iterable[str]) -> tuple[str, list[Any]]:
    """A parameterised ``WHERE``: each ``one_of`` column IN its (non-empty) values, ``since <= time < until``,
    and ``column = value`` for the ``filters`` whose column is one of ``columns`` (others are ignored).

    Column names come only from the caller's code, never from a request; values are always bound.
    """
    parts: list[str] = []
    args: list[Any] = []
    for col, values in one_of.items():
        if values:
            parts.append(f"{col} IN ({','.join('?' * len(values))})")
            args.extend(values)
    if since is not None:
        parts.append(f"{time_column} >= ?")
        args.append(since)
    if until is not None:
        parts.append(f"{time_column} < ?")
        args.append(until)
    allowed = frozenset(columns)
    for col, val in (filters or {}).items():
        if col in allowed:
            parts.append(f"{col} = ?")
            args.append(val)
    return ("WHERE " + " AND ".join(parts)) if parts else "", args


def _where(status: Sequence[str] | None, since: float | None, until: float | None,
           filters: Mapping[str, str] | None) -> tuple[str, list[Any]]:
    return where_clause(one_of={"status": status or ()}, time_column="starts_at", since=since, until=until,
                        filters=filters, columns=FILTER_COLUMNS)


class AlertStore:
    """The alerting database under the service's state directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        """Commit and close."""
        self.db.commit()
        self.db.close()

    def commit(self) -> None:
        """Make everything written so far durable."""
        self.db.commit()

    # ------------------------------------------------------------------ alerts

    def put_alert(self, rec: AlertRecord) -> None:
        """Insert or replace an alert."""
        self.db.execute(
            "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.id, rec.fingerprint, rec.status.value, rec.severity.value, rec.kind.value, rec.device_id, rec.site,
             rec.assigned_unit or rec.unit, rec.industry, rec.starts_at, rec.ends_at, rec.updated_at,
             _REC_ENC.encode(rec)))

    def open_alerts(self) -> list[AlertRecord]:
        """Every firing or acknowledged alert."""
        rows = self.db.execute("SELECT data FROM alerts WHERE status != 'resolved'").fetchall()
        return [_REC_DEC.decode(r[0]) for r in rows]

    def get_alert(self, alert_id: str) -> AlertRecord | None:
        """One alert by id."""
        row = self.db.execute("SELECT data FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _REC_DEC.decode(row[0]) if row else None

    def latest_resolved(self, fingerprint: str) -> AlertRecord | None:
        """The most recently ended resolved alert with this fingerprint."""
        row = self.db.execute(
            "SELECT data FROM alerts WHERE fingerprint = ? AND status = 'resolved' ORDER BY ends_at DESC LIMIT 1",
            (fingerprint,)).fetchone()
        return _REC_DEC.decode(row[0]) if row else None

    def query_alerts(self, *, status: Sequence[str] | None = None, since: float | None = None,
                     until: float | None = None, filters: Mapping[str, str] | None = None, limit: int = 200,
                     offset: int = 0) -> list[AlertRecord]:
        """Alerts matching column filters (kind, site, unit, industry, severity, device_id), newest first."""
        where, args = _where(status, since, until, filters)
        rows = self.db.execute(f"SELECT data FROM alerts {where} ORDER BY starts_at DESC LIMIT ? OFFSET ?",
                               (*args, limit, offset)).fetchall()
        return [_REC_DEC.decode(r[0]) for r in rows]

    def count_alerts(self, *, status: Sequence[str] | None = None, since: float | None = None,
                     until: float | None = None, filters: Mapping[str, str] | None = None) -> int:
        """How many alerts match the same filters as ``query_alerts``."""
        where, args = _where(status, since, until, filters)
        row = self.db.execute(f"SELECT COUNT(*) FROM alerts {where}", args).fetchone()
        return int(row[0]) if row else 0

    def iter_alerts(self, since: float | None, until: float | None) -> Iterable[AlertRecord]:
        """Every alert that started in [since, until) (for the handling figures)."""
        where, args = _where(None, since, until, None)
        for (data,) in self.db.execute(f"SELECT data FROM alerts {where}", args):
            yield _REC_DEC.decode(data)

    # ------------------------------------------------------------------ audit

    def add_events(self, events: Iterable[AuditEvent]) -> None:
        """Append audit events."""
        self.db.executemany("INSERT INTO events (alert_id, ts, actor, action, detail) VALUES (?,?,?,?,?)",
                            [(e.alert_id, e.ts, e.actor, e.action, json.dumps(e.detail, ensure_ascii=False))
                             for e in events])

    def events(self, alert_id: str) -> list[AuditEvent]:
        """An alert's timeline, oldest first."""
        rows = self.db.execute("SELECT alert_id, ts, actor, action, detail FROM events WHERE alert_id = ? "
                               "ORDER BY seq", (alert_id,)).fetchall()
        return [AuditEvent(alert_id=r[0], ts=r[1], actor=r[2], action=r[3], detail=json.loads(r[4])) for r in rows]

    # ------------------------------------------------------------------ notifications

    def add_notification(self, *, dedup_key: str, kind: str, recipient: str, alert_ids: list[str], title: str,
                         body: str, attach: str | None, created_at: float, source_ts: float | None,
                         received_at: float | None, status: str = "pending") -> int | None:
        """Queue a notification in the outbox; None when ``dedup_key`` was already used (never twice)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO notifications (dedup_key, kind, recipient, alert_ids, title, body, attach, status,"
            " created_at, source_ts, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (dedup_key, kind, recipient, json.dumps(alert_ids), title, body, attach, status, created_at, source_ts,
             received_at))
        return cur.lastrowid if cur.rowcount == 1 else None

    def notification(self, nid: int) -> NotificationRow | None:
        """One notification by id."""
        row = self.db.execute(f"SELECT {_NOTIF_COLS} FROM notifications WHERE id = ?", (nid,)).fetchone()
        return _notif(row) if row else None

    def pending_notifications(self, limit: int = 10000) -> list[NotificationRow]:
        """Outbox entries not yet delivered (resumed after a restart)."""
        rows = self.db.execute(f"SELECT {_NOTIF_COLS} FROM notifications WHERE status IN ('pending', 'sending') "
                               "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [_notif(r) for r in rows]

    def mark_notification(self, nid: int, *, status: str, handed_at: float | None = None,
                          done_at: float | None = None, attempts: int | None = None, channel: str | None = None,
                          error: str | None = None) -> None:
        """Update a notification's delivery state."""
        self.db.execute(
            "UPDATE notifications SET status = ?, handed_at = COALESCE(handed_at, ?), done_at = COALESCE(?, done_at),"
            " attempts = COALESCE(?, attempts), channel = COALESCE(?, channel), error = ? WHERE id = ?",
            (status, handed_at, done_at, attempts, channel, error, nid))

    def add_attempt(self, nid: int, ts: float, channel: str, attempt: int, ok: bool, error: str | None,
                    elapsed_ms: float) -> None:
        """Log one delivery attempt (channel already masked)."""
        self.db.execute("INSERT INTO attempts (notification_id, ts, channel, attempt, ok, error, elapsed_ms) "
                        "VALUES (?,?,?,?,?,?,?)", (nid, ts, channel, attempt, int(ok), error, elapsed_ms))

    def attempts(self, nid: int) -> list[dict[str, Any]]:
        """Every attempt of one notification."""
        rows = self.db.execute("SELECT ts, channel, attempt, ok, error, elapsed_ms FROM attempts "
                               "WHERE notification_id = ? ORDER BY seq", (nid,)).fetchall()
        return [{"ts": r[0], "channel": r[1], "attempt": r[2], "ok": bool(r[3]), "error": r[4],
                 "elapsed_ms": r[5]} for r in rows]

    def notifications(self, *, status: str | None = None, alert_id: str | None = None, limit: int = 200,
                      ) -> list[NotificationRow]:
        """The notification log, newest first."""
        parts, args = [], []
        if status:
            parts.append("status = ?")
            args.append(status)
        if alert_id:
            parts.append("alert_ids LIKE ?")
            args.append(f'%"{alert_id}"%')
        where = ("WHERE " + " AND ".join(parts)) if parts else ""
        rows = self.db.execute(f"SELECT {_NOTIF_COLS} FROM notifications {where} ORDER BY id DESC LIMIT ?",
                               (*args, limit)).fetchall()
        return [_notif(r) for r in rows]

    def prune_notifications(self, keep: int) -> None:
        """Keep the newest ``keep`` finished notifications."""
        self.db.execute("DELETE FROM notifications WHERE id <= (SELECT MAX(id) FROM notifications) - ? "
                        "AND status NOT IN ('pending', 'sending')", (keep,))

    # ------------------------------------------------------------------ small key/value tables

    def kv_put(self, kind: str, key: str, data: str) -> None:
        """Store a JSON document (silences, groups, roster overrides)."""
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (kind, key, data))

    def kv_delete(self, kind: str, key: str) -> None:
        """Delete a JSON document."""
        self.db.execute("DELETE FROM kv WHERE kind = ? AND key = ?", (kind, key))

    def kv_all(self, kind: str) -> dict[str, str]:
        """Every document of a kind."""
        return dict(self.db.execute("SELECT key, data FROM kv WHERE kind = ?", (kind,)).fetchall())
