"""Connection caps every TCP gateway applies at accept: in total, per source address, unauthenticated per address.

Pure bookkeeping (no sockets): the server asks ``admit`` when a connection arrives, says
``authenticated`` when its device proved who it is and ``closed`` when it ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

MAX_CONNECTIONS: Final = "max_connections"
PER_ADDRESS: Final = "connections_per_address"
PREAUTH_PER_ADDRESS: Final = "unauthenticated_connections_per_address"
"""Names of the caps, as counted in ``refused.<limit>``."""


@dataclass(frozen=True, slots=True)
class ConnectionCaps:
    """How many connections a gateway holds at once."""

    max_connections: int = 20_000
    max_per_address: int = 1_000
    """Devices behind one NAT address (carrier NAT, a plant's router) share this cap."""
    max_preauth_per_address: int = 64
    """Connections from one address that have not authenticated yet."""


class ConnectionLimiter:
    """Open and not yet authenticated connections, in total and per source address."""

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self.open = 0
        self.per_address: Counter[str] = Counter()
        self.preauth: Counter[str] = Counter()

    @property
    def preauth_total(self) -> int:
        """Connections that have not authenticated yet."""
        return sum(self.preauth.values())

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address`` in, or return the name of the cap it hits."""
        caps = self.caps
        if self.open >= caps.max_connections:
            return MAX_CONNECTIONS
        if self.per_address[address] >= caps.max_per_address:
            return PER_ADDRESS
        if self.preauth[address] >= caps.max_preauth_per_address:
            return PREAUTH_PER_ADDRESS
        self.open += 1
        self.per_address[address] += 1
        self.preauth[address] += 1
        return None

    def describe(self, limit: str, address: str) -> str:
        """Why a connection from ``address`` was refused, in words (for logs and dead letters)."""
        caps = self.caps
        if limit == MAX_CONNECTIONS:
            return f"{self.open} connections open (cap {caps.max_connections})"
        if limit == PER_ADDRESS:
            return f"{self.per_address[address]} connections from {address} (cap {caps.max_per_address})"
        return (f"{self.preauth[address]} unauthenticated connections from {address} "
                f"(cap {caps.max_preauth_per_address})")

    def authenticated(self, address: str) -> None:
        """A connection from ``address`` authenticated: it no longer counts as unauthenticated."""
        _drop(self.preauth, address)

    def closed(self, address: str, authenticated: bool) -> None:
        """A connection from ``address`` ended (``authenticated``: ``authenticated`` was called for it)."""
        self.open = max(0, self.open - 1)
        _drop(self.per_address, address)
        if not authenticated:
            _drop(self.preauth, address)


def _drop(counts: Counter[str], address: str) -> None:
    counts[address] -= 1
    if counts[address] <= 0:
        del counts[address]
