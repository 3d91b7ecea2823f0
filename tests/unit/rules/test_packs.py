"""The shipped rule packs load cleanly and pass their own rule tests (``rules/packs/*_test.yaml``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.loader import PACKS_DIR, load_rules
from rules.testing import run_test_file

TEST_FILES = sorted(PACKS_DIR.glob("*_test.yaml"))


def test_every_pack_has_a_test_file() -> None:
    packs = {p.stem for p in PACKS_DIR.glob("*.yaml") if not p.stem.endswith("_test")}
    assert {"elevator", "vehicle", "emission", "camera", "safety"} <= packs
    assert {p.stem.removesuffix("_test") for p in TEST_FILES} == packs


def test_packs_load_without_errors() -> None:
    result = load_rules([PACKS_DIR])
    assert result.errors == []
    assert len(result.rules) >= 40


def test_every_pack_rule_is_exercised_by_a_test() -> None:
    result = load_rules([PACKS_DIR])
    text = "\n".join(p.read_text(encoding="utf-8") for p in TEST_FILES)
    untested = [r.name for r in result.rules if f"rule: {r.name}," not in text]
    # A foreach rule (one per pollutant) is tested on one of its expansions: they share one definition.
    missing = [n for n in untested if f"rule: {n.rsplit('_', 1)[0]}_" not in text]
    assert missing == []


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.stem for p in TEST_FILES])
def test_pack_rule_tests_pass(path: Path) -> None:
    outcomes = run_test_file(path)
    assert outcomes, f"{path} holds no tests"
    failures = [f"{o.name}: {'; '.join(o.problems)}" for o in outcomes if not o.passed]
    assert failures == []
