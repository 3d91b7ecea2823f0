"""The exception family of the simulators package: every error it defines derives from ``SimulatorError``."""

from __future__ import annotations

from broker.errors import VigilError


class SimulatorError(VigilError):
    """Base of the simulators' errors (scenario files, simulated platforms)."""
