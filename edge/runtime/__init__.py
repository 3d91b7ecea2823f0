"""The runtime every Vigil edge agent shares: identity, presence and store-and-forward publishing."""

from edge.runtime.identity import EdgeIdentity, IdentityError, gateway_status_topic, read_password
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
