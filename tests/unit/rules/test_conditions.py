"""Condition types, table-driven through a one-rule engine (and their pure helpers directly)."""

from __future__ import annotations

import pytest
from rules_helpers import BASE, event, feed, make_engine, one_rule, tel

from rules.conditions.geo import Zone, distance_to_route_m, haversine_m, parse_zone
from rules.conditions.windows import Samples, aggregate


@pytest.mark.parametrize(("fn", "expected"), [
    ("avg", 2.5), ("min", 1.0), ("max", 4.0), ("sum", 10.0), ("count", 4.0), ("delta", 3.0), ("last", 4.0),
    ("first", 1.0), ("rate", 1.0), ("p50", 2.5), ("p0", 1.0), ("p100", 4.0), ("stddev", 1.118033988749895),
])
def test_aggregates(fn: str, expected: float) -> None:
    assert aggregate(fn, [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(expected)


def test_aggregate_edge_cases() -> None:
    assert aggregate("avg", [], []) is None
    assert aggregate("count", [], []) == 0.0
    assert aggregate("rate", [5.0], [1.0]) is None
    assert aggregate("rate", [0.0, 60.0], [0.0, 1.0], per=3600.0) == pytest.approx(60.0)


def test_samples_keep_order_dedupe_and_evict() -> None:
    s = Samples()
    for t, v in [(10, 1), (30, 3), (20, 2), (30, 33)]:
        assert s.add(t, v, over=60)
    assert s.ts == [10, 20, 30] and s.values == [1, 2, 33]
    assert not s.add(-40, 9, over=60)  # older than the window
    s.add(75, 4, over=60)
    assert s.ts == [20, 30, 75]
    s.evict(70)
    assert s.ts == [75]
    assert Samples.load(s.dump()).ts == [75]


def test_window_percentile_with_hysteresis() -> None:
    eng = make_engine(one_rule("{window: {value: v, fn: p90, over: 10s, above: 50, clear_below: 20}}"))
    got = feed(eng, *(tel("d", t, v=v) for t, v in [(0, 10), (1, 100), (2, 30), (13, 30), (14, 10),
                                                         (25, 10)]))
    # At 13 s and 14 s the p90 (30, then 28) lies between the clear and fire levels: still firing.
    assert got == [(1, "firing", "r"), (25, "resolved", "r")]


def test_window_min_samples_and_valid_flags() -> None:
    eng = make_engine(one_rule("{window: {value: a21026.ZsAvg, fn: avg, over: 1h, above: 35, valid_flags: [N], "
                               "min_samples: 3}}", ).replace("kind: sensor", "kind: emission"))
    msgs = [tel("s", 0, "emission", {"a21026": "N"}, **{"a21026.ZsAvg": 50}),
            tel("s", 60, "emission", {"a21026": "M"}, **{"a21026.ZsAvg": 500}),
            tel("s", 120, "emission", {"a21026": "N"}, **{"a21026.ZsAvg": 40}),
            tel("s", 180, "emission", {"a21026": "N"}, **{"a21026.ZsAvg": 30})]
    assert feed(make_engine(one_rule("x").replace("x", '"1 > 0"').replace('"1 > 0"', '"v > 0"')), tel("d", 0, v=1))
    assert [e[:2] for e in feed(eng, *msgs)] == [(180, "firing")]  # (50 + 40 + 30) / 3 = 40, the M value left out


def test_rate_of_change() -> None:
    eng = make_engine(one_rule("{rate: {value: level, over: 10min, per: 1h, above: 30}}"))
    got = feed(eng, *(tel("d", t * 60, level=lv) for t, lv in [(0, 10), (5, 12), (10, 17), (15, 19), (20, 19)]))
    # The window (0, 600] holds 12 and 17: 60/h; at 900 s it holds 17 and 19: 24/h.
    assert got == [(600, "firing", "r"), (900, "resolved", "r")]


def test_trend_warns_before_the_limit() -> None:
    eng = make_engine(one_rule("{trend: {value: v, over: 10min, within: 30min, limit: 100, min_samples: 3}}"))
    got = feed(eng, *(tel("d", t * 60, v=v) for t, v in [(0, 50), (1, 50), (2, 51), (3, 53), (4, 56), (5, 60),
                                                          (6, 101)]))
    assert got == [(240, "firing", "r"), (360, "resolved", "r")]


def test_flatline_needs_a_covered_window() -> None:
    eng = make_engine(one_rule("{flatline: {value: v, over: 10min, tolerance: 0.01, min_samples: 3}}"))
    got = feed(eng, *(tel("d", t * 60, v=v) for t, v in [(0, 5), (3, 5.005), (6, 5), (9, 5), (10, 5), (11, 6)]))
    assert got == [(540, "firing", "r"), (660, "resolved", "r")]


def test_quality_counts_valid_samples_once_a_window_is_observed() -> None:
    text = one_rule("{quality: {metric: x.Avg, over: 10min, min_valid_fraction: 0.5}}")
    eng = make_engine(text)
    msgs = [tel("d", t * 60, "sensor", {"x": "N" if t < 3 or t > 14 else "D"}, **{"x.Avg": 1.0}) for t in range(22)]
    got = feed(eng, *msgs)
    # At 10 min the window (0, 600] holds minutes 1-10, of which 1-2 are valid; at 19 min it holds
    # minutes 10-19, of which 15-19 are valid: half.
    assert got == [(600, "firing", "r"), (1140, "resolved", "r")]


@pytest.mark.parametrize(("spec", "local_times", "expected"), [
    ('"02:00-05:00"', ["01:59", "02:00", "04:59", "05:00"], [False, True, True, False]),
    ('{between: "22:00-06:00", weekdays: [fri]}', ["thu 23:00", "fri 23:00", "sat 05:59", "sat 23:00"],
     [False, True, True, False]),
    ('{between: ["07:00-08:30", "16:00-18:00"], weekdays: [mon, tue, wed, thu, fri]}',
     ["thu 07:30", "thu 12:00", "thu 17:59", "sat 07:30"], [True, False, True, False]),
    ('{between: "10:00-11:00", tz: UTC}', ["18:30"], [True]),
])
def test_schedules(spec: str, local_times: list[str], expected: list[bool]) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from rules.conditions.basic import ScheduleCondition

    eng = make_engine(one_rule(f"{{all: [{{schedule: {spec}}}, \"v > 0\"]}}"))
    cond = eng.rules["r"].condition.children()[0]
    assert isinstance(cond, ScheduleCondition)
    days = {"thu": 26, "fri": 27, "sat": 28}
    for text, want in zip(local_times, expected, strict=True):
        day, hhmm = text.split() if " " in text else ("thu", text)
        h, m = (int(p) for p in hhmm.split(":"))
        ts = datetime(2026, 11, days[day], h, m, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
        assert cond.schedule.active(ts) is want, text


def test_geo_helpers() -> None:
    assert haversine_m(31.2, 121.5, 31.2, 121.5) == 0.0
    assert haversine_m(31.2, 121.5, 31.21, 121.5) == pytest.approx(1112, abs=2)
    square = parse_zone("sq", {"polygon": [[121.0, 31.0], [121.1, 31.0], [121.1, 31.1], [121.0, 31.1]]})
    assert square.contains(31.05, 121.05) and not square.contains(31.15, 121.05)
    circle = parse_zone("c", {"circle": {"center": [121.5, 31.2], "radius_m": 100}})
    assert isinstance(circle, Zone) and circle.contains(31.2005, 121.5) and not circle.contains(31.202, 121.5)
    assert distance_to_route_m(31.21, 121.5, [(121.4, 31.2), (121.6, 31.2)]) == pytest.approx(1112, abs=3)
    assert distance_to_route_m(31.2, 121.7, [(121.4, 31.2), (121.6, 31.2)]) == pytest.approx(9530, rel=0.01)
    with pytest.raises(ValueError, match="at least 3"):
        parse_zone("bad", {"polygon": [[1, 2], [3, 4]]})
    with pytest.raises(ValueError, match="out of range"):
        parse_zone("bad", {"circle": {"center": [200, 2], "radius_m": 5}})


ZONES = "zones: {yard: {circle: {center: [121.5, 31.2], radius_m: 200}}}\n"


@pytest.mark.parametrize(("mode", "expected"), [
    ("inside", [(0, "firing"), (60, "resolved"), (120, "firing")]),
    ("outside", [(60, "firing"), (120, "resolved")]),
    ("enter", [(120, "firing")]),
    ("exit", [(60, "firing"), (120, "resolved")]),
    ("inside, dwell: 30s", [(30, "firing"), (60, "resolved"), (150, "firing")]),
])
def test_geofence_modes(mode: str, expected: list[tuple[float, str]]) -> None:
    eng = make_engine(ZONES + one_rule(f"{{geofence: {{zones: [yard], mode: {mode}}}}}").replace("kind: sensor",
                                                                                                  "kind: vehicle"))
    inside, outside = {"lat": 31.2, "lon": 121.5}, {"lat": 31.21, "lon": 121.5}
    path = [(0, inside), (30, inside), (60, outside), (90, outside), (120, inside), (150, inside)]
    got = feed(eng, *(tel("car", t, "vehicle", **p) for t, p in path))
    assert [g[:2] for g in got] == expected


def test_geofence_unknown_zone_is_a_load_error() -> None:
    from rules.loader import load_rule_text

    _, errors = load_rule_text(one_rule("{geofence: {zones: [nowhere], mode: inside}}"), "f.yaml")
    assert "unknown zone 'nowhere'" in errors[0]


def test_driving_time_gap_counts_as_rest() -> None:
    eng = make_engine(one_rule("{driving_time: {mode: continuous, limit: 1h, rest: 20min, max_gap: 10min}}"))
    msgs = [tel("d", t * 60, speed_kmh=60) for t in range(0, 50, 5)]
    msgs += [tel("d", t * 60, speed_kmh=60) for t in range(80, 145, 5)]  # 30-minute silence before: a rest
    got = feed(eng, *msgs)
    assert got == [(140 * 60, "firing", "r")]


def test_repeat_counts_occurrences_in_a_window() -> None:
    eng = make_engine(one_rule('{repeat: {condition: "v > 10", count: 3, within: 10min}}'))
    got = feed(eng, *(tel("d", t * 60, v=v) for t, v in [(0, 11), (1, 11), (2, 1), (3, 12), (4, 1), (5, 13),
                                                          (6, 1), (16, 1)]))
    assert got == [(300, "firing", "r"), (960, "resolved", "r")]


def test_composition_signals() -> None:
    text = one_rule('{all: [{threshold: {value: v, above: 10, clear_below: 5}}, {not: "w > 0"}]}')
    eng = make_engine(text)
    got = feed(eng, *(tel("d", t, v=v, w=w) for t, v, w in [(0, 11, 0), (1, 8, 0), (2, 11, 1), (3, 11, 0),
                                                           (4, 4, 0)]))
    assert got == [(0, "firing", "r"), (2, "resolved", "r"), (3, "firing", "r"), (4, "resolved", "r")]


def test_range() -> None:
    eng = make_engine(one_rule("{range: {value: t, min: 80, max: 200, clear_margin: 5}}"))
    got = feed(eng, *(tel("d", i, t=t) for i, t in enumerate([100, 210, 198, 194, 70, 83, 90])))
    assert got == [(1, "firing", "r"), (3, "resolved", "r"), (4, "firing", "r"), (6, "resolved", "r")]


def test_instant_events_auto_resolve_on_the_tick_and_end_events_match_ids() -> None:
    eng = make_engine(one_rule("{event: {types: [a, b], resolve_after: 60s}}"))
    assert feed(eng, event("d", 0, "a", state="start", event_id="1"), event("d", 1, "b", state="start",
                                                                              event_id="2")) == [(0, "firing", "r")]
    assert feed(eng, event("d", 2, "a", state="end", event_id="1")) == []
    assert feed(eng, event("d", 3, "b", state="end", event_id="2")) == [(3, "resolved", "r")]
    assert feed(eng, event("d", 10, "a")) == [(10, "firing", "r")]
    assert eng.tick(BASE + 69) == []
    assert [t.status for t in eng.tick(BASE + 70)] == ["resolved"]


def test_event_details_reach_the_transition() -> None:
    eng = make_engine(one_rule("{event: intrusion}").replace('summary: "r {device}"',
                                                             'summary: "{zone} {data.track} {measure:.1f}"'))
    (tr,) = eng.process([event("d", 0, "intrusion", zone="gate", measure=0.93, snapshot_url="http://e/s.jpg",
                               data={"track": 17, "nested": {"x": 1}})], BASE)
    assert tr.summary == "gate 17 0.9"
    assert tr.snapshot_url == "http://e/s.jpg"
    assert tr.values == {"event_type": "intrusion", "zone": "gate", "measure": 0.93, "data.track": 17}
