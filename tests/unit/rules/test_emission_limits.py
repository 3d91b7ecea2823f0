"""Emission limits by standard, the period-data time model and the emission condition options."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from rules_helpers import BASE, T0, feed, make_engine, one_rule, tel

from broker.contracts import Channel, DeviceMessage, Kind, Telemetry
from broker.registry import DeviceRegistry
from rules.conditions.windows import aggregate, coverage_s
from rules.emission_limits import STANDARDS_FILE, check_registry, standards
from rules.engine import RuleEngine
from rules.expr import ExpressionError, compile_expression
from rules.state import engine_from_doc, engine_to_doc
from vigil.cli import main as vigil_main


def resolve(**attrs: Any) -> Any:
    return standards().resolve(attrs.get)


@pytest.mark.parametrize(("attrs", "hour", "o2"), [
    ({"standard": "GB13223", "fuel": "coal", "ultra_low": True}, {"a34013": 10, "a21026": 35, "a21002": 50}, 6),
    ({"standard": "GB 13223-2011", "fuel": "coal", "new_source": False},
     {"a34013": 30, "a21026": 200, "a21002": 100}, 6),
    ({"standard": "GB13223", "fuel": "coal", "new_source": True, "high_sulfur_region": True, "nox_relaxed": True},
     {"a34013": 30, "a21026": 200, "a21002": 200}, 6),
    ({"standard": "GB13223", "fuel": "natural_gas", "unit_type": "gas_turbine"},
     {"a34013": 5, "a21026": 35, "a21002": 50}, 15),
    ({"standard": "GB13223", "fuel": "oil", "new_source": True}, {"a34013": 30, "a21026": 100, "a21002": 100}, 3),
    ({"standard": "GB13271", "fuel": "coal", "new_source": True}, {"a34013": 50, "a21026": 300, "a21002": 300}, 9),
    ({"standard": "GB13271", "fuel": "coal", "new_source": False, "high_sulfur_region": True},
     {"a34013": 80, "a21026": 550, "a21002": 400}, 9),
    ({"standard": "GB13271", "fuel": "natural_gas", "new_source": True, "special_limits": True},
     {"a34013": 20, "a21026": 50, "a21002": 150}, 3.5),
    ({"standard": "GB4915"}, {"a34013": 30, "a21026": 200, "a21002": 400}, 10),
])
def test_air_limits_and_reference_o2_by_standard(attrs: dict[str, Any], hour: dict[str, float], o2: float) -> None:
    limits = resolve(**attrs)
    assert limits.hour == hour and limits.reference_o2 == o2 and limits.medium == "air"


def test_waste_incineration_has_hourly_and_daily_limits_and_water_has_daily_limits_and_ranges() -> None:
    waste = resolve(standard="GB18485")
    assert waste.hour["a21024"] == 60 and waste.day["a21024"] == 50 and waste.day["a21005"] == 80
    assert waste.reference_o2 == 11
    water = resolve(standard="GB18918", grade="1A")
    assert water.day == {"w01018": 50, "w21003": 5, "w21001": 15, "w21011": 0.5}
    assert (water.value("min", "w01001"), water.value("max", "w01001")) == (6, 9)
    assert water.reference_o2 is None and water.hour == {}
    assert resolve(standard="GB8978", grade=3).day == {"w01018": 500}


def test_local_limits_override_only_when_stricter() -> None:
    limits = resolve(standard="GB13223", fuel="coal", ultra_low=True, a21026_limit=25, a21002_limit=50)
    assert limits.hour["a21026"] == 25 and limits.local == {"a21026", "a21002"}
    with pytest.raises(ValueError, match="looser than GB13223's 35"):
        resolve(standard="GB13223", fuel="coal", ultra_low=True, a21026_limit=40)
    with pytest.raises(ValueError, match="w01001_min=5 is looser"):
        resolve(standard="GB8978", grade=1, w01001_min=5)
    only_local = resolve(standard="local", a21026_limit=20, reference_o2=8, w01018_daily_limit=40)
    assert only_local.hour == {"a21026": 20} and only_local.day == {"w01018": 40} and only_local.reference_o2 == 8


@pytest.mark.parametrize(("attrs", "problem"), [
    ({}, "no 'standard' attribute"),
    ({"standard": "GB9999"}, "unknown standard 'GB9999'"),
    ({"standard": "GB13271", "fuel": "coal"}, "needs attribute 'new_source'"),
    ({"standard": "GB13223", "fuel": "wood", "new_source": True}, "fuel='wood' is not one of"),
    ({"standard": "GB8978"}, "needs attribute 'grade'"),
    ({"standard": "GB13223", "fuel": "coal", "ultra_low": True, "a21026_limit": "low"}, "is not a number"),
])
def test_unusable_declarations_are_errors(attrs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        resolve(**attrs)


def test_every_standard_names_its_source_and_the_data_file_loads() -> None:
    raw = yaml.safe_load(STANDARDS_FILE.read_text(encoding="utf-8"))
    assert all(spec.get("source") for spec in raw["standards"].values())
    assert set(standards().standards) == {"GB13223", "GB13271", "GB18485", "GB4915", "GB8978", "GB18918", "local"}


def test_site_attributes_apply_to_its_stacks_and_check_registry_lists_every_bad_device() -> None:
    reg = DeviceRegistry.from_data({
        "sites": [{"id": "p", "attributes": {"standard": "GB13223", "fuel": "coal", "ultra_low": True}}],
        "devices": [{"id": "ok", "kind": "emission", "site": "p"},
                    {"id": "bad-1", "kind": "emission"},
                    {"id": "bad-2", "kind": "emission", "attributes": {"standard": "GB13271"}},
                    {"id": "el-1", "kind": "elevator"}]}, "reg.yaml")
    problems = check_registry(reg)
    assert [p.split(":")[1].strip() for p in problems] == ["device 'bad-1'", "device 'bad-2'"]


def test_vigil_config_check_refuses_a_stack_without_standard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) \
        -> None:
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(
        {"devices": [{"id": "stack-1", "kind": "emission"}]}), encoding="utf-8")
    (tmp_path / "vigil.yaml").write_text("registry: registry.yaml\n", encoding="utf-8")
    assert vigil_main(["config", "check", str(tmp_path / "vigil.yaml")]) == 2
    assert "stack-1" in capsys.readouterr().err
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump({"devices": [{
        "id": "stack-1", "kind": "emission", "attributes": {"standard": "GB18485"}}]}), encoding="utf-8")
    assert vigil_main(["config", "check", str(tmp_path / "vigil.yaml")]) == 0


def test_text_metrics_compared_with_numbers_are_refused_and_zs_converts() -> None:
    with pytest.raises(ExpressionError, match=re.escape('hj212.cn == "2061"')):
        compile_expression("hj212.cn == 2061")
    with pytest.raises(ExpressionError):
        compile_expression('hj212.cn in ("2051", 2061)')
    zs = compile_expression("zs(c, o2, ref)", frozenset({"ref"}))
    assert zs({"c": 30.0, "o2": 9.0}, {"ref": 6}, {}) == pytest.approx(37.5)
    assert zs({"c": 30.0, "o2": 20.5}, {"ref": 6}, {}) is None  # flue gas is almost air
    assert zs({"c": 30.0, "o2": 9.0}, {"ref": None}, {}) == 30.0


def period(device: str, start: float, arrive: float, cn: str = "2061", quality: dict[str, str] | None = None,
           **metrics: Any) -> DeviceMessage:
    """A period record with DataTime = T0 + ``start`` received at T0 + ``arrive``."""
    payload = Telemetry(ts=T0 + timedelta(seconds=start), metrics={"hj212.cn": cn, **metrics}, quality=quality)
    return DeviceMessage(Kind.EMISSION, device, Channel.TELEMETRY, payload, BASE + arrive)


HOURLY = one_rule("{window: {value: x.ZsAvg, fn: last, over: 65min, where: 'hj212.cn == \"2061\"', "
                  "valid_flags: [N], above: 35}}").replace("kind: sensor", "kind: emission")


def test_period_records_have_their_own_clock_and_leave_real_time_state_alone() -> None:
    engine = make_engine(HOURLY)
    got = feed(engine, tel("s", 3600, "emission", {"x": "M"}, **{"hj212.cn": "2011", "x.Rtd": 5.0}),
               period("s", 0, 3605, quality={"x": "N"}, **{"x.ZsAvg": 84.0}))
    assert got == [(3600.0, "firing", "r")]  # judged at the hour's end, not dropped as late
    dev = engine.devices["s"]
    assert dev.metrics == {"hj212.cn": "2011", "x.Rtd": 5.0} and dev.quality == {"x": "M"}
    assert dev.last_ts == BASE + 3600 and engine.counters.late == 0
    # A redelivered older hour is late within its own stream and changes nothing.
    assert feed(engine, period("s", 3600, 7200, quality={"x": "N"}, **{"x.ZsAvg": 20.0})) == [
        (7200.0, "resolved", "r")]
    assert feed(engine, period("s", 0, 7300, quality={"x": "N"}, **{"x.ZsAvg": 84.0})) == []
    assert engine.counters.late == 1
    # The clocks survive a snapshot: after a restart the same old hour is still late.
    again = RuleEngine(engine.rules.values())
    engine_from_doc(again, engine_to_doc(engine, 1))
    assert feed(again, period("s", 0, 7400, quality={"x": "N"}, **{"x.ZsAvg": 84.0})) == []
    assert again.counters.late == 1
    # A number instead of text is tolerated as a period command.
    assert feed(again, period("s", 7200, 10800, cn=2061, quality={"x": "N"}, **{"x.ZsAvg": 90.0})) == []  # type: ignore[arg-type]


def test_a_logger_sending_hourly_data_only_is_judged_at_each_hour_end() -> None:
    engine = make_engine(HOURLY)
    assert feed(engine, period("s", 0, 3600, **{"x.ZsAvg": 50.0}), period("s", 3600, 7200, **{"x.ZsAvg": 10.0})) == [
        (3600.0, "firing", "r"), (7200.0, "resolved", "r")]
    assert engine.device_time(engine.devices["s"], BASE + 7300) == BASE + 7200 + 100


def test_hour_validity_counts_minutes_of_10_minute_records() -> None:
    engine = make_engine(one_rule("{quality: {metric: x.Avg, over: 60min, min_valid_count: 45, count: minutes, "
                                  "as: valid}}"))
    msgs = [tel("s", i * 600, quality={"x": "N" if i < 5 else "M"}, **{"x.Avg": 1.0}) for i in range(8)]
    # at 60 min the window (0, 60 min] holds 4 valid records x 10 min = 40 valid minutes < 45
    assert feed(engine, *msgs) == [(3600.0, "firing", "r")]
    assert engine.devices["s"].rules["r"].values["valid"] == 40


def test_flatline_variance_model_ignores_zeros_and_flagged_samples() -> None:
    rule = one_rule("{flatline: {value: x.Rtd, over: 30min, min_samples: 10, valid_flags: [N], min_stddev: 0.01, "
                    "min_cv: 0.001, ignore_below: 0.5}}")
    flat = [tel("a", i * 60, quality={"x": "N"}, **{"x.Rtd": 12.3}) for i in range(31)]
    assert feed(make_engine(rule), *flat) == [(1620.0, "firing", "r")]
    jitter = [tel("a", i * 60, quality={"x": "N"}, **{"x.Rtd": 12.3 + (0.05 if i % 2 else 0)}) for i in range(31)]
    assert feed(make_engine(rule), *jitter) == []
    zeros = [tel("a", i * 60, quality={"x": "N"}, **{"x.Rtd": 0.0}) for i in range(31)]
    assert feed(make_engine(rule), *zeros) == []
    calibrating = [tel("a", i * 60, quality={"x": "C"}, **{"x.Rtd": 12.3}) for i in range(31)]
    assert feed(make_engine(rule), *calibrating) == []


def test_missing_daily_records_follow_the_loggers_midnight_and_a_resent_day_fills_the_hole() -> None:
    engine = make_engine(one_rule('{missing_period: {command: "2031", grace: 1h, as: gone}}')
                         .replace("kind: sensor", "kind: emission"))
    day, local_midnight = 86400.0, -14 * 3600.0  # T0 is 14:00 local: the local day began 14 h earlier
    rt = [tel("s", at, "emission", **{"hj212.cn": "2011", "x.Rtd": 1.0}) for at in range(0, 70 * 3600, 3600)]
    daily = [period("s", local_midnight, local_midnight + day + 60, cn="2031", **{"x.Avg": 1.0}),
             # the next local day is missing; the one after arrives on time; the missing one is re-sent late
             period("s", local_midnight + 2 * day, local_midnight + 3 * day + 60, cn="2031", **{"x.Avg": 1.0}),
             period("s", local_midnight + day, local_midnight + 3 * day + 7200, cn="2031", **{"x.Avg": 1.0})]
    got = feed(engine, *sorted([*rt, *daily], key=lambda m: m.received_at))
    # the missing local day ends at T0 + 34 h, due 1 h later; the first real-time record after the re-send
    # (T0 + 60 h) clears it
    assert got == [(35 * 3600.0, "firing", "r"), (61 * 3600.0, "resolved", "r")]


def test_relative_change_and_coverage_of_minute_records() -> None:
    assert aggregate("change", [0.0, 60.0], [160.0, 200.0]) == pytest.approx(0.25)
    assert aggregate("change", [0.0, 60.0], [0.0, 5.0]) is None
    assert coverage_s([i * 60.0 for i in range(45)]) == 45 * 60.0
    assert coverage_s([i * 600.0 for i in range(5)]) == 50 * 60.0  # five 10-minute records
    assert coverage_s([0.0, 60.0, 120.0, 600.0, 660.0]) == 5 * 60.0  # a hole does not count
