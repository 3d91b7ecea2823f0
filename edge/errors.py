"""The exception family of the edge package: every error it defines derives from ``EdgeError`` (see broker/errors.py)."""

from __future__ import annotations

from broker.errors import VigilError


class EdgeError(VigilError):
    """Base of the edge package's errors (gateways, agents, the edge runtime)."""
