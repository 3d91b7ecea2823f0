"""The root of Vigil's exceptions and the broker package's base.

Every package has one base (``broker.errors.BrokerError``, ``edge.errors.EdgeError``,
``rules.errors.RulesError``, ``alerting.errors.AlertingError``, ``storage.errors.StorageError``,
``simulators.errors.SimulatorError``, ``console.errors.ConsoleError``, ``scenario.errors.ScenarioError``,
``vigil.errors.ProgramError``), all derived from ``VigilError``; every exception a package defines derives
from its package's base (tests/unit/test_exception_bases.py). Classes that callers catch as ``ValueError``
(bad configuration or input) keep ``ValueError`` as a second base.
"""

from __future__ import annotations


class VigilError(Exception):
    """Base of every exception Vigil defines."""


class BrokerError(VigilError):
    """Base of the broker package's errors (contracts, MQTT layer, registry, calendar)."""
