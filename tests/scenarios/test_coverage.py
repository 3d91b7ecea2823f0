"""Every rule of every shipped pack has a scenario that makes it fire and one that keeps it quiet.

Claims are verified by running the scenarios: a ``fires`` claim counts only if the rule raised an
alert in a passing run, a ``quiet`` claim only if it raised none although it applied to a device that
sent data in the run.
"""

from __future__ import annotations

import pytest

from rules.config import SHIPPED_PACKS
from scenario.coverage import coverage_report
from tests.scenarios.conftest import SHIPPED, result_of


@pytest.mark.timeout(900)
def test_every_shipped_rule_has_verified_firing_and_quiet_scenarios() -> None:
    report = coverage_report([result_of(p) for p in SHIPPED], SHIPPED_PACKS)
    assert sum(len(v) for v in report.rules.values()) > 40, report.rules
    missing = report.missing()
    assert not missing, f"{len(missing)} rules lack scenarios:\n" + "\n".join(missing)
