"""The scenario runner itself: it catches wrong, missing and extra alerts and unproven coverage claims."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scenario.cli import scenario as scenario_cli
from scenario.runner import ScenarioResult, run_scenario_file

REGISTRY = {"sites": [{"id": "tower-1"}],
            "devices": [{"id": "el-1", "kind": "elevator", "site": "tower-1", "attributes": {"rated_speed_mps": 2.0}}]}
IDLE = {"position_m": 0.0, "door": "closed", "door_zone": True, "occupancy": 0, "power": "mains",
        "mode": "normal", "safety_circuit_ok": True, "direction": "stopped"}


def _run(tmp_path: Path, **doc: Any) -> ScenarioResult:
    base: dict[str, Any] = {"scenario": "runner check", "registry": REGISTRY, "until": "3min",
                            "rules": {"packs": ["elevator"]}}
    base.update(doc)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
    return run_scenario_file(path)


def _overspeed_input() -> list[dict[str, Any]]:
    # Speed 2.5 m/s (rated 2.0) from 30 s to 40 s, else 1.0; telemetry every second.
    return [{"at": "0s", "every": "1s", "until": "30s", "metrics": {**IDLE, "speed_mps": 1.0}},
            {"at": "30s", "every": "1s", "until": "40s", "metrics": {**IDLE, "speed_mps": 2.5}},
            {"at": "40s", "every": "1s", "until": "3min", "metrics": {**IDLE, "speed_mps": 0.0}}]


def test_a_matching_expectation_passes_and_verifies_the_claim(tmp_path: Path) -> None:
    r = _run(tmp_path, covers={"fires": ["elevator_overspeed"], "quiet": ["elevator_power_lost"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
             expect={"alerts": [{"rule": "elevator_overspeed", "at": "32s", "severity": "critical",
                                 "resolved_at": "40s"}]})
    assert r.passed, r.problems
    assert r.covers == {"elevator_overspeed": "fires", "elevator_power_lost": "quiet"}
    assert [(a.rule, a.at, a.resolved_at) for a in r.alerts] == [("elevator_overspeed", 32.0, 40.0)]


def test_wrong_time_missing_and_unexpected_alerts_fail(tmp_path: Path) -> None:
    r = _run(tmp_path, covers={"fires": ["elevator_overspeed"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
             expect={"alerts": [{"rule": "elevator_overspeed", "at": "50s", "resolved_at": "40s"},
                                {"rule": "elevator_power_lost", "at": "1min"}]})
    assert not r.passed
    text = "\n".join(r.problems)
    assert "expected elevator_overspeed @el-1 at 50s±5s -> got at 32s" in text
    assert "expected elevator_power_lost @el-1 at 1min±5s -> got no such alert" in text
    assert "unexpected alert: elevator_overspeed @el-1 at 32s" in text
    assert not r.covers  # nothing counts from a failed run


def test_claims_are_checked_against_the_run(tmp_path: Path) -> None:
    r = _run(tmp_path, covers={"fires": ["elevator_power_lost"], "quiet": ["elevator_overspeed", "camera_crowd"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
             expect={"mode": "listed"})
    text = "\n".join(r.problems)
    assert "covers.fires: elevator_power_lost raised no alert" in text
    assert "covers.quiet: elevator_overspeed raised an alert" in text
    assert "covers.quiet: no rule 'camera_crowd' is loaded" in text


def test_quiet_claim_needs_the_rule_to_see_data(tmp_path: Path) -> None:
    # A vehicle rule is loaded but no vehicle sends anything: "quiet" would prove nothing.
    r = _run(tmp_path, covers={"quiet": ["vehicle_long_stop"]}, rules={"packs": ["elevator", "vehicle"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator",
                       "input": [{"at": 0, "every": "10s", "until": "1min", "metrics": {"door": "closed"}}]}])
    assert any("applies to no device" in p for p in r.problems), r.problems


def test_refused_messages_must_be_declared(tmp_path: Path) -> None:
    devices = [{"id": "el-1", "adapter": "json", "kind": "elevator",
                "input": [{"at": "1s", "channel": "telemetry", "raw": '{"v":1,"ts":"yesterday","metrics":{}}'},
                          {"at": "2s", "metrics": {"door": "closed", "speed_mps": 0.0}}]}]
    r = _run(tmp_path, covers={"quiet": ["elevator_overspeed"]}, devices=devices)
    assert any("refused {'schema': 1}" in p for p in r.problems), r.problems
    r = _run(tmp_path, covers={"quiet": ["elevator_overspeed"]}, devices=devices,
             expect={"rejected": {"schema": 1}})
    assert r.passed, r.problems


def test_outage_buffers_then_delivers_in_order(tmp_path: Path) -> None:
    # Overspeed at 30-40 s happens during a link outage (20-60 s): the outbox delivers it at 60 s.
    r = _run(tmp_path, covers={"fires": ["elevator_overspeed"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input(),
                       "outages": [{"from": "20s", "until": "60s", "status": False}]}],
             expect={"alerts": [{"rule": "elevator_overspeed", "at": "60s", "resolved_at": "60s"}]})
    assert r.passed, r.problems


def test_cli_exit_codes_and_output(tmp_path: Path, capsys: Any) -> None:
    good = _run(tmp_path, covers={"fires": ["elevator_overspeed"]},
                devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
                expect={"alerts": [{"rule": "elevator_overspeed", "at": "32s", "resolved_at": "40s"}]})
    assert good.passed
    assert scenario_cli([str(tmp_path / "s.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text((tmp_path / "s.yaml").read_text().replace("at: 32s", "at: 90s"), encoding="utf-8")
    assert scenario_cli([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "expected alerts:" in out and "actual alerts:" in out
    assert "elevator_overspeed @el-1 at 32s (critical), resolved at 40s" in out


def test_an_invalid_file_is_a_failure_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("scenario: x\nregistry: {}\ndevices: [{id: a, adapter: modem}]\n", encoding="utf-8")
    r = run_scenario_file(path)
    assert not r.passed and "devices[0].adapter" in r.problems[0]


def test_vigil_rules_scenario_command_exit_codes(tmp_path: Path) -> None:
    import subprocess
    import sys

    good = _run(tmp_path, covers={"fires": ["elevator_overspeed"]},
                devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
                expect={"alerts": [{"rule": "elevator_overspeed", "at": "32s", "resolved_at": "40s"}]})
    assert good.passed, good.problems
    bad = tmp_path / "bad.yaml"
    bad.write_text((tmp_path / "s.yaml").read_text().replace("at: 32s", "at: 90s"), encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "vigil.cli", "rules", "scenario", str(tmp_path / "s.yaml")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 passed, 0 failed" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "vigil.cli", "rules", "scenario", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "expected elevator_overspeed @el-1 at 1min30s±5s -> got at 32s" in failed.stdout


def test_recorded_messages_replay_to_the_same_alerts(tmp_path: Path) -> None:
    import io

    from rules.cli import replay
    from rules.loader import PACKS_DIR

    r = _run(tmp_path, covers={"fires": ["elevator_overspeed"]},
             devices=[{"id": "el-1", "adapter": "json", "kind": "elevator", "input": _overspeed_input()}],
             expect={"alerts": [{"rule": "elevator_overspeed", "at": "32s", "resolved_at": "40s"}]})
    assert r.passed
    record = tmp_path / "rec.jsonl"
    assert scenario_cli([str(tmp_path / "s.yaml")], record=str(record)) == 0
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(REGISTRY), encoding="utf-8")
    out = io.StringIO()
    assert replay([str(PACKS_DIR / "elevator.yaml")], mqtt_file=str(record), registry=str(tmp_path / "registry.yaml"),
                  out=out) == 0
    lines = out.getvalue().splitlines()
    assert [ln.split()[1:3] for ln in lines[:-1]] == [["FIRING", "critical"], ["RESOLVED", "critical"]], lines
    assert "1 alerts fired, 1 resolved" in lines[-1]


def test_value_generators_are_deterministic_and_validated() -> None:
    import random

    import pytest

    from scenario.spec import ScenarioError, ValueGen, fmt_offset

    noisy = ValueGen({"mean": 22, "noise": 1.5, "decimals": 2, "max": 23}, "v")
    a = [noisy.at(i, 0.0, random.Random("s")) for i in range(3)]
    b = [noisy.at(i, 0.0, random.Random("s")) for i in range(3)]
    assert a == b and all(x <= 23 for x in a) and a[0] != 22
    assert [ValueGen({"from": 20, "to": 40}, "v").at(0, f, random.Random(1)) for f in (0, 0.5, 1)] == [20, 30, 40]
    assert [ValueGen({"cycle": ["N", "M"]}, "v").at(i, 0, random.Random(1)) for i in range(3)] == ["N", "M", "N"]
    with pytest.raises(ScenarioError, match=r"v: unknown value generator keys \['sigma'\]"):
        ValueGen({"mean": 1, "sigma": 2}, "v")
    assert fmt_offset(3723.5) == "1h2min3.5s" and fmt_offset(0) == "0s"
