"""Which shipped rules have a verified firing scenario and a verified quiet scenario."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rules.config import SHIPPED_PACKS
from rules.loader import DEFAULT_TIMEZONE, PACKS_DIR, load_rule_file

if TYPE_CHECKING:
    from scenario.runner import ScenarioResult

SCENARIOS_DIR: Final = PACKS_DIR.parent / "scenarios"
"""Shipped scenarios: ``rules/scenarios/<pack>/*.yaml``, rule data kept beside the packs they prove."""


def scenario_files(paths: Iterable[str | Path] = ()) -> list[Path]:
    """Scenario files from files and directories (searched recursively); default: the shipped ones."""
    out: list[Path] = []
    for p in list(paths) or [SCENARIOS_DIR]:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(q for q in path.rglob("*.yaml") if q.is_file()))
        else:
            out.append(path)
    return out


def shipped_rules(packs: Iterable[str] = SHIPPED_PACKS) -> dict[str, list[str]]:
    """Rule names of each shipped pack (``foreach`` expanded), pack -> names."""
    out: dict[str, list[str]] = {}
    for pack in packs:
        rules, _ = load_rule_file(PACKS_DIR / f"{pack}.yaml", DEFAULT_TIMEZONE)
        out[pack] = [r.name for r in rules]
    return out


@dataclass
class CoverageReport:
    """Per shipped rule: the scenarios that verifiably make it fire and keep it quiet."""

    rules: dict[str, list[str]]
    fires: dict[str, list[str]] = field(default_factory=dict)
    quiet: dict[str, list[str]] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """``rule: no firing scenario`` / ``rule: no quiet scenario`` lines, pack by pack."""
        out = []
        for pack, names in self.rules.items():
            for name in names:
                lacks = [what for what, found in (("firing", self.fires), ("quiet", self.quiet)) if not found.get(name)]
                if lacks:
                    out.append(f"{pack}/{name}: no verified {' and no '.join(lacks)} scenario")
        return out

    def table(self) -> list[str]:
        """One line per rule: fires / quiet scenario counts."""
        lines = []
        for pack, names in self.rules.items():
            for name in names:
                f, q = len(self.fires.get(name, [])), len(self.quiet.get(name, []))
                mark = "ok " if f and q else "-- "
                lines.append(f"{mark}{pack:9} {name:48} fires {f:2}  quiet {q:2}")
        return lines


def coverage_report(results: Iterable[ScenarioResult], packs: Iterable[str] = SHIPPED_PACKS) -> CoverageReport:
    """Coverage from scenario results (only passed scenarios' verified claims count)."""
    report = CoverageReport(shipped_rules(packs))
    for res in results:
        for rule, how in res.covers.items():
            target = report.fires if how == "fires" else report.quiet
            target.setdefault(rule, []).append(res.path)
    return report
