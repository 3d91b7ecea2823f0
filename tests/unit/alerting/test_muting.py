"""Silences, maintenance windows and inhibition share one muting stage."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from alerting.config import InhibitRule, MaintenanceWindow
from alerting.muting import Inhibitor, MaintenanceCalendar, Muter, SilenceEntry, SilenceSet

SH = ZoneInfo("Asia/Shanghai")


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=SH).timestamp()


def test_silence_by_matchers_and_period() -> None:
    s = SilenceSet()
    s.put(SilenceEntry(id="s1", matchers=["site=tower-a", "kind=~elev.*"], starts_at=100, ends_at=200, author="li"))
    labels = {"site": "tower-a", "kind": "elevator"}
    assert s.mute_reason("x", labels, 99) is None
    r = s.mute_reason("x", labels, 150)
    assert r is not None and (r.kind, r.id) == ("silence", "s1")
    assert s.mute_reason("x", {"site": "tower-b", "kind": "elevator"}, 150) is None
    assert s.mute_reason("x", labels, 200) is None
    assert s.expired(200) == ["s1"]


def test_maintenance_window_recurring_across_midnight() -> None:
    # Every Tuesday 23:30 for 60 minutes, Shanghai time.
    w = MaintenanceWindow(name="lift-service", matchers=["device_id=elv-1"], start="23:30", duration_min=60,
                          weekdays=[1])
    cal = MaintenanceCalendar([w])
    lab = {"device_id": "elv-1"}
    assert cal.mute_reason("a", lab, at(2026, 11, 24, 23, 45)) is not None  # Tue 23:45
    assert cal.mute_reason("a", lab, at(2026, 11, 25, 0, 20)) is not None  # Wed 00:20, same window
    assert cal.mute_reason("a", lab, at(2026, 11, 25, 0, 31)) is None
    assert cal.mute_reason("a", lab, at(2026, 11, 25, 23, 45)) is None  # Wednesday
    assert cal.mute_reason("a", {"device_id": "elv-2"}, at(2026, 11, 24, 23, 45)) is None
    assert cal.mute_reason("a", lab, at(2026, 12, 1, 23, 31)) is not None  # next Tuesday


def test_inhibition_site_power_and_offline_device() -> None:
    inh = Inhibitor([
        InhibitRule(name="power", source=["rule=site_power_failure"], target=["kind=elevator"], equal=["site"]),
        InhibitRule(name="offline", source=["rule=device_offline"], target=["rule!=device_offline"],
                    equal=["device_id"]),
    ])
    elev = {"kind": "elevator", "site": "t1", "device_id": "e1", "rule": "trapped_passenger"}
    assert inh.mute_reason("e", elev, 0) is None
    inh.update("p", {"rule": "site_power_failure", "site": "t1", "kind": "sensor", "device_id": "pm"}, True)
    r = inh.mute_reason("e", elev, 0)
    assert r is not None and r.id == "power"
    assert inh.mute_reason("e", {**elev, "site": "t2"}, 0) is None
    inh.update("p", {"rule": "site_power_failure", "site": "t1"}, False)
    assert inh.mute_reason("e", elev, 0) is None
    off = {"rule": "device_offline", "device_id": "cam1", "kind": "camera"}
    inh.update("o", off, True)
    assert inh.mute_reason("o", off, 0) is None  # a source does not mute itself
    assert inh.mute_reason("c", {"rule": "camera_covered", "device_id": "cam1"}, 0) is not None


def test_muter_asks_every_stage() -> None:
    s = SilenceSet()
    s.put(SilenceEntry(id="s", matchers=["site=x"], starts_at=0, ends_at=10, author="a"))
    inh = Inhibitor([InhibitRule(name="i", source=["rule=src"], target=["rule=tgt"], equal=[])])
    inh.update("src1", {"rule": "src"}, True)
    m = Muter(s, MaintenanceCalendar([]), inh)
    r1, r2 = m.mute_reason("a", {"site": "x"}, 5), m.mute_reason("b", {"rule": "tgt"}, 5)
    assert r1 is not None and r1.kind == "silence"
    assert r2 is not None and r2.kind == "inhibition"
    assert m.mute_reason("c", {"rule": "other"}, 5) is None


def test_silence_index_with_and_without_equality_matchers() -> None:
    s = SilenceSet()
    s.put(SilenceEntry(id="eq", matchers=["site=a", "kind=camera"], starts_at=0, ends_at=10, author="x"))
    s.put(SilenceEntry(id="re", matchers=["device_id=~cam-1.*"], starts_at=0, ends_at=10, author="x"))
    s.put(SilenceEntry(id="neg", matchers=["site!=zzz", "rule=r9"], starts_at=0, ends_at=10, author="x"))
    got = [s.mute_reason("x", lab, 5) for lab in (
        {"site": "a", "kind": "camera"}, {"site": "a", "kind": "elevator"}, {"device_id": "cam-12"},
        {"site": "b", "rule": "r9"}, {"site": "b", "rule": "r8"})]
    assert [g.id if g else None for g in got] == ["eq", None, "re", "neg", None]
    s.put(SilenceEntry(id="eq", matchers=["site=b"], starts_at=0, ends_at=10, author="x"))  # replaced
    r = s.mute_reason("x", {"site": "a", "kind": "camera"}, 5)
    assert r is None
    s.remove("re")
    assert s.mute_reason("x", {"device_id": "cam-12"}, 5) is None
