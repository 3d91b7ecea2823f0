"""Tag map validation, block planning, decoding (scaling, word and byte order, bits, enums) and limits."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.modbus.gateway import limit_level
from edge.modbus.tagmap import Limits, TagMap, TagMapError, decode_tag, encode_value, plan_blocks


def tagmap(tags: list[dict[str, Any]], **device: Any) -> TagMap:
    return TagMap.from_data({"gateway": "gw-1", "devices": [{"name": "plc-1", "host": "127.0.0.1", **device,
                                                               "tags": tags}]})


def test_float32_word_orders_and_scaling() -> None:
    tm = tagmap([
        {"asset": "tk-1", "name": "level_big", "address": 0, "type": "float32"},
        {"asset": "tk-1", "name": "level_little", "address": 2, "type": "float32", "word_order": "little"},
        {"asset": "tk-1", "name": "swapped", "address": 4, "type": "float32", "byte_order": "little"},
        {"asset": "tk-1", "name": "lel", "address": 6, "type": "uint16", "scale": 0.1, "offset": -2},
        {"asset": "tk-1", "name": "temp", "address": 7, "type": "int16", "scale": 0.1},
        {"asset": "tk-1", "name": "count", "address": 8, "type": "uint32", "word_order": "little"},
        {"asset": "tk-1", "name": "big", "address": 10, "type": "int64"},
    ])
    regs = (encode_value("float32", 76.25) + encode_value("float32", 76.25, "little")
            + encode_value("float32", -3.5, byte_order="little") + [255] + encode_value("int16", -123)
            + encode_value("uint32", 70000, "little") + encode_value("int64", -5_000_000_000))
    assert regs[:2] == [0x4298, 0x8000]          # 76.25 = 0x42988000, high word first
    assert regs[2:4] == [0x8000, 0x4298]         # CDAB
    values = {t.name: decode_tag(t, regs, 0) for t in tm.tags["plc-1"]}
    assert values == {"level_big": (76.25, "good"), "level_little": (76.25, "good"), "swapped": (-3.5, "good"),
                      "lel": (23.5, "good"), "temp": (-12.3, "good"), "count": (70000, "good"),
                      "big": (-5_000_000_000, "good")}


def test_bits_enums_and_ranges() -> None:
    tm = tagmap([
        {"asset": "gd-1", "name": "state", "address": 0, "enum": {0: "normal", 1: "fault"}},
        {"asset": "gd-1", "name": "alarm", "address": 1, "bit": 3},
        {"asset": "gd-1", "name": "lel", "address": 2, "scale": 0.1, "valid_range": [0, 100]},
        {"asset": "gd-1", "name": "door", "register": "discrete", "address": 5},
    ])
    t = {x.name: x for x in tm.tags["plc-1"]}
    assert decode_tag(t["state"], [1, 0, 0], 0) == ("fault", "good")
    assert decode_tag(t["state"], [7, 0, 0], 0) == ("code_7", "uncertain")
    assert decode_tag(t["alarm"], [0, 0b1000, 0], 0) == (True, "good")
    assert decode_tag(t["alarm"], [0, 0b0111, 0], 0) == (False, "good")
    assert decode_tag(t["lel"], [0, 0, 1200], 0) == (120.0, "uncertain")
    assert decode_tag(t["door"], [False, True], 4) == (True, "good")
    # A block that came back short never yields a value.
    assert decode_tag(t["lel"], [0, 0], 0) == (None, "bad")


def test_nan_and_out_of_range_words_are_bad() -> None:
    tm = tagmap([{"asset": "a", "name": "f", "address": 0, "type": "float32"}])
    tag = tm.tags["plc-1"][0]
    assert decode_tag(tag, encode_value("float32", math.nan), 0) == (None, "bad")
    assert decode_tag(tag, [70000, 1], 0) == (None, "bad")


def test_block_planning_merges_small_gaps_and_respects_limits() -> None:
    tags = [{"asset": "a", "name": f"r{i}", "address": addr} for i, addr in enumerate([0, 1, 2, 10, 40, 41])]
    tags += [{"asset": "a", "name": "f", "address": 43, "type": "float32"}]
    tags += [{"asset": "a", "name": f"c{i}", "register": "coil", "address": i * 3} for i in range(5)]
    tags += [{"asset": "a", "name": "ir", "register": "input", "address": 0}]
    tm = tagmap(tags, max_gap=8, max_block=30)
    blocks = plan_blocks(tm.tags["plc-1"], 30, 8)
    spans = [(b.register, b.start, b.count, len(b.tags)) for b in blocks]
    assert spans == [("holding", 0, 11, 4), ("holding", 40, 5, 3), ("input", 0, 1, 1), ("coil", 0, 13, 5)]
    # max_block splits even contiguous registers.
    tm2 = tagmap([{"asset": "a", "name": f"r{i}", "address": i} for i in range(250)])
    assert [b.count for b in plan_blocks(tm2.tags["plc-1"], 120, 8)] == [120, 120, 10]


@pytest.mark.parametrize(("tag", "problem"), [
    ({"asset": "a/b", "name": "x"}, "asset"),
    ({"asset": "a", "name": "1x"}, "name"),
    ({"asset": "a", "name": "tags_bad"}, "reserved"),
    ({"asset": "a", "name": "x", "register": "coil", "type": "uint16"}, "type must be bool"),
    ({"asset": "a", "name": "x", "type": "bool"}, "needs `bit`"),
    ({"asset": "a", "name": "x", "type": "float32", "enum": {1: "a"}}, "enum"),
    ({"asset": "a", "name": "x", "address": 65535, "type": "float32"}, "runs past"),
    ({"asset": "a", "name": "x", "scale": 0}, "scale"),
    ({"asset": "a", "name": "x", "type": "int8"}, "type"),
])
def test_invalid_tags_are_refused_with_their_key(tag: dict[str, Any], problem: str) -> None:
    with pytest.raises(TagMapError) as err:
        tagmap([tag])
    assert "devices[0]" in str(err.value) or "$.devices[0]" in str(err.value)
    assert problem in str(err.value)


def test_duplicate_metric_and_bad_device_settings_are_refused() -> None:
    with pytest.raises(TagMapError, match="already read"):
        tagmap([{"asset": "a", "name": "x", "address": 0}, {"asset": "a", "name": "x", "address": 1}])
    with pytest.raises(TagMapError, match="max_block"):
        tagmap([], max_block=200)
    with pytest.raises(TagMapError, match="port"):
        tagmap([], port=0)


def test_limit_levels_with_deadband() -> None:
    lim = Limits(hihi=90, hi=80, lo=10, lolo=5, deadband=2)
    assert limit_level(lim, 50, None) is None
    assert limit_level(lim, 80, None) == "hi"
    assert limit_level(lim, 79, "hi") == "hi"        # inside the deadband
    assert limit_level(lim, 77.9, "hi") is None
    assert limit_level(lim, 95, "hi") == "hihi"
    assert limit_level(lim, 89, "hihi") == "hihi"
    assert limit_level(lim, 87, "hihi") == "hi"
    assert limit_level(lim, 4, None) == "lolo"
    assert limit_level(lim, 11, "lo") == "lo"


@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "int64", "float64"]),
       st.sampled_from(["big", "little"]), st.sampled_from(["big", "little"]), st.integers(-(2**15), 2**15 - 1))
def test_encode_decode_round_trip(dtype: str, word: str, byte: str, n: int) -> None:
    if dtype.startswith("uint"):
        n = abs(n)
    tm = tagmap([{"asset": "a", "name": "x", "address": 3, "type": dtype, "word_order": word, "byte_order": byte}])
    tag = tm.tags["plc-1"][0]
    regs = [0, 0, 0, *encode_value(dtype, n, word, byte)]  # type: ignore[arg-type]
    value, quality = decode_tag(tag, regs, 0)
    assert quality == "good" and value == n
