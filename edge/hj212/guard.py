"""Abuse guards of the HJ 212 gateway (pure, clock injected).

``AuthThrottle`` slows password guessing (exponential, bounded delay per MN and per source
address); ``AddressLimiter`` caps connections per source address, tighter before a connection
has authenticated; ``DeadLetterAggregator`` turns a flood of refused frames from one source into
one summary per interval while the counters keep counting every refusal.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Final

from edge.hj212.codec import Hj212Reject, Hj212Rejection

AUTH_REASONS: Final = frozenset({Hj212Reject.UNKNOWN_DEVICE, Hj212Reject.BAD_PASSWORD})


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Limits against abusive clients; ``docs/hj212.md`` explains each."""

    max_auth_failures: int = 3
    """Close a connection after this many refused MN/PW checks."""
    auth_delay_base_s: float = 0.5
    """Delay before answering the first refused MN/PW check; doubles per further failure."""
    auth_delay_max_s: float = 30.0
    auth_forget_s: float = 900.0
    """A key (MN or address) with no failure for this long starts again from the base delay."""
    max_connections_per_address: int = 1024
    max_preauth_per_address: int = 16
    """Connections from one address that have not yet sent an authenticated packet."""
    preauth_timeout_s: float = 60.0
    """A connection must send an authenticated packet this soon after connecting."""
    frame_timeout_s: float = 60.0
    """A started frame must complete within this time (slowloris)."""
    write_timeout_s: float = 30.0
    """A peer that does not read its replies for this long is disconnected."""
    max_preauth_rejections: int = 32
    """Refused frames tolerated on a connection before it authenticates."""
    dead_letter_interval_s: float = 10.0
    dead_letters_per_interval: int = 1
    """Dead letters published in full per interval per unauthenticated source and reason."""
    dead_letters_per_interval_device: int = 100
    """The same for an authenticated logger (its refusals are more likely worth reading)."""
    max_tracked: int = 100_000
    """Keys remembered by the throttle and the aggregator (oldest forgotten first)."""


class AuthThrottle:
    """Failures per MN and per source address; the delay before answering the next failure."""

    def __init__(self, policy: GuardPolicy) -> None:
        self._policy = policy
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, mn: str | None, address: str, now: float) -> float:
        """Record one refused check; returns the delay (s) to apply before answering it."""
        worst = 0
        for key in (f"mn:{mn}" if mn else None, f"addr:{address}"):
            if key is None:
                continue
            count, last = self._failures.pop(key, (0, now))
            if now - last > self._policy.auth_forget_s:
                count = 0
            count += 1
            self._failures[key] = (count, now)
            worst = max(worst, count)
        while len(self._failures) > self._policy.max_tracked:
            self._failures.popitem(last=False)
        return self.delay_for(worst)

    def delay_for(self, failures: int) -> float:
        """Exponential delay for the n-th failure, bounded by ``auth_delay_max_s``."""
        if failures <= 0:
            return 0.0
        return min(self._policy.auth_delay_max_s, self._policy.auth_delay_base_s * 2.0 ** min(failures - 1, 30))

    def failures(self, key: str) -> int:
        """Failures remembered for ``mn:<MN>`` or ``addr:<address>``."""
        return self._failures.get(key, (0, 0.0))[0]


@dataclass
class AddressLimiter:
    """Open and pre-authentication connections per source address."""

    policy: GuardPolicy
    open: Counter[str] = field(default_factory=Counter)
    preauth: Counter[str] = field(default_factory=Counter)

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or return why it is refused."""
        if self.open[address] >= self.policy.max_connections_per_address:
            return "connections per address"
        if self.preauth[address] >= self.policy.max_preauth_per_address:
            return "unauthenticated connections per address"
        self.open[address] += 1
        self.preauth[address] += 1
        return None

    def authenticated(self, address: str) -> None:
        """The connection sent its first authenticated packet."""
        self._drop(self.preauth, address)

    def closed(self, address: str, authenticated: bool) -> None:
        """The connection ended."""
        self._drop(self.open, address)
        if not authenticated:
            self._drop(self.preauth, address)

    @staticmethod
    def _drop(counter: Counter[str], address: str) -> None:
        counter[address] -= 1
        if counter[address] <= 0:
            del counter[address]


@dataclass
class _Bucket:
    started: float
    published: int = 0
    suppressed: int = 0


class DeadLetterAggregator:
    """Decides which refusals are dead-lettered in full and summarises the rest per interval.

    Key = (source, reason) where source is ``mn:<MN>`` for an authenticated connection and
    ``addr:<address>`` otherwise; the first ``dead_letters_per_interval`` refusals of a key in an
    interval are published in full, the rest are counted and reported by ``flush``.
    """

    def __init__(self, policy: GuardPolicy) -> None:
        self._policy = policy
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self.suppressed_total = 0

    def admit(self, rejection: Hj212Rejection, source: str, authenticated: bool, now: float) -> bool:
        """True: publish this refusal in full; False: it is counted into the next summary."""
        key = (source, rejection.reason.value)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(now)
            if len(self._buckets) > self._policy.max_tracked:
                # Forgetting a bucket loses only its summary line; the counters keep the count.
                self._buckets.popitem(last=False)
        budget = (self._policy.dead_letters_per_interval_device if authenticated
                  else self._policy.dead_letters_per_interval)
        if bucket.published < budget:
            bucket.published += 1
            return True
        bucket.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self, now: float, force: bool = False) -> list[tuple[str, Hj212Rejection]]:
        """Summaries (source, rejection) of intervals that ended; ``force`` ends them all."""
        out: list[tuple[str, Hj212Rejection]] = []
        interval = self._policy.dead_letter_interval_s
        for key in [k for k, b in self._buckets.items() if force or now - b.started >= interval]:
            bucket = self._buckets.pop(key)
            if bucket.suppressed:
                source, reason = key
                detail = (f"{bucket.suppressed} more refused from {source} in {now - bucket.started:.0f} s "
                          f"(aggregated, count={bucket.suppressed})")
                mn = source[3:] if source.startswith("mn:") else None
                out.append((source, Hj212Rejection(Hj212Reject(reason), detail, mn=mn)))
        return out
