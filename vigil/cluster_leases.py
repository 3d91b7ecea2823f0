"""Which leases are free, judged from what this instance saw of the lease bucket (pure; no I/O), and lease errors.

A lease is a KV key whose revision its holder bumps every round. Another instance considers it
expired only once it has *itself* seen the same revision for ``ttl`` seconds of its own monotonic
clock, over rounds that all succeeded. So no two machines' wall clocks are compared, and a cluster
hiccup (a JetStream leader election takes 4 - 9 s on nats-server 2.9, during which nobody can renew)
does not expire every lease at once: a failed round forgets the observations and the count starts
again. Taking an expired lease is a revision-checked update, so of two claimers one wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from vigil.errors import ProgramError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_PREFIX = "i."


@dataclass(slots=True)
class Sighting:
    """A key's revision and owner as last read, and since when (monotonic) it has not changed."""

    revision: int
    owner: str
    since: float


class LeaseTable:
    """Sightings of lease and heartbeat keys; decides what is free and who is alive."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.seen: dict[str, Sighting] = {}

    def observe(self, key: str, revision: int | None, owner: str | None) -> None:
        """Record a read of ``key`` (``revision`` None: absent or deleted)."""
        if revision is None or owner is None:
            self.seen.pop(key, None)
            return
        old = self.seen.get(key)
        if old is None or old.revision != revision:
            self.seen[key] = Sighting(revision, owner, self.clock())

    def forget(self) -> None:
        """A round failed: nothing counts as unchanged across it."""
        self.seen.clear()

    def state(self, key: str) -> tuple[str, int | None]:
        """``("absent", None)``, ``("expired", revision)`` or ``("held", revision)``."""
        s = self.seen.get(key)
        if s is None:
            return "absent", None
        if self.clock() - s.since >= self.ttl_s:
            return "expired", s.revision
        return "held", s.revision

    def owner(self, key: str) -> str | None:
        """The holder of a key as last seen."""
        s = self.seen.get(key)
        return s.owner if s is not None else None

    def live_instances(self, me: str) -> set[str]:
        """Instances whose heartbeat changed within ``ttl`` (and this one)."""
        live = {me}
        for key, s in self.seen.items():
            if key.startswith(HEARTBEAT_PREFIX) and self.clock() - s.since < self.ttl_s:
                live.add(key[len(HEARTBEAT_PREFIX):])
        return live


def fair_share(partitions: int, live: int) -> int:
    """How many partitions one of ``live`` instances should hold."""
    return -(-partitions // max(1, live))


class LeaseLost(ProgramError):
    """Another instance owns what this one was working on; stop without writing anything more."""


async def patiently(call: Callable[[], Awaitable[T]], what: str, attempts: int = 30) -> T:
    """``call()``, retried while the cluster fails over (a JetStream leader election takes seconds)."""
    for attempt in range(attempts):
        try:
            return await call()
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying", what, exc or type(exc).__name__)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")
