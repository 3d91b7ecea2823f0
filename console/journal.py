"""The console's own records: the audit of every operator action, and alert evidence snapshots.

SQLite under the stage's state folder, used from the event loop thread only (writes are a few
per operator action, far below what would need a thread).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL,
  action TEXT NOT NULL, target TEXT NOT NULL, outcome INTEGER NOT NULL, detail TEXT NOT NULL, client TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
CREATE TABLE IF NOT EXISTS snapshots (
  alert_id TEXT PRIMARY KEY, ts REAL NOT NULL, device_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS snapshots_ts ON snapshots(ts);
"""


class ConsoleJournal:
    """Audit trail and evidence snapshots in ``console.sqlite3``."""

    def __init__(self, path: Path, keep_snapshots: int = 200_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.keep_snapshots = keep_snapshots
        self._snapshots_added = 0

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def audit(self, ts: float, user: str, role: str, action: str, target: str, outcome: int,
              detail: dict[str, Any], client: str) -> None:
        """Record one action with its HTTP outcome (200, 403, 409, ...)."""
        self.db.execute("INSERT INTO audit (ts, user, role, action, target, outcome, detail, client) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (ts, user, role, action, target[:200], outcome,
                         json.dumps(detail, ensure_ascii=False, default=str)[:4000], client[:100]))

    def audit_log(self, *, user: str | None = None, since: float | None = None, limit: int = 200,
                  ) -> list[dict[str, Any]]:
        """The newest audit entries first."""
        parts: list[str] = []
        args: list[Any] = []
        if user:
            parts.append("user = ?")
            args.append(user)
        if since is not None:
            parts.append("ts >= ?")
            args.append(since)
        where = ("WHERE " + " AND ".join(parts)) if parts else ""
        rows = self.db.execute(f"SELECT seq, ts, user, role, action, target, outcome, detail, client FROM audit "
                               f"{where} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"seq": r[0], "ts": r[1], "user": r[2], "role": r[3], "action": r[4], "target": r[5],
                 "outcome": r[6], "detail": json.loads(r[7]), "client": r[8]} for r in rows]

    def put_snapshot(self, alert_id: str, ts: float, device_id: str, data: dict[str, Any]) -> bool:
        """Keep the device's state at the moment an alert was raised (first one wins)."""
        cur = self.db.execute("INSERT OR IGNORE INTO snapshots VALUES (?,?,?,?)",
                              (alert_id, ts, device_id, json.dumps(data, ensure_ascii=False, default=str)))
        self._snapshots_added += cur.rowcount
        if self._snapshots_added > 10_000:
            self._snapshots_added = 0
            self.db.execute("DELETE FROM snapshots WHERE rowid <= (SELECT MAX(rowid) FROM snapshots) - ?",
                            (self.keep_snapshots,))
        return cur.rowcount == 1

    def snapshot(self, alert_id: str) -> dict[str, Any] | None:
        """The device state kept for an alert, if any."""
        row = self.db.execute("SELECT ts, device_id, data FROM snapshots WHERE alert_id = ?", (alert_id,)).fetchone()
        if row is None:
            return None
        return {"ts": row[0], "device_id": row[1], **json.loads(row[2])}
