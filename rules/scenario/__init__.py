"""Scenario acceptance runs: device-level input through the real edge code and platform path to alerts.

See docs/rules.md ("Scenarios") for the file format; ``vigil rules scenario`` runs them.
"""

from rules.scenario.coverage import SCENARIOS_DIR, CoverageReport, coverage_report, scenario_files
from rules.scenario.runner import AlertOccurrence, ScenarioResult, format_result, run_scenario, run_scenario_file
from rules.scenario.spec import Scenario, ScenarioError, load_scenario

__all__ = ["SCENARIOS_DIR", "AlertOccurrence", "CoverageReport", "Scenario", "ScenarioError", "ScenarioResult",
           "coverage_report", "format_result", "load_scenario", "run_scenario", "run_scenario_file", "scenario_files"]
