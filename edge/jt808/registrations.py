"""JT/T 808 terminal registrations: who registered, with what identity, and their hashed auth codes.

A terminal registers once (0x0100) and keeps the auth code the platform gave it; every later
connection authenticates (0x0102) with that code. Codes are random (``secrets``), stored only as
SHA-256 hashes, and kept in a SQLite file (``SqliteRegistrations``) so a gateway restart keeps
them. A registered terminal cannot register again until an operator resets it
(``vigil edge jt808 reset-registration PHONE --registrations FILE``), which is what stops another
TCP client from taking a vehicle's identity by re-registering its phone number.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Protocol

from edge.errors import EdgeError

REGISTRATIONS_FILE: Final = "jt808-registrations.sqlite3"
"""File name of the store inside ``--data-dir``."""


@dataclass(frozen=True, slots=True)
class TerminalIdentity:
    """The registration fields of a terminal (0x0100) that must match the device registry."""

    manufacturer: str
    model: str
    terminal_id: str
    plate_colour: int
    plate: str

    def normalised(self) -> TerminalIdentity:
        """Fields compared without padding, surrounding blanks or letter case."""
        return TerminalIdentity(_norm(self.manufacturer), _norm(self.model), _norm(self.terminal_id),
                                self.plate_colour, _norm(self.plate))

    def mismatches(self, sent: TerminalIdentity) -> list[str]:
        """Names of the fields where ``sent`` differs from this (expected) identity."""
        mine, theirs = self.normalised(), sent.normalised()
        return [name for name in ("manufacturer", "model", "terminal_id", "plate_colour", "plate")
                if getattr(mine, name) != getattr(theirs, name)]


def _norm(text: str) -> str:
    return text.strip("\x00 \t").upper()


def new_auth_code() -> str:
    """A fresh random auth code (96 bits, 24 hex digits)."""
    return secrets.token_hex(12)


def hash_code(code: str) -> str:
    """The stored form of an auth code (codes are random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(b"vigil-jt808-auth:" + code.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered terminal."""

    device_id: str
    code_hash: str
    identity: TerminalIdentity
    registered_at: datetime
    peer: str

    def verify(self, code: str) -> bool:
        """Whether ``code`` is this terminal's auth code (constant-time compare of hashes)."""
        return hmac.compare_digest(hash_code(code), self.code_hash)


class RegistrationStoreError(EdgeError):
    """The registration store could not be read or written."""


class RegistrationStore(Protocol):
    """Where registrations live (``MemoryRegistrations``, ``SqliteRegistrations``)."""

    def get(self, device_id: str) -> Registration | None:
        """The registration of a terminal, or None."""
        ...

    def plate_owner(self, plate_colour: int, plate: str) -> str | None:
        """The device id registered with this plate, or None."""
        ...

    def add(self, registration: Registration) -> bool:
        """Store a registration; False when the terminal is already registered."""
        ...

    def remove(self, device_id: str) -> bool:
        """Forget a terminal's registration (admin reset); False when there was none."""
        ...

    def all(self) -> list[Registration]:
        """Every registration, by device id."""
        ...


class MemoryRegistrations:
    """Registrations held in memory only (tests, demo): a restart forgets them."""

    def __init__(self) -> None:
        self._regs: dict[str, Registration] = {}

    def get(self, device_id: str) -> Registration | None:
        """The registration of a terminal, or None."""
        return self._regs.get(device_id)

    def plate_owner(self, plate_colour: int, plate: str) -> str | None:
        """The device id registered with this plate, or None."""
        key = _norm(plate)
        for reg in self._regs.values():
            if reg.identity.plate_colour == plate_colour and _norm(reg.identity.plate) == key:
                return reg.device_id
        return None

    def add(self, registration: Registration) -> bool:
        """Store a registration; False when the terminal is already registered."""
        if registration.device_id in self._regs:
            return False
        self._regs[registration.device_id] = registration
        return True

    def remove(self, device_id: str) -> bool:
        """Forget a terminal's registration."""
        return self._regs.pop(device_id, None) is not None

    def all(self) -> list[Registration]:
        """Every registration, by device id."""
        return [self._regs[k] for k in sorted(self._regs)]


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS registrations (
    device_id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL,
    manufacturer TEXT NOT NULL,
    model TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    plate_colour INTEGER NOT NULL,
    plate TEXT NOT NULL,
    plate_key TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    peer TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS registrations_plate ON registrations (plate_colour, plate_key);
"""


class SqliteRegistrations:
    """Registrations in a SQLite file, shared with the admin commands (and other gateway processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: every registration is one short statement. The default rollback journal
            # (not WAL): several processes (gateway, admin command) and, in tests, several
            # connections of one process share the file safely.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=2.0)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise RegistrationStoreError(f"{self.path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteRegistrations({str(self.path)!r})"

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise RegistrationStoreError(f"{self.path}: {exc}") from None

    def get(self, device_id: str) -> Registration | None:
        """The registration of a terminal, or None."""
        rows = self._rows("SELECT device_id, code_hash, manufacturer, model, terminal_id, plate_colour, plate, "
                          "registered_at, peer FROM registrations WHERE device_id = ?", (device_id,))
        return _registration(rows[0]) if rows else None

    def plate_owner(self, plate_colour: int, plate: str) -> str | None:
        """The device id registered with this plate, or None."""
        rows = self._rows("SELECT device_id FROM registrations WHERE plate_colour = ? AND plate_key = ? LIMIT 1",
                          (plate_colour, _norm(plate)))
        return str(rows[0][0]) if rows else None

    def add(self, registration: Registration) -> bool:
        """Store a registration; False when the terminal is already registered."""
        ident = registration.identity
        try:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO registrations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (registration.device_id, registration.code_hash, ident.manufacturer, ident.model, ident.terminal_id,
                 ident.plate_colour, ident.plate, _norm(ident.plate), registration.registered_at.isoformat(),
                 registration.peer))
        except sqlite3.Error as exc:
            raise RegistrationStoreError(f"{self.path}: {exc}") from None
        return cur.rowcount == 1

    def remove(self, device_id: str) -> bool:
        """Forget a terminal's registration."""
        try:
            cur = self._db.execute("DELETE FROM registrations WHERE device_id = ?", (device_id,))
        except sqlite3.Error as exc:
            raise RegistrationStoreError(f"{self.path}: {exc}") from None
        return cur.rowcount > 0

    def all(self) -> list[Registration]:
        """Every registration, by device id."""
        return [_registration(r) for r in self._rows(
            "SELECT device_id, code_hash, manufacturer, model, terminal_id, plate_colour, plate, registered_at, peer "
            "FROM registrations ORDER BY device_id", ())]


def _registration(row: tuple[object, ...]) -> Registration:
    device_id, code_hash, maker, model, term, colour, plate, at, peer = row
    return Registration(str(device_id), str(code_hash),
                        TerminalIdentity(str(maker), str(model), str(term), int(str(colour)), str(plate)),
                        datetime.fromisoformat(str(at)), str(peer))


def store_path(registrations: str | None, data_dir: str | None) -> Path | None:
    """The store file from ``--registrations`` or ``--data-dir`` (None: keep registrations in memory)."""
    if registrations:
        return Path(registrations)
    if data_dir:
        return Path(data_dir) / REGISTRATIONS_FILE
    return None
