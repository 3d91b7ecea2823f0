"""Rule files: validation with ``file:line: rule 'name': problem`` errors, every error reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.loader import load_rule_text, load_rules

GOOD = """\
rules:
  - name: hot
    kind: sensor
    severity: warning
    condition: "temp > limit"
    params: {limit: {attr: temp_limit, default: 60}}
    summary: "温度 {temp}"
"""


def errors_of(text: str) -> list[str]:
    return load_rule_text(text, "f.yaml")[1]


def test_good_rule_loads() -> None:
    rules, errors = load_rule_text(GOOD, "f.yaml")
    assert errors == []
    (rule,) = rules
    assert rule.name == "hot" and rule.kinds == {"sensor"} and rule.severity == "warning"
    assert rule.params["limit"].attr == "temp_limit" and rule.params["limit"].default == 60
    assert rule.summary_en.text == "温度 {temp}"  # falls back to the Chinese summary


@pytest.mark.parametrize(("change", "expected"), [
    (("severity: warning", "severity: loud"), "f.yaml:4: rule 'hot': severity must be one of"),
    (("kind: sensor", "kind: toaster"), "f.yaml:3: rule 'hot': unknown device kind 'toaster'"),
    (('condition: "temp > limit"', 'condition: "temp >"'), "f.yaml:5: rule 'hot': expr: syntax error"),
    (('condition: "temp > limit"', "condition: {warp: 1}"), "f.yaml:5: rule 'hot': unknown condition type 'warp'"),
    (('condition: "temp > limit"', "condition: {threshold: {value: temp}}"),
     "f.yaml:5: rule 'hot': threshold: give exactly one of 'above' or 'below'"),
    (("    summary:", "    colour: red\n    summary:"), "f.yaml:7: rule 'hot': unknown key 'colour'"),
    (('    summary: "温度 {temp}"\n', '    summary: "温度 {temp"\n'), "f.yaml:7: rule 'hot': summary: unbalanced"),
    (("    params:", "    for: soon\n    params:"), "f.yaml:6: rule 'hot': for: bad duration 'soon'"),
    (('condition: "temp > limit"', 'condition: "__import__(1)"'), "f.yaml:5: rule 'hot': expr:"),
    (('condition: "temp > limit"', "condition: {absence: {after: 5min, metric: x, extra: 1}}"),
     "f.yaml:5: rule 'hot': absence: unknown key 'extra'"),
    (("    severity: warning\n", ""), "f.yaml:2: rule 'hot': missing required key 'severity'"),
])
def test_errors_name_file_line_rule_and_problem(change: tuple[str, str], expected: str) -> None:
    errors = errors_of(GOOD.replace(*change))
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_all_errors_are_reported_and_the_file_is_rejected_whole(tmp_path: Path) -> None:
    text = GOOD + GOOD.replace("rules:\n", "").replace("name: hot", "name: hot") + """\
  - name: cold
    kind: sensor
    severity: info
    condition: {schedule: "25:00-26:00"}
    summary: x
  - name: fine
    kind: sensor
    severity: info
    condition: "temp < 0"
    summary: x
"""
    path = tmp_path / "f.yaml"
    path.write_text(text, encoding="utf-8")
    result = load_rules([path])
    assert result.rules == []
    assert len(result.errors) == 2, result.errors
    assert "rule 'hot': duplicate rule name" in result.errors[0]
    assert ":17: rule 'cold': schedule.between: bad time" in result.errors[1]


def test_yaml_syntax_error_has_a_line() -> None:
    assert errors_of("rules:\n  - name: [unclosed\n")[0].startswith("f.yaml:3: YAML error")


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "b_test.yaml").write_text("not rules", encoding="utf-8")  # rule tests are not rule files
    result = load_rules([tmp_path])
    assert [r.name for r in result.rules] == ["hot"]
    assert len(result.errors) == 1 and "b.yaml:2: rule 'hot': duplicate rule name (also in" in result.errors[0]


def test_foreach_expands_with_typed_values() -> None:
    text = """\
rules:
  - name: over_${code}
    foreach: {code: [a21026, a21002], limit: [35, 50]}
    kind: emission
    severity: major
    params: {limit: {attr: "${code}_limit", default: "${limit}"}}
    condition: {threshold: {value: "${code}.ZsAvg", above: limit}}
    summary: "${code} {${code}.ZsAvg}"
"""
    rules, errors = load_rule_text(text, "f.yaml")
    assert errors == []
    assert [r.name for r in rules] == ["over_a21026", "over_a21002"]
    assert rules[1].params["limit"].default == 50 and rules[1].params["limit"].attr == "a21002_limit"
    assert rules[1].metrics == {"a21002.ZsAvg"}
    assert rules[1].summary.fields == ["a21002.ZsAvg"]


def test_foreach_needs_a_variable_in_the_name() -> None:
    text = GOOD.replace("    kind: sensor", "    foreach: {x: [1, 2]}\n    kind: sensor")
    assert "foreach: the rule name must contain" in errors_of(text)[0]


def test_disabled_rules_are_skipped() -> None:
    rules, errors = load_rule_text(GOOD.replace("    kind: sensor", "    enabled: false\n    kind: sensor"))
    assert rules == [] and errors == []


def test_a_condition_that_reads_nothing_is_refused() -> None:
    assert "would never be evaluated" in errors_of(GOOD.replace('"temp > limit"', '"1 > 0"'))[0]


def test_template_fields_are_plain_lookups() -> None:
    from rules.model import Template

    t = Template("{temp.__class__} {temp:.1f} {temp:>6.2f}|{missing}", 1, "summary")
    assert t.render({"temp": 21.25}) == "? 21.2  21.25|?"


def test_required_attributes_refuse_a_registry_that_lacks_them() -> None:
    """An elevator without its rated speed is not judged against a guess: the engine refuses to start."""
    from broker.registry import DeviceRegistry, RegistryError
    from rules.engine import RuleEngine
    from rules.loader import load_rule_text

    text = """\
rules:
  - name: overspeed
    kind: elevator
    severity: critical
    params: {rated: {attr: rated_speed_mps, required: true}}
    condition: "speed_mps > rated * 1.15"
    summary: "s"
"""
    rules, errors = load_rule_text(text, "t.yaml")
    assert errors == []
    good = DeviceRegistry.from_data({"devices": [{"id": "el-1", "kind": "elevator",
                                                  "attributes": {"rated_speed_mps": 1.75}}]}, "reg.yaml")
    RuleEngine(rules, good)
    bad = DeviceRegistry.from_data({"devices": [{"id": "el-1", "kind": "elevator", "attributes": {"rated_speed_mps": 1.75}},
                                                {"id": "el-2", "kind": "elevator"},
                                                {"id": "cam-1", "kind": "camera"}]}, "reg.yaml")
    with pytest.raises(RegistryError) as err:
        RuleEngine(rules, bad)
    assert "el-2" in str(err.value) and "rated_speed_mps" in str(err.value) and "el-1" not in str(err.value)
    assert "cam-1" not in str(err.value)
    _, errors = load_rule_text(text.replace("required: true", "required: true, default: 1.75"), "t.yaml")
    assert errors and "required" in errors[0]
