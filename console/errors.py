"""The exception family of the console package: every error it defines derives from ``ConsoleError`` (see broker/errors.py)."""

from __future__ import annotations

from broker.errors import VigilError


class ConsoleError(VigilError):
    """Base of the console's errors (its requests, layers, queries)."""
