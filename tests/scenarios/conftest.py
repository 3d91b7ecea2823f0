"""Each shipped scenario runs once per test session; the per-scenario and coverage tests share the results."""

from __future__ import annotations

import functools
from pathlib import Path

from scenario.coverage import scenario_files
from scenario.runner import ScenarioResult, run_scenario_file

SHIPPED = scenario_files()


@functools.cache
def result_of(path: Path) -> ScenarioResult:
    """The result of running one scenario file (cached for the session)."""
    return run_scenario_file(path)
