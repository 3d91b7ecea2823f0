"""SQLite persistence of work orders, in the alerting database (same connection, same transactions)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import msgspec

from alerting.store import where_clause
from alerting.workorders.model import WorkOrder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workorders (
  id TEXT PRIMARY KEY, grid TEXT NOT NULL, stage TEXT NOT NULL, unit TEXT NOT NULL, category TEXT NOT NULL,
  assignee TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS workorders_grid ON workorders(grid, stage);
CREATE INDEX IF NOT EXISTS workorders_created ON workorders(created_at);
"""
_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(WorkOrder)
COLUMNS = ("grid", "stage", "unit", "category", "assignee")


class OrderStore:
    """Work orders in the alerting service's SQLite database (committed with the alert changes)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def put(self, o: WorkOrder) -> None:
        """Insert or replace an order."""
        self.db.execute("INSERT OR REPLACE INTO workorders VALUES (?,?,?,?,?,?,?,?,?)",
                        (o.id, o.grid, o.stage, o.unit, o.category, o.assignee, o.created_at, o.updated_at,
                         _ENC.encode(o)))

    def get(self, order_id: str) -> WorkOrder | None:
        """One order by id."""
        row = self.db.execute("SELECT data FROM workorders WHERE id = ?", (order_id,)).fetchone()
        return _DEC.decode(row[0]) if row else None

    def open_orders(self) -> list[WorkOrder]:
        """Every order not closed."""
        return [_DEC.decode(r[0]) for r in self.db.execute("SELECT data FROM workorders WHERE stage != 'closed'")]

    def query(self, *, stages: list[str] | None = None, grids: Iterable[str] | None = None,
              since: float | None = None, until: float | None = None, filters: dict[str, str] | None = None,
              limit: int = 10_000, offset: int = 0) -> list[WorkOrder]:
        """Orders by stage, grid set, creation time and columns, newest first."""
        g = list(grids) if grids is not None else []
        if grids is not None and not g:
            return []  # an empty grid set sees nothing (not everything)
        where, args = where_clause(one_of={"stage": stages or (), "grid": g}, time_column="created_at",
                                   since=since, until=until, filters=filters, columns=COLUMNS)
        rows = self.db.execute(f"SELECT data FROM workorders {where} ORDER BY created_at DESC LIMIT ? OFFSET ?",
                               (*args, limit, offset)).fetchall()
        return [_DEC.decode(r[0]) for r in rows]
