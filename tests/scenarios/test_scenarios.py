"""Every shipped scenario (rules/scenarios/<pack>/*.yaml) passes: device input -> gateways -> rules -> alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenario.coverage import SCENARIOS_DIR
from scenario.runner import format_result
from tests.scenarios.conftest import SHIPPED, result_of


def test_shipped_scenarios_exist() -> None:
    assert SHIPPED, f"no scenario files under {SCENARIOS_DIR}"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(SCENARIOS_DIR)) for p in SHIPPED])
def test_scenario(path: Path) -> None:
    result = result_of(path)
    assert result.passed, "\n".join(format_result(result, verbose=True))
    # A scenario proves something: it claims coverage, and its claims held in this run.
    assert result.claims, f"{path}: declare covers.fires / covers.quiet"
    assert result.covers == result.claims
