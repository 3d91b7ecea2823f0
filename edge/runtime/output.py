"""What a gateway's pure session hands its server: replies, publications, rejections, close."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Publication:
    """One MQTT message to publish (``retain`` for a device's status)."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something refused, with why and the bytes concerned."""

    reason: str
    """The protocol's reason name (a ``StrEnum`` member or a plain string)."""
    detail: str
    peer: str
    device_id: str | None
    msg_id: int | None
    raw: bytes


@dataclass(slots=True)
class SessionOutput:
    """What one call into a session produced."""

    replies: list[bytes] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    close: bool = False
