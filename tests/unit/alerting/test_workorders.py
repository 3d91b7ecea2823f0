"""Pure cores of work orders: grid polygons and location, the order state machine, deadlines, figures."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from alerting.grids import GridBook, GridError, GridMap, distance_m, parse_grids
from alerting.workorders import model
from alerting.workorders.figures import order_figures
from alerting.workorders.model import OrderError, OrderPolicy, WorkOrder
from broker.calendar import HolidayCalendar

TZ = ZoneInfo("Asia/Shanghai")


def square(gid: str, w: float, s: float, size: float = 1.0, hole: bool = False, **props: Any) -> dict[str, Any]:
    rings = [[[w, s], [w + size, s], [w + size, s + size], [w, s + size], [w, s]]]
    if hole:
        q = size / 4
        rings.append([[w + q, s + q], [w + 3 * q, s + q], [w + 3 * q, s + 3 * q], [w + q, s + 3 * q], [w + q, s + q]])
    return {"type": "Feature", "properties": {"id": gid, **props}, "geometry": {"type": "Polygon", "coordinates": rings}}


def fc(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def test_point_in_grid_with_holes_multipolygons_and_misses() -> None:
    multi = {"type": "Feature", "properties": {"id": "m", "staff": ["a", "b"], "unit": "城管"},
             "geometry": {"type": "MultiPolygon", "coordinates": [
                 [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]],
                 [[[20, 20], [21, 20], [21, 21], [20, 21], [20, 20]]]]}}
    gm = GridMap(parse_grids(fc(square("a", 0, 0, hole=True), square("b", 1, 0), multi)))
    assert gm.locate(0.1, 0.1).id == "a"  # type: ignore[union-attr]  (lat, lon)
    assert gm.locate(0.5, 0.5) is None  # in the hole of a
    assert gm.locate(0.5, 1.5).id == "b"  # type: ignore[union-attr]
    assert gm.locate(20.5, 20.5).id == "m" and gm.locate(10.5, 10.5).id == "m"  # type: ignore[union-attr]
    assert gm.locate(5, 5) is None and gm.locate(None, 1) is None and gm.locate(float("nan"), 1) is None
    g = gm.grids["m"]
    assert g.staff == ("a", "b") and g.unit == "城管" and g.name == "m"


@pytest.mark.parametrize(("doc", "problem"), [
    ({"type": "Feature"}, "FeatureCollection"),
    (fc({"type": "Feature", "properties": {}, "geometry": {}}), "properties.id"),
    (fc(square("a", 0, 0), square("a", 1, 0)), "duplicate"),
    (fc({"type": "Feature", "properties": {"id": "x"}, "geometry": {"type": "Point", "coordinates": [0, 0]}}),
     "Polygon"),
    (fc({"type": "Feature", "properties": {"id": "x"}, "geometry": {"type": "Polygon",
                                                                    "coordinates": [[[0, 0], [1, 1]]]}}), "4"),
    (fc({"type": "Feature", "properties": {"id": "x"}, "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [1, 0], [1, 200], [0, 0]]]}}), "out of range"),
    (fc(square("x", 0, 0, staff="a")), "staff"),
    (fc(square("../x", 0, 0)), "properties.id"),
])
def test_bad_grid_files_name_the_problem(doc: Any, problem: str) -> None:
    with pytest.raises(GridError, match=problem):
        parse_grids(doc, "grids.json")


def test_grid_book_reloads_and_keeps_grids_on_a_broken_file(tmp_path: Path) -> None:
    import json
    import os

    path = tmp_path / "g.json"
    path.write_text(json.dumps(fc(square("a", 0, 0))))
    book = GridBook.load(path, check_s=10)
    assert list(book.grids) == ["a"]
    assert not book.maybe_reload(100.0)  # unchanged
    path.write_text("{not json")
    os.utime(path, (1, 1))
    assert not book.maybe_reload(105.0)  # not yet: checked at most every 10 s
    assert not book.maybe_reload(111.0) and book.errors == 1 and list(book.grids) == ["a"]
    path.write_text(json.dumps(fc(square("a", 0, 0), square("b", 1, 0))))
    os.utime(path, (2, 2))
    assert book.maybe_reload(122.0) and sorted(book.grids) == ["a", "b"]
    with pytest.raises(GridError):
        GridBook.load(tmp_path / "missing.json")
    assert GridBook.load(None).locate(0.5, 0.5) is None


def test_distance() -> None:
    assert distance_m(30.0, 120.0, 30.0, 120.0) == 0
    assert distance_m(30.0, 120.0, 30.001, 120.0) == pytest.approx(111.2, abs=0.5)


def order(**kw: Any) -> WorkOrder:
    base: dict[str, Any] = dict(id="a1", created_at=0.0, updated_at=0.0, lat=30.0, lon=120.0, policy="135")
    base.update(kw)
    return WorkOrder(**base)


DUE = {"accepted": 60.0, "en_route": 180.0, "on_site": 300.0, "handled": 1800.0}


def test_the_whole_path_and_illegal_steps() -> None:
    o = model.dispatch(order(), "system", 0.0, "g1", DUE)
    assert o.stage == "dispatched" and o.first_times == {"dispatched": 0.0}
    with pytest.raises(OrderError) as e:
        model.depart(o, "z", 1.0)
    assert e.value.code == "conflict"
    o = model.accept(o, "z", 30.0)
    with pytest.raises(OrderError):
        model.accept(o, "z", 31.0)
    o = model.depart(o, "z", 100.0)
    with pytest.raises(OrderError) as e:
        model.arrive(o, "z", 200.0, 30.01, 120.0, 300, "refuse")
    assert e.value.code == "too_far"
    flagged = model.arrive(o, "z", 200.0, 30.01, 120.0, 300, "flag")
    assert flagged.arrive_flagged and flagged.arrive_distance_m == pytest.approx(1112, abs=5)
    o = model.arrive(o, "z", 200.0, 30.001, 120.0, 300, "refuse")
    assert o.stage == "on_site" and not o.arrive_flagged
    with pytest.raises(OrderError):
        model.handle(o, "z", 300.0, "  ", [])
    o = model.handle(o, "z", 400.0, "done", ["p.jpg"])
    with pytest.raises(OrderError):
        model.close(o, "c", 500.0)
    with pytest.raises(OrderError):
        model.verify(o, "c", 500.0, False, "")
    back = model.verify(o, "c", 500.0, False, "more photos")
    assert back.stage == "on_site" and "handled" not in back.times
    o = model.verify(o, "c", 500.0, True)
    o = model.close(o, "c", 600.0)
    assert not o.is_open and model.next_due(o) is None
    with pytest.raises(OrderError):
        model.record_satisfaction(o, "c", 700.0, "meh")
    o = model.record_satisfaction(o, "c", 700.0, "satisfied")
    assert o.late == [] and o.actors["accepted"] == "z"


def test_returns_reassignments_and_overdue() -> None:
    o = model.dispatch(order(), "system", 0.0, "g1", DUE)
    with pytest.raises(OrderError):
        model.give_back(o, "z", 10.0, "")
    r = model.give_back(o, "z", 10.0, "not ours")
    assert r.stage == "returned" and r.returns == 1
    assert model.check_overdue(r, 1000.0) == (r, [])  # the centre holds it now
    with pytest.raises(OrderError):
        model.dispatch(o, "c", 20.0, "g2", DUE)  # reassigning needs a reason
    o2 = model.dispatch(r, "c", 20.0, "g2", {k: v + 20 for k, v in DUE.items()})
    assert o2.grid == "g2" and o2.reassigns == 0 and o2.first_times["dispatched"] == 0.0
    o3, missed = model.check_overdue(o2, 80.0)
    assert missed == ["accepted"] and o3.overdue == ["accepted"] and o3.late == ["accepted"]
    assert model.check_overdue(o3, 81.0)[1] == []  # once
    assert model.next_due(o3) == 200.0
    o4 = model.dispatch(model.accept(o3, "y", 90.0), "c", 95.0, "g3", DUE, reason="closer team")
    assert o4.reassigns == 1 and o4.overdue == [] and o4.late == ["accepted"] and o4.assignee is None
    closed = model.close(model.verify(model.handle(model.arrive(model.depart(model.accept(o4, "x", 96), "x", 97),
                                                                 "x", 98, 30.0, 120.0, 300, "flag"),
                                                    "x", 99, "ok", []), "c", 99.5, True), "c", 100.0)
    with pytest.raises(OrderError):
        model.dispatch(closed, "c", 101.0, "g1", DUE)


def test_policies_and_working_day_deadlines() -> None:
    pols = model.default_policies()
    assert model.choose_policy(pols, "rescue", "critical").name == "135"  # type: ignore[union-attr]
    assert model.choose_policy(pols, "hotline", "major").name == "hotline-12345"  # type: ignore[union-attr]
    assert model.choose_policy(pols, "x", "warning").name == "standard"  # type: ignore[union-attr]
    cal = HolidayCalendar()
    start = datetime(2026, 9, 30, 10, 0, tzinfo=TZ).timestamp()  # the day before National Day
    due = model.deadlines(OrderPolicy(name="p", limits_s={"accepted": 60, "bogus": 1},
                                      limits_working_days={"handled": 3, "closed": 0}),
                          start, cal.add_working_days, TZ)
    assert due["accepted"] == start + 60 and "bogus" not in due and due["closed"] == start
    assert due["handled"] == datetime(2026, 10, 10, 10, 0, tzinfo=TZ).timestamp()  # Saturday, a make-up day


def test_figures_by_dimension() -> None:
    def done(oid: str, grid: str, who: str, accept_at: float, due_accept: float, sat: str | None) -> WorkOrder:
        o = model.dispatch(order(id=oid, category="c1"), "system", 0.0, grid, {**DUE, "accepted": due_accept})
        o = model.accept(o, who, accept_at)
        o = model.depart(o, who, accept_at + 1)
        o = model.arrive(o, who, 200.0, 30.0, 120.0, 300, "flag")
        o = model.close(model.verify(model.handle(o, who, 300.0, "ok", []), "c", 400.0, True), "c", 500.0)
        return model.record_satisfaction(o, "c", 600.0, sat) if sat else o

    orders = [done("a", "g1", "z", 30, 60, "satisfied"), done("b", "g1", "z", 90, 60, "unsatisfied"),
              done("c", "g2", "y", 10, 60, None), model.dispatch(order(id="d"), "system", 0, "g2", DUE)]
    f = order_figures(orders, 1000.0)
    assert f["total"] == 4 and f["closed"] == 3 and f["closure_rate"] == 0.75
    assert f["mean_response_s"] == pytest.approx((30 + 90 + 10) / 3)
    assert f["mean_arrival_s"] == 200.0 and f["mean_closure_s"] == 500.0
    assert f["on_time_rate"]["accepted"] == pytest.approx(2 / 3)  # d is not yet judged: no deadline checked
    assert f["satisfaction_rate"] == 0.5 and f["surveyed"] == 2
    assert f["by"]["grid"]["g1"]["on_time_rate"]["accepted"] == 0.5
    assert f["by"]["person"]["y"]["total"] == 1 and f["by"]["person"]["-"]["total"] == 1
    assert f["by_stage"] == {"closed": 3, "dispatched": 1}


def test_config_checks_grid_staff_and_policies() -> None:
    from alerting.config import AlertingConfigError, load_config

    tok = "Gs0vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U"
    bad = [
        ({"users": [{"name": "a", "role": "grid_staff", "token": tok}]}, "needs grids"),
        ({"workorders": {"policies": [{"name": "x", "limits_s": {"acepted": 1}}]}}, "unknown milestone"),
        ({"workorders": {"policies": [{"name": "x", "limits_s": {"accepted": 0}}]}}, "positive"),
        ({"workorders": {"policies": [{"name": "x", "escalate": ["person:nobody"]}]}}, "unknown person"),
        ({"workorders": {"photo_max_bytes": 10}}, "photo_max_bytes"),
        ({"workorders": {"arrive_mode": "shout"}}, "arrive_mode"),
    ]
    for raw, problem in bad:
        with pytest.raises(AlertingConfigError, match=problem):
            load_config({"users": [], **raw})
    cfg = load_config({"users": [{"name": "a", "role": "grid_staff", "token": tok, "grids": ["g1"]}],
                       "workorders": {"enabled": True}})
    assert cfg.workorders.enabled and [p.name for p in cfg.workorders.policies] == ["135", "hotline-12345", "standard"]


def test_overlaps_resolve_in_file_order_and_outliers_are_found() -> None:
    small = [square(f"s{i}", i * 0.01, 0, size=0.01) for i in range(50)]
    huge = square("huge", -50, -50, size=100)
    gm = GridMap(parse_grids(fc(*small, huge)))
    assert gm.locate(0.005, 0.125).id == "s12"  # type: ignore[union-attr]
    assert gm.locate(40.0, 40.0).id == "huge"  # type: ignore[union-attr]  (only the outlier covers it)
    first_huge = GridMap(parse_grids(fc(huge, *small)))
    assert first_huge.locate(0.005, 0.125).id == "huge"  # type: ignore[union-attr]


def test_config_check_reads_the_grids_and_holiday_files(tmp_path: Path) -> None:
    import json

    from alerting.config import AlertingConfigError, load_config

    bad = tmp_path / "grids.json"
    bad.write_text(json.dumps(fc(square("a", 0, 0), square("a", 1, 0))))
    with pytest.raises(AlertingConfigError, match=r"workorders.grids_file: .*duplicate grid id"):
        load_config({"users": [], "workorders": {"enabled": True, "grids_file": str(bad)}})
    with pytest.raises(AlertingConfigError, match=r"workorders.grids_file: .*cannot read"):
        load_config({"users": [], "workorders": {"enabled": True, "grids_file": str(tmp_path / "none.json")}})
    with pytest.raises(AlertingConfigError, match=r"workorders\.calendar_file"):
        load_config({"users": [], "workorders": {"enabled": True, "calendar_file": str(tmp_path / "none.yaml")}})
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(fc(square("a", 0, 0))))
    assert load_config({"users": [], "workorders": {"enabled": True, "grids_file": str(good)}}).workorders.enabled
