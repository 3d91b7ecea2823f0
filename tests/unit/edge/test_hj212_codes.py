"""Appendix B code tables."""

from __future__ import annotations

import re

import pytest

from edge.hj212.codes import DATA_FLAGS, all_factors, factor, legacy_to_current


@pytest.mark.parametrize(("code", "zh", "unit", "amount"), [
    ("a21026", "二氧化硫", "mg/m3", "kg"),
    ("a21002", "氮氧化物", "mg/m3", "kg"),
    ("a34013", "烟尘", "mg/m3", "kg"),
    ("a19001", "氧气含量", "%", None),
    ("a01012", "烟气温度", "°C", None),
    ("a01011", "烟气流速", "m/s", None),
    ("a01013", "烟气压力", "kPa", None),
    ("a00000", "废气", "m3/s", "m3"),
    ("w00000", "污水", "L/s", "m3"),
    ("w01001", "pH值", "1", None),
    ("w01018", "化学需氧量", "mg/L", "kg"),
    ("w21003", "氨氮", "mg/L", "kg"),
    ("a99051", "二硫化碳", "mg/m3", "kg"),
    ("w99001", "有机氮", "mg/L", "kg"),
])
def test_factors_as_in_appendix_b(code: str, zh: str, unit: str, amount: str | None) -> None:
    entry = factor(code)
    assert entry is not None
    assert (entry.name_zh, entry.unit, entry.amount_unit) == (zh, unit, amount)


def test_every_water_and_air_code_of_tables_b1_and_b2() -> None:
    codes = [f.code for f in all_factors()]
    water = [c for c in codes if c.startswith("w")]
    air = [c for c in codes if c.startswith("a")]
    assert len(water) == 63 and len(air) == 121  # the rows printed in B.1 and B.2
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[wa]\d{5}", c) for c in water + air)
    assert all(f.unit for f in all_factors() if f.code != "a34011") and factor("a34011") is not None


def test_legacy_2005_codes() -> None:
    assert legacy_to_current("02") == "a21026"
    assert legacy_to_current("03") == "a21002"
    assert legacy_to_current("01") == "a34013"
    assert legacy_to_current("S01") == "a19001"
    assert legacy_to_current("B02") == "a00000"
    assert legacy_to_current("011") == "w01018"
    assert legacy_to_current("060") == "w21003"
    assert legacy_to_current("zz") is None


def test_process_patterns_and_noise() -> None:
    entry = factor("g12701")
    assert entry is not None and entry.name_zh.startswith("出口二氧化硫") and entry.table == "B.7"
    assert factor("e10102") is not None and factor("e10102").table == "B.5"  # type: ignore[union-attr]
    assert factor("Leq") is not None and factor("Leq").unit == "dB"  # type: ignore[union-attr]
    assert factor("x12345") is None and factor("a21027") is None


def test_data_flags_of_table_8() -> None:
    assert set(DATA_FLAGS) == set("NFMSDCTB")
