"""``GatewayCounters``: the counters every TCP gateway keeps, under one set of names.

A protocol adds its own fields by subclassing (a dataclass with more ``int`` or ``Counter``
fields); ``snapshot()`` flattens all of them the same way for logs, heartbeats and benchmarks:
plain counters by name, keyed ones as ``name.key`` (``rejected.bad_crc``, ``closed.idle``,
``refused.connections_per_address``, ``messages.0x0200``) and ``rejected`` as the total of refusals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class GatewayCounters:
    """Counters of one gateway process (connections, traffic, refusals, publication)."""

    bytes_in: int = 0
    frames: int = 0
    replies: int = 0
    published: int = 0
    """Messages handed to the publish sink (telemetry, events, statuses, dead letters)."""
    publish_failures: int = 0
    """Messages the sink raised on (broker trouble, disk full); counted, the gateway carries on."""
    replies_withheld: int = 0
    """Answers not sent because a message they acknowledge was not taken by the sink (the device resends)."""
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    """Connections closed at accept by a cap (which one: ``refused.<limit>``)."""
    dead_letters_suppressed: int = 0
    """Refusals counted into a dead-letter summary instead of being published one by one."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Refused bytes, frames or messages by reason (the protocol's reason names)."""
    closed: Counter[str] = field(default_factory=Counter)
    """Connections the gateway closed, by why (``idle``, ``auth_timeout``, ...)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Connections refused at accept, by limit (``max_connections``, ``connections_per_address``, ...)."""

    def snapshot(self) -> dict[str, int]:
        """Every counter by name; keyed counters as ``name.key``; ``rejected`` is the total."""
        flat: dict[str, int] = {}
        keyed: list[tuple[str, Counter[str] | Counter[int]]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Counter):
                keyed.append((f.name, value))
            elif isinstance(value, int):
                flat[f.name] = value
        flat["rejected"] = sum(self.rejected.values())
        for name, counter in keyed:
            items = sorted((_key(k), v) for k, v in counter.items())
            flat.update({f"{name}.{k}": v for k, v in items})
        return flat


def _key(key: object) -> str:
    """Message ids read best in hex (``messages.0x0200``); everything else as its string."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"0x{key:04x}"
    return str(key)
