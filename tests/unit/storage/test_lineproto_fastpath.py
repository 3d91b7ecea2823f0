"""The telemetry encoder's fast paths write exactly what the straightforward encoder wrote.

``reference_telemetry`` is the encoder as it was before its per-name specs, per-device tag prefixes
and cached words (kept here, verbatim in behaviour, as the specification): every line and every
skip counter must match it byte for byte, over many varied messages fed through one encoder (so
the caches are warm, evicted and rebuilt while the comparison runs).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.contracts import Kind, Telemetry
from storage import lineproto
from storage.lineproto import (
    _STRING_ESC,
    INT_METRICS,
    MAX_STRING_CHARS,
    FieldWriter,
    LineEncoder,
    SkipReason,
    epoch_ms,
    parse_line,
    tag_section,
)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_EXACT = 2**53
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference_epoch_ms(ts: datetime) -> int:
    d = ts - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def reference_telemetry(skipped: Counter[str], kind: Kind | str, device_id: str, site: str | None,
                        msg: Telemetry, ints: frozenset[str] = INT_METRICS) -> str | None:
    """The encoder before the fast paths: one generic branch per value, nothing cached."""
    prefix = tag_section(f"telemetry_{kind}", {"device": device_id, "kind": str(kind), "site": site})
    fw = FieldWriter(skipped)
    parts: list[str] = []
    for name, value in msg.metrics.items():
        key = lineproto.escape_key(name)
        t = type(value)
        if t is float and name not in ints and math.isfinite(value):  # type: ignore[arg-type]
            parts.append(f"{key}={value!r}")
        elif t is int and name in ints and _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            parts.append(f"{key}={value}i")
        elif t is int and name not in ints and -_EXACT <= value <= _EXACT:  # type: ignore[operator]
            parts.append(f"{key}={float(value)!r}")
        elif t is str and len(value) <= MAX_STRING_CHARS:  # type: ignore[arg-type]
            parts.append(f'{key}="{value.translate(_STRING_ESC)}"')  # type: ignore[union-attr]
        elif t is bool:
            parts.append(f"{key}=true" if value else f"{key}=false")
        else:
            text = fw.value(name, value, ints)
            if text is not None:
                parts.append(f"{key}={text}")
    if msg.quality:
        for code, flag in msg.quality.items():
            parts.append(f"{lineproto.escape_key(code + '.Flag')}={fw.string(flag)}")
    seq = msg.seq
    if seq is not None and "seq" not in msg.metrics:
        if 0 <= seq <= _INT64_MAX:
            parts.append(f"seq={seq}i")
        else:
            text = fw.number("seq", seq, True)
            if text is not None:
                parts.append(f"seq={text}")
    if not parts:
        skipped[SkipReason.NO_FIELDS] += 1
        return None
    return f"{prefix} {','.join(parts)} {reference_epoch_ms(msg.ts)}000000"


class Mode(StrEnum):
    NORMAL = "normal"


class Level(IntEnum):
    TWO = 2


NAMES = ["speed_mps", "position_m", "floor", "occupancy", "alarm_flags", "status_flags", "cn", "load_kg", "door",
         "mode", "ok", "seq", "odd key,=", "back\\slash", "tab\tname", "电梯", "a" * 64, "x.y-z", "quote\"d"]
FLOATS = [0.0, -0.0, 1.0, -1.5, 0.1, 1e16, 1e15, 123456789.125, 1e300, -1e-300, 5e-324, 2.0**53, 2.0**63, 1e20,
          3.5, 7.0, math.inf, -math.inf, math.nan, 9007199254740993.0]
INTS = [0, 1, -1, 42, 2**53, 2**53 + 1, -(2**53), -(2**53) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]
STRINGS = ["", "closed", "a" * 32, "b" * 33, 'say "hi"', "back\\slash", "line\nbreak", "cr\rhere", "tab\tok",
           "电梯门开着", "x" * MAX_STRING_CHARS, "y" * (MAX_STRING_CHARS + 1), "comma, and = sign", "\x00\x1f"]
ODD = [True, False, Mode.NORMAL, Level.TWO]
SITES = [None, "", "tower-a", "site with space", "s,1=2", "back\\slash", "\n"]
DEVICES = ["el-0001", "el-0002", "dev with space", "d,=x", "设备-1", "back\\slash"]
KINDS: list[Kind | str] = [Kind.ELEVATOR, Kind.SENSOR, "elevator", "odd kind"]
STAMPS = [datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC), datetime(2026, 12, 3, 10, 0, 0, 999, tzinfo=UTC),
          datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
          datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
          datetime(2026, 12, 3, 18, 0, 0, 500, tzinfo=timezone(timedelta(hours=8))),
          datetime(2026, 12, 3, 10, 0, 0, 1500, tzinfo=timezone(timedelta(hours=-3, microseconds=7)))]


def random_value(rng: random.Random) -> object:
    pool = rng.choice([FLOATS, INTS, STRINGS, ODD, FLOATS, STRINGS])
    value = rng.choice(pool)
    if pool is FLOATS and rng.random() < 0.3:
        value = rng.uniform(-1e6, 1e6)
    elif pool is INTS and rng.random() < 0.3:
        value = rng.randint(-(2**64), 2**64)
    return value


def random_message(rng: random.Random) -> tuple[Kind | str, str, str | None, Telemetry]:
    metrics = {name: random_value(rng) for name in rng.sample(NAMES, rng.randint(0, 8))}
    quality = rng.choice([None, {}, {"a01": "N"}, {"odd code": 'q"1', "b": "x" * (MAX_STRING_CHARS + 5)}])
    seq = rng.choice([None, 0, 7, -1, 2**63 - 1, 2**63, -(2**64)])
    msg = Telemetry(ts=rng.choice(STAMPS), metrics=metrics, seq=seq, quality=quality)  # type: ignore[arg-type]
    return rng.choice(KINDS), rng.choice(DEVICES), rng.choice(SITES), msg


@pytest.mark.parametrize("cache_size", [100_000, 3])
def test_fast_paths_match_the_reference_on_varied_messages(cache_size: int) -> None:
    rng = random.Random(15)
    enc = LineEncoder(cache_size=cache_size)
    expected: Counter[str] = Counter()
    for _ in range(20_000):
        kind, device, site, msg = random_message(rng)
        assert enc.telemetry(kind, device, site, msg) == reference_telemetry(expected, kind, device, site, msg)
    assert enc.skipped == expected
    # Every kind of skip was exercised, so the comparison covered the rejection paths too.
    assert {SkipReason.NON_FINITE, SkipReason.NOT_INTEGRAL, SkipReason.INT_RANGE, SkipReason.TRUNCATED,
            SkipReason.NO_FIELDS} <= set(expected)


def test_word_cache_overflow_keeps_lines_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineproto, "_MAX_WORDS", 5)
    enc = LineEncoder()
    expected: Counter[str] = Counter()
    for n in range(200):
        msg = Telemetry(ts=STAMPS[0], metrics={"door": f"state-{n % 17}", "mode": "normal", "ok": n % 2 == 0})
        assert enc.telemetry(Kind.ELEVATOR, "e1", "s", msg) == reference_telemetry(expected, Kind.ELEVATOR, "e1", "s",
                                                                                  msg)
    assert enc._words <= 5


def test_same_device_with_another_site_or_kind_gets_its_own_tags() -> None:
    enc = LineEncoder()
    msg = Telemetry(ts=STAMPS[0], metrics={"speed_mps": 1.0})
    a = enc.telemetry(Kind.ELEVATOR, "e1", "tower-a", msg)
    b = enc.telemetry(Kind.ELEVATOR, "e1", "tower-b", msg)
    c = enc.telemetry(Kind.SENSOR, "e1", "tower-b", msg)
    d = enc.telemetry(Kind.ELEVATOR, "e1", None, msg)
    assert a is not None and b is not None and c is not None and d is not None
    assert parse_line(a).tags["site"] == "tower-a"
    assert parse_line(b).tags["site"] == "tower-b"
    assert parse_line(c).measurement == "telemetry_sensor"
    assert "site" not in parse_line(d).tags


def test_elevator_message_as_the_bench_fleet_sends_it() -> None:
    msg = Telemetry(ts=STAMPS[0], seq=12, metrics={
        "speed_mps": 0.0, "position_m": 6.0, "direction": "stopped", "door": "closed", "door_zone": True,
        "occupancy": 0, "load_kg": 0, "power": "mains", "mode": "normal", "safety_circuit_ok": True, "floor": 3})
    line = LineEncoder().telemetry(Kind.ELEVATOR, "el0-00001", None, msg)
    assert line == ('telemetry_elevator,device=el0-00001,kind=elevator speed_mps=0.0,position_m=6.0,'
                    'direction="stopped",door="closed",door_zone=true,occupancy=0i,load_kg=0.0,power="mains",'
                    'mode="normal",safety_circuit_ok=true,floor=3i,seq=12i 1796292000123000000')


@pytest.mark.parametrize("ts", STAMPS)
def test_epoch_ms_is_the_exact_floor(ts: datetime) -> None:
    assert epoch_ms(ts) == reference_epoch_ms(ts)


metric_values = st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                          st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DEVICES), st.sampled_from(SITES),
                          st.dictionaries(st.sampled_from(NAMES), metric_values, max_size=6)), min_size=1, max_size=8),
       st.datetimes(timezones=st.just(UTC)))
def test_fast_paths_match_the_reference_for_any_values(batch: list[tuple[str, str | None, dict[str, object]]],
                                                     ts: datetime) -> None:
    enc = LineEncoder()
    expected: Counter[str] = Counter()
    for device, site, metrics in batch:
        msg = Telemetry(ts=ts, metrics=metrics)  # type: ignore[arg-type]
        assert enc.telemetry(Kind.ELEVATOR, device, site, msg) == reference_telemetry(
            expected, Kind.ELEVATOR, device, site, msg)
    assert enc.skipped == expected
