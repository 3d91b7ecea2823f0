"""The exception family of the alerting stage: every error alerting raises on purpose derives from ``AlertingError``."""

from __future__ import annotations

from broker.errors import VigilError


class AlertingError(VigilError):
    """Base of alerting's errors."""
