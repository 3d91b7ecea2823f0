"""Open start/end events of an edge agent, kept in its data folder so a restarted agent can end or go on with them.

An agent writes the file on start/end transitions only (never per reading), atomically: a
temporary file, fsync, rename. After a restart the agent's detectors take the recorded events
over: an event whose condition is gone ends under its original id, one that still holds goes on
under it (no second start). Without a data folder nothing is kept (``MemoryOpenEvents`` or none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

log = logging.getLogger(__name__)

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
