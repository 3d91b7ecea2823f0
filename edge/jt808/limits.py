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
