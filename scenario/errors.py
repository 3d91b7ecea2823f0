"""The scenario harness's one exception (see broker/errors.py for the family)."""

from __future__ import annotations

from broker.errors import VigilError


class ScenarioError(VigilError):
    """A scenario file is invalid; the message names the file and the key."""
