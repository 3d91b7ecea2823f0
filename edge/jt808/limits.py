"""Bounds the JT/T 808 gateway applies to what terminals (and anyone else) can make it do.

Pure and clock-free like the sessions: callers pass ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Registration/authentication throttles and pre-authentication bounds of one gateway."""

    per_address_burst: float = 200.0
    """Register/authenticate attempts one source address may make at once (NAT'ed fleets share one)."""
    per_address_per_s: float = 50.0
    per_phone_burst: float = 10.0
    """Register/authenticate attempts naming one phone number at once."""
    per_phone_per_s: float = 0.1
    max_auth_failures: int = 3
    """Failed authentications after which the connection is closed."""
    max_preauth_errors: int = 8
    """Refusals an unauthenticated connection may cause before it is closed."""
    max_keys: int = 100_000
    """Addresses / phones tracked by each throttle (the least recently used are forgotten beyond)."""


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    """Split-message reassembly bounds (only authenticated connections reassemble)."""

    per_connection_bytes: int = 128 * 1024
    total_bytes: int = 16 * 1024 * 1024
    """Shared by all connections of the gateway."""
    max_pending: int = 4
    max_packets: int = 64


class RateLimiter:
    """Token buckets per key, bounded in the number of keys."""

    def __init__(self, burst: float, per_s: float, max_keys: int = 100_000) -> None:
        self.burst, self.per_s, self.max_keys = burst, per_s, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.per_s)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # re-inserted: dict order is least recently used first
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return ok


class ByteBudget:
    """Bytes of reassembly memory shared by all connections of a gateway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would exceed the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes."""
        self.used = max(0, self.used - n)


class Aggregator:
    """Lets the first ``burst`` items per key through in each window and counts the rest.

    Used for dead letters: a flood of refusals from one address becomes a handful of individual
    dead letters plus one summary per window instead of one MQTT message per refused frame.
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_keys: int = 10_000) -> None:
        self.burst, self.window_s, self.max_keys = burst, window_s, max_keys
        self._windows: dict[tuple[str, str], list[float]] = {}
        """key -> [window start, items seen in the window]."""

    def admit(self, key: tuple[str, str], now: float) -> bool:
        """Count one item; True when it should be passed on individually."""
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = ("*", key[1])  # too many sources at once: aggregate them together
        w = self._windows.setdefault(key, [now, 0.0])
        w[1] += 1
        return w[1] <= self.burst

    def due(self, now: float, *, all_: bool = False) -> list[tuple[tuple[str, str], int, float]]:
        """Close the windows that ended (all with ``all_``): ``(key, suppressed, seconds)`` where any were held back."""
        out: list[tuple[tuple[str, str], int, float]] = []
        for key, (start, seen) in list(self._windows.items()):
            if all_ or now - start >= self.window_s:
                del self._windows[key]
                if seen > self.burst:
                    out.append((key, int(seen - self.burst), max(0.0, now - start)))
        return out
