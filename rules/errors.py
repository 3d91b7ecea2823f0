"""The exception family of the rules package: every error it defines derives from ``RulesError`` (see broker/errors.py)."""

from __future__ import annotations

from broker.errors import VigilError


class RulesError(VigilError):
    """Base of the rules stage's errors (rule files, expressions, replay)."""
