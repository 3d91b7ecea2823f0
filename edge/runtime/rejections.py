"""What every gateway does with a refusal besides counting it: a bounded log and aggregated dead letters.

``RejectionLog`` writes the first ``burst`` refusals per reason and window in full, then one line
saying how many more there were. ``DeadLetterAggregator`` lets the first few refusals per source
and reason through as individual dead letters and turns the rest of the window into one summary,
so a flood of garbage from one address cannot become a flood of MQTT messages or log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("edge.gateway")


class RejectionLog:
    """Logs refusals with their reason, at most ``burst`` lines per reason per ``window_s``."""

    def __init__(self, prefix: str, burst: int = 5, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.prefix, self.burst, self.window_s, self._clock = prefix, burst, window_s, clock
        self._log = logger or log
        self._seen: dict[str, tuple[float, int]] = {}

    def note(self, reason: str, peer: str, detail: str, *, device: str | None = None, what: str | None = None) -> None:
        """Log one refusal unless its reason already used up this window.

        Args:
            reason: the protocol's reason name (``bad_crc``, ``auth_failed``, ...).
            peer: ``host:port`` the bytes came from.
            detail: why, for the operator (never a secret).
            device: the device id the refusal concerns, if known.
            what: the message concerned (``msg 0x0200``, ``CN 2011``), if known.
        """
        now = self._clock()
        start, count = self._seen.get(reason, (now, 0))
        if now - start > self.window_s:
            if count > self.burst:
                self._log.warning("%s: %d more %s rejections in the last %.0f s", self.prefix, count - self.burst,
                                  reason, now - start)
            start, count = now, 0
        self._seen[reason] = (start, count + 1)
        if count < self.burst:
            self._log.warning("%s: refused %s from %s (device %s, %s): %s", self.prefix, reason, peer, device or "-",
                              what or "-", detail)


@dataclass(frozen=True, slots=True)
class Summary:
    """Refusals of one source and reason held back during a window."""

    source: str
    reason: str
    suppressed: int
    seconds: float


class DeadLetterAggregator:
    """Lets the first ``burst`` refusals per (source, reason) through in each window and counts the rest.

    The window of a key starts with its first refusal; ``due`` closes the windows that ended and
    returns a ``Summary`` for each that held refusals back. Past ``max_keys`` sources at once, new
    sources share the key ``("*", reason)``: memory stays bounded, the counters keep every count.
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_keys: int = 10_000) -> None:
        self.burst, self.window_s, self.max_keys = burst, window_s, max_keys
        self._windows: dict[tuple[str, str], list[float]] = {}
        """key -> [window start, refusals seen in the window, refusals let through]."""
        self.suppressed_total = 0

    def admit(self, source: str, reason: str, now: float, *, burst: int | None = None) -> bool:
        """Count one refusal; True when it should be dead-lettered individually.

        ``burst`` overrides the per-window allowance for this source (a device that proved who it
        is may get more individual dead letters than an anonymous address).
        """
        key = (source, reason)
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = ("*", reason)
        w = self._windows.setdefault(key, [now, 0.0, 0.0])
        w[1] += 1
        if w[2] < (self.burst if burst is None else burst):
            w[2] += 1
            return True
        self.suppressed_total += 1
        return False

    def due(self, now: float, *, all_: bool = False) -> list[Summary]:
        """Close the windows that ended (every window with ``all_``); summaries of those that held any back."""
        out: list[Summary] = []
        for key, (start, seen, passed) in list(self._windows.items()):
            if all_ or now - start >= self.window_s:
                del self._windows[key]
                if seen > passed:
                    out.append(Summary(key[0], key[1], int(seen - passed), max(0.0, now - start)))
        return out
