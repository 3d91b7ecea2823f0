"""Working-day calendar: statutory holidays, make-up days, overrides, school terms, schedule filters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from rules_helpers import make_engine, one_rule

from broker.calendar import CalendarError, HolidayCalendar, day_matches, install_calendar, years_missing
from rules.conditions.basic import ScheduleCondition

SH = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def calendar() -> Iterator[HolidayCalendar]:
    """A calendar with a 2026 autumn term, a break, and 2027's arrangement given as overrides."""
    cal = HolidayCalendar.from_mapping({
        "holidays": ["2027-01-01", "2027-02-06..2027-02-13"],
        "workdays": ["2027-02-14"],
        "school_terms": [{"name": "2026秋季学期", "from": "2026-09-01", "until": "2027-01-22"}],
        "school_breaks": ["2026-11-09..2026-11-10"],
    }, "test-calendar.yaml")
    previous = install_calendar(cal)
    yield cal
    install_calendar(previous)


def test_statutory_holidays_and_make_up_days() -> None:
    cal = HolidayCalendar()
    assert cal.is_workday(date(2026, 10, 1)) is False  # National Day, a Thursday
    assert cal.is_workday(date(2026, 2, 17)) is False  # Spring Festival
    assert cal.is_workday(date(2026, 11, 26)) is True  # an ordinary Thursday
    assert cal.is_workday(date(2026, 11, 28)) is False  # an ordinary Saturday
    # A make-up working day (调休上班) on a weekend in the 2026 arrangement: find one rather than hard-code it.
    make_up = [d for d in (date(2026, 1, 1).fromordinal(date(2026, 1, 1).toordinal() + i) for i in range(365))
               if d.weekday() >= 5 and cal.is_workday(d)]
    assert make_up, "the 2026 arrangement has weekend working days"
    assert all(d.year == 2026 for d in make_up)


def test_unknown_year_falls_back_to_weekdays_and_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    cal = HolidayCalendar()
    assert years_missing(cal, [2026, 2031]) == [2031]
    assert cal.is_workday(date(2031, 1, 6)) is True  # a Monday
    assert cal.is_workday(date(2031, 1, 4)) is False  # a Saturday
    assert "no holiday arrangement for 2031" in caplog.text


def test_overrides_cover_a_new_year(calendar: HolidayCalendar) -> None:
    assert calendar.covers(2027)
    assert calendar.is_workday(date(2027, 1, 1)) is False
    assert calendar.is_workday(date(2027, 2, 10)) is False  # a Wednesday inside the holiday range
    assert calendar.is_workday(date(2027, 2, 14)) is True  # a Sunday made a working day


def test_school_days(calendar: HolidayCalendar) -> None:
    assert calendar.is_school_day(date(2026, 11, 26)) is True
    assert calendar.is_school_day(date(2026, 11, 9)) is False  # break inside the term
    assert calendar.is_school_day(date(2026, 10, 2)) is False  # National Day holiday
    assert calendar.is_school_day(date(2026, 8, 20)) is False  # summer holiday, a working day
    assert calendar.is_workday(date(2026, 8, 20)) is True


def test_working_day_deadlines(calendar: HolidayCalendar) -> None:
    # Opened on Wednesday 30 Sep 2026, the eve of National Day: three working days skip the holiday week.
    opened = datetime(2026, 9, 30, 15, 0, tzinfo=SH)
    deadline = calendar.add_working_days(opened, 3)
    assert deadline.date() > date(2026, 10, 8)
    assert deadline.time() == opened.time()
    assert calendar.working_days_between(opened.date(), deadline.date()) == 3
    # An ordinary week: Thursday + 3 working days = Tuesday.
    assert calendar.add_working_days(datetime(2026, 11, 26, 9, 0, tzinfo=SH), 3).date() == date(2026, 12, 1)
    with pytest.raises(ValueError):
        calendar.add_working_days(opened, -1)


@pytest.mark.parametrize(("doc", "needle"), [
    ({"holidays": ["2027-13-01"]}, "holidays"),
    ({"holidays": ["2027-01-01"], "workdays": ["2027-01-01"]}, "both as a holiday and a workday"),
    ({"school_terms": [{"from": "2027-02-01"}]}, "school_terms[0]"),
    ({"school_terms": [{"from": "2027-02-01", "until": "2027-01-01"}]}, "before"),
    ({"holiday": []}, "unknown key"),
    ({"holidays": ["2027-03-01..2027-01-01"]}, "bad range"),
])
def test_bad_override_files_name_the_problem(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(CalendarError) as err:
        HolidayCalendar.from_mapping(doc, "city.yaml")
    assert "city.yaml" in str(err.value) and needle in str(err.value)


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "calendar.yaml"
    path.write_text("workdays: ['2027-02-14']\nholidays: ['2027-02-06..2027-02-13']\n", encoding="utf-8")
    cal = HolidayCalendar.load(path)
    assert cal.is_workday(date(2027, 2, 14)) and not cal.is_workday(date(2027, 2, 8))
    path.write_text("holidays: [\n", encoding="utf-8")
    with pytest.raises(CalendarError, match=r"calendar\.yaml"):
        HolidayCalendar.load(path)


def test_day_filters(calendar: HolidayCalendar) -> None:
    national_day = date(2026, 10, 1)
    assert day_matches("any", national_day)
    assert day_matches("rest_days", national_day) and not day_matches("workdays", national_day)
    assert day_matches("non_school_days", national_day) and not day_matches("school_days", national_day)
    with pytest.raises(ValueError):
        day_matches("fridays", national_day)


def test_schedule_days_follow_the_calendar(calendar: HolidayCalendar) -> None:
    """A 'school hours' schedule is off on National Day (a Thursday) and on during a term Thursday;
    an overnight window belongs to the day it starts."""
    eng = make_engine(one_rule('{all: [{schedule: {between: "07:00-17:00", days: school_days}}, "v > 0"]}'))
    cond = eng.rules["r"].condition.children()[0]
    assert isinstance(cond, ScheduleCondition)
    assert cond.schedule.active(datetime(2026, 11, 26, 8, 0, tzinfo=SH).timestamp()) is True
    assert cond.schedule.active(datetime(2026, 10, 1, 8, 0, tzinfo=SH).timestamp()) is False
    eng = make_engine(one_rule('{all: [{schedule: {between: "22:00-06:00", days: rest_days}}, "v > 0"]}'))
    night = eng.rules["r"].condition.children()[0]
    assert isinstance(night, ScheduleCondition)
    # 05:00 on Friday 2 Oct belongs to the night that began on 1 Oct (a holiday): on.
    assert night.schedule.active(datetime(2026, 10, 2, 5, 0, tzinfo=SH).timestamp()) is True
    # 05:00 on Friday 27 Nov belongs to Thursday night (a working day): off.
    assert night.schedule.active(datetime(2026, 11, 27, 5, 0, tzinfo=SH).timestamp()) is False


def test_unknown_day_filter_is_a_load_error() -> None:
    from rules.loader import load_rule_text

    _, errors = load_rule_text(one_rule('{all: [{schedule: {between: "07:00-17:00", days: fridays}}, "v > 0"]}'),
                               "bad.yaml")
    assert errors and "schedule.days" in errors[0] and "fridays" in errors[0]
