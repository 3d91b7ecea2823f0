"""Open JT/T 808 alarms across a gateway restart: ended (bit cleared while down) or continued, same event id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.jt808.alarms import (
    RECONCILED_REASON,
    AlarmTracker,
    MemoryAlarmStore,
    OpenAlarm,
    SqliteAlarmStore,
)
from edge.jt808.messages import LocationReport

T0 = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
FATIGUE, OVERSPEED, EMERGENCY = 1 << 2, 1 << 1, 1 << 0
DEV = "13900000001"


def report(flags: int, minutes: float) -> LocationReport:
    return LocationReport(alarm_flags=flags, status_flags=3, latitude=30.2, longitude=120.1, altitude_m=10,
                          speed_kmh=60.0, heading_deg=90, time=T0 + timedelta(minutes=minutes))


def test_an_alarm_that_cleared_while_the_gateway_was_down_ends_under_its_original_id(tmp_path: Path) -> None:
    store = SqliteAlarmStore(tmp_path / "alarms.sqlite3")
    before = AlarmTracker(store)
    [start] = before.update(DEV, report(FATIGUE, 0))
    assert (start.type, start.state) == ("fatigue_driving", "start")
    store.close()  # the process dies; a new one opens the same file

    reopened = SqliteAlarmStore(tmp_path / "alarms.sqlite3")
    after = AlarmTracker(reopened)
    assert after.restored == 1
    [end] = after.update(DEV, report(0, 5))
    assert (end.type, end.state, end.event_id) == ("fatigue_driving", "end", start.event_id)
    assert end.data["reason"] == RECONCILED_REASON
    assert after.restored == 0
    assert reopened.load() == []  # ended: nothing left for the next restart
    assert after.update(DEV, report(0, 6)) == []


def test_an_alarm_still_set_after_the_restart_goes_on_without_a_second_start() -> None:
    store = MemoryAlarmStore()
    [start] = AlarmTracker(store).update(DEV, report(FATIGUE | OVERSPEED, 0))[1:]  # overspeed first, then fatigue
    after = AlarmTracker(store)
    events = after.update(DEV, report(FATIGUE | EMERGENCY, 5))
    # Overspeed cleared meanwhile (ended, reconciled); fatigue goes on; emergency is new.
    assert [(e.type, e.state) for e in events] == [("emergency", "start"), ("overspeed", "end")]
    assert events[1].data["reason"] == RECONCILED_REASON
    assert after.update(DEV, report(FATIGUE | EMERGENCY, 6)) == []
    [emergency_end, fatigue_end] = after.update(DEV, report(0, 7))
    assert (fatigue_end.event_id, fatigue_end.state) == (start.event_id, "end")
    assert "reason" not in fatigue_end.data  # seen clearing live: an ordinary end
    assert emergency_end.event_id == events[0].event_id
    assert store.load() == []


def test_without_a_store_a_restart_forgets_open_alarms() -> None:
    AlarmTracker().update(DEV, report(FATIGUE, 0))
    assert AlarmTracker().update(DEV, report(0, 5)) == []  # documented: needs --data-dir


def test_open_alarms_of_terminals_not_yet_back_wait_for_them_across_further_restarts(tmp_path: Path) -> None:
    path = tmp_path / "alarms.sqlite3"
    AlarmTracker(SqliteAlarmStore(path)).update(DEV, report(FATIGUE, 0))
    AlarmTracker(SqliteAlarmStore(path)).update("13900000002", report(0, 1))  # another terminal only
    third = AlarmTracker(SqliteAlarmStore(path))
    assert third.restored == 1
    [end] = third.update(DEV, report(0, 9))
    assert end.state == "end" and end.data["reason"] == RECONCILED_REASON


def test_a_store_that_fails_costs_persistence_not_events(tmp_path: Path) -> None:
    store = SqliteAlarmStore(tmp_path / "alarms.sqlite3")
    tracker = AlarmTracker(store)
    store.close()  # every write now fails
    [start] = tracker.update(DEV, report(FATIGUE, 0))
    [end] = tracker.update(DEV, report(0, 1))
    assert (start.state, end.state, end.event_id) == ("start", "end", start.event_id)
    assert tracker.store_failures == 2


def test_a_row_that_does_not_parse_is_skipped(tmp_path: Path) -> None:
    store = SqliteAlarmStore(tmp_path / "alarms.sqlite3")
    store.opened(OpenAlarm(DEV, 2, "e1", "fatigue_driving", T0))
    store._db.execute("INSERT INTO open_alarms VALUES ('x', 1, 'e2', 'overspeed', 'not a time')")
    assert [a.event_id for a in store.load()] == ["e1"]
