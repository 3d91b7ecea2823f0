"""The exception family of the storage package: every error it defines derives from ``StorageError`` (see broker/errors.py)."""

from __future__ import annotations

from broker.errors import VigilError


class StorageError(VigilError):
    """Base of the storage stage's errors (backends, outbox, queries, line protocol)."""
