"""The runtime every Vigil edge agent shares: identity, presence and store-and-forward publishing.

The gateway runtime (``server``, ``connections``, ``rejections``, ``counters``, ``output``,
``uplink``, ``cli``) lives beside it. ``EdgeLink`` and the outbox are imported on first use: they
pull in the MQTT client and SQLite, which a gateway's pure cores and their tests do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge.runtime.identity import EdgeIdentity, IdentityError, gateway_status_topic, read_password

if TYPE_CHECKING:
    from edge.runtime.link import EdgeLink, EdgeLinkError
    from edge.runtime.outbox import DurableOutbox, OutboxError, OutboxMessage

__all__ = [
    "DurableOutbox",
    "EdgeIdentity",
    "EdgeLink",
    "EdgeLinkError",
    "IdentityError",
    "OutboxError",
    "OutboxMessage",
    "gateway_status_topic",
    "read_password",
]

_LAZY = {"EdgeLink": "edge.runtime.link", "EdgeLinkError": "edge.runtime.link",
         "DurableOutbox": "edge.runtime.outbox", "OutboxError": "edge.runtime.outbox",
         "OutboxMessage": "edge.runtime.outbox"}


def __getattr__(name: str) -> object:
    """``EdgeLink``, ``EdgeLinkError`` and the outbox names, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
