"""Storm control: above N notifications a minute to one recipient, collect the rest into a digest."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class StormControl:
    """Per-recipient sliding one-minute window; what does not fit waits for the next digest."""

    max_per_minute: int
    digest_s: float = 60.0
    _sent: dict[str, deque[float]] = field(default_factory=dict)
    _held: dict[str, list[str]] = field(default_factory=dict)
    _held_since: dict[str, float] = field(default_factory=dict)

    def admit(self, recipient: str, now: float) -> bool:
        """Whether a notification to ``recipient`` may go out now (counts it when it may)."""
        q = self._sent.setdefault(recipient, deque())
        while q and q[0] <= now - 60.0:
            q.popleft()
        if len(q) >= self.max_per_minute:
            return False
        q.append(now)
        return True

    def hold(self, recipient: str, line: str, now: float) -> None:
        """Keep a held notification's title for the recipient's next digest."""
        self._held.setdefault(recipient, []).append(line)
        self._held_since.setdefault(recipient, now)

    def held_for(self, recipient: str) -> tuple[float, list[str]] | None:
        """(since, lines) held for a recipient, for persistence."""
        if recipient not in self._held_since:
            return None
        return self._held_since[recipient], list(self._held.get(recipient, []))

    def restore(self, recipient: str, since: float, lines: list[str]) -> None:
        """Put back held lines loaded from the store."""
        self._held[recipient] = list(lines)
        self._held_since[recipient] = since

    def due_digests(self, now: float) -> list[tuple[str, list[str]]]:
        """Digests due: recipients whose oldest held line waited ``digest_s``."""
        out = []
        for rcpt, since in list(self._held_since.items()):
            if now - since >= self.digest_s:
                out.append((rcpt, self._held.pop(rcpt, [])))
                del self._held_since[rcpt]
        return out

    def next_due(self) -> float | None:
        """When the next digest is due."""
        return min(self._held_since.values()) + self.digest_s if self._held_since else None

    def shift(self, delta: float) -> list[str]:
        """Move the rate windows and digest waits by a step of the wall clock (``delta`` s); returns who waits."""
        for q in self._sent.values():
            for i in range(len(q)):
                q[i] += delta
        for rcpt in self._held_since:
            self._held_since[rcpt] += delta
        return list(self._held_since)

    def held(self) -> int:
        """How many notifications wait for a digest."""
        return sum(len(v) for v in self._held.values())
