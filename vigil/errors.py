"""The exception family of the vigil package: every error it defines derives from ``ProgramError`` (see broker/errors.py)."""

from __future__ import annotations

from broker.errors import VigilError


class ProgramError(VigilError):
    """Base of the vigil program's errors (configuration, cluster membership)."""
