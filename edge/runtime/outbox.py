"""What an edge process keeps on disk: the durable outbox of unsent messages, and its open events.

The outbox: messages wait on disk, in order, until the broker acknowledged them. SQLite in WAL mode
with ``synchronous=NORMAL``: a commit survives a crash of the agent (the WAL is in the OS page cache)
and costs no fsync; a power cut may lose the last commits since the previous checkpoint.
``synchronous="FULL"`` trades rate for that too. Sequence numbers come from ``AUTOINCREMENT``, so they
never repeat, even across restarts: delivery order is sequence order. The outbox is bounded by message
count; past the bound the oldest messages not yet handed to the broker are dropped and counted (the
count is stored, so it survives restarts).

Open events (``OpenEventFile``): the start/end events an agent has started and not ended, kept in its
data folder so a restarted agent can end or go on with them. An agent writes the file on start/end
transitions only (never per reading), atomically: a temporary file, fsync, rename. After a restart the
agent's detectors take the recorded events over: an event whose condition is gone ends under its
original id, one that still holds goes on under it (no second start). Without a data folder nothing is
kept (``MemoryOpenEvents`` or none).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec

from edge.errors import EdgeError

log = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(EdgeError):
    """The outbox file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message waiting for delivery."""

    seq: int
    topic: str
    payload: bytes
    retain: bool
    queued_at: float
    """Epoch seconds at which the agent queued it."""


class DurableOutbox:
    """A bounded, ordered, on-disk queue of MQTT messages (one writer process)."""

    def __init__(self, path: Path, max_messages: int = 100_000,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        """Open (or create) the outbox file.

        Args:
            path: the SQLite file; its folder is created when missing.
            max_messages: the bound; must be at least 1.
            synchronous: SQLite durability level (see the module docstring).

        Raises:
            OutboxError: the file cannot be opened.
            ValueError: ``max_messages`` is below 1.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = path
        self.max_messages = max_messages
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM outbox").fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        self._count: int = int(row[0])
        self._cursor = 0
        """Highest sequence handed out by ``take`` in this process (messages up to it are in flight)."""
        self.dropped: int = int(counters.get("dropped", 0))
        """Messages dropped because the bound was reached (all time, persisted)."""
        self.appended: int = int(counters.get("appended", 0))
        """Messages ever appended (all time, persisted)."""
        self.delivered: int = int(counters.get("delivered", 0))
        """Messages acknowledged by the broker and removed (all time, persisted)."""

    def __len__(self) -> int:
        """Messages stored, in flight or not."""
        return self._count

    @property
    def unsent(self) -> int:
        """Messages stored and not yet handed to the broker by this process."""
        if self._count == 0:
            return 0
        row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE seq > ?", (self._cursor,)).fetchone()
        return int(row[0])

    def append(self, topic: str, payload: bytes, *, retain: bool = False, now: float) -> int:
        """Store one message; returns its sequence number.

        Raises:
            OutboxError: the write failed (disk full, file removed).
        """
        return self.append_many([(topic, payload, retain)], now=now)[-1]

    def append_many(self, items: Iterable[tuple[str, bytes, bool]], *, now: float) -> list[int]:
        """Store several messages in one transaction; returns their sequence numbers in order.

        Raises:
            OutboxError: the write failed; nothing of the batch is stored.
        """
        seqs: list[int] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for topic, payload, retain in items:
                    cur = self._db.execute(
                        "INSERT INTO outbox(topic, payload, retain, queued_at) VALUES (?, ?, ?, ?)",
                        (topic, payload, int(retain), now),
                    )
                    seqs.append(int(cur.lastrowid or 0))
                over = self._count + len(seqs) - self.max_messages
                dropped = self._drop_oldest(over) if over > 0 else 0
                self._bump("appended", len(seqs))
                if dropped:
                    self._bump("dropped", dropped)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot write outbox {self.path}: {exc}") from exc
        self._count += len(seqs) - dropped
        self.appended += len(seqs)
        self.dropped += dropped
        return seqs

    def _drop_oldest(self, n: int) -> int:
        # Messages already handed to the broker (seq <= cursor) will be delivered anyway, so
        # the bound drops the oldest of the rest; the bound can be exceeded by the in-flight window.
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?)",
            (self._cursor, n),
        )
        return int(cur.rowcount)

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def take(self, limit: int) -> list[OutboxMessage]:
        """The next ``limit`` messages not yet handed out, oldest first; marks them in flight."""
        if limit <= 0 or self._count == 0:
            return []
        rows = self._db.execute(
            "SELECT seq, topic, payload, retain, queued_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._cursor, limit),
        ).fetchall()
        if rows:
            self._cursor = int(rows[-1][0])
        return [OutboxMessage(int(r[0]), str(r[1]), bytes(r[2]), bool(r[3]), float(r[4])) for r in rows]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete delivered messages; returns how many were stored.

        Raises:
            OutboxError: the write failed.
        """
        batch = [(s,) for s in seqs]
        if not batch:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
                removed = self._db.total_changes - before
                if removed:
                    self._bump("delivered", removed)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot write outbox {self.path}: {exc}") from exc
        self._count -= removed
        self.delivered += removed
        return removed

    def rewind(self) -> None:
        """Forget what was handed out, so ``take`` starts again from the oldest stored message."""
        self._cursor = 0

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest stored message has waited (0 when empty)."""
        if self._count == 0:
            return 0.0
        row = self._db.execute("SELECT MIN(queued_at) FROM outbox").fetchone()
        return max(0.0, now - float(row[0])) if row[0] is not None else 0.0

    def close(self) -> None:
        """Close the file (idempotent)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


OPEN_EVENTS_FILE: Final = "open-events.json"
"""File name inside an agent's data folder."""
RESTART_REASON: Final = "cleared while the agent was down"
"""``data.reason`` of an event found over on the first readings after a restart."""


@dataclass(frozen=True, slots=True)
class OpenEvent:
    """An event that started and has not ended."""

    event_id: str
    type: str
    started_at: float
    """Epoch seconds (device or source time) of its start."""
    zone: str | None = None
    severity: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """What the detector needs to take it over (e.g. where passengers are trapped)."""


class OpenEventStore(Protocol):
    """Where an agent's open events outlive the process."""

    def load(self) -> list[OpenEvent]:
        """The events open when the previous process stopped."""
        ...

    def save(self, events: Iterable[OpenEvent]) -> None:
        """Replace the record with these open events."""
        ...


class MemoryOpenEvents:
    """Open events in memory (tests; scenario runs hand the same object to the restarted agent)."""

    def __init__(self) -> None:
        self.events: list[OpenEvent] = []

    def load(self) -> list[OpenEvent]:
        """The events recorded last."""
        return list(self.events)

    def save(self, events: Iterable[OpenEvent]) -> None:
        """Replace the record."""
        self.events = list(events)


class OpenEventFile:
    """Open events as one small JSON file (an agent has a handful open at most)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OpenEventFile({str(self.path)!r})"

    def load(self) -> list[OpenEvent]:
        """The recorded events; a missing or unreadable file is none (logged: those events cannot be ended)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("open events: cannot read %s: %s", self.path, exc)
            return []
        try:
            return msgspec.json.decode(raw, type=list[OpenEvent])
        except msgspec.DecodeError as exc:
            log.warning("open events: %s unreadable (%s); starting without them", self.path, exc)
            return []

    def save(self, events: Iterable[OpenEvent]) -> None:
        """Replace the file atomically (temporary file, fsync, rename). Raises ``OSError``."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(list(events)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
