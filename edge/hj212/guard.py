"""Abuse guards of the HJ 212 gateway (pure, clock injected).

``AuthThrottle`` slows password guessing (exponential, bounded delay per MN and per source
address). The connection caps (``edge.runtime.connections``) and the dead-letter aggregation
(``edge.runtime.rejections``) are the gateway runtime's; this module holds their HJ 212 settings
(``GuardPolicy``) and how HJ 212 keys and words an aggregated dead letter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from edge.hj212.codec import Hj212Reject, Hj212Rejection
from edge.runtime.rejections import Summary

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


def dead_letter_source(mn: str | None, address: str) -> str:
    """The key refusals are aggregated under: the MN of an authenticated logger, else the source address."""
    return f"mn:{mn}" if mn else f"addr:{address}"


def summary_rejection(summary: Summary) -> Hj212Rejection:
    """The dead letter that stands for the refusals of one source and reason held back in a window."""
    detail = (f"{summary.suppressed} more refused from {summary.source} in {summary.seconds:.0f} s "
              f"(aggregated, count={summary.suppressed})")
    mn = summary.source[3:] if summary.source.startswith("mn:") else None
    return Hj212Rejection(Hj212Reject(summary.reason), detail, mn=mn)
