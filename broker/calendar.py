"""Working-day calendar: Chinese statutory holidays, make-up working days (调休), local overrides, school terms.

Schedules (``days: workdays``) and working-day time limits ("3 working days", 12345-style) ask this
calendar, never the weekday alone: a Sunday can be a make-up working day and a Wednesday in the
National Day week is a holiday. The statutory part comes from the ``chinese_calendar`` package,
which carries the State Council's published arrangements; a year it does not know yet (the
arrangement is published each November) falls back to Monday-Friday and is reported by
:meth:`HolidayCalendar.covers`, so a deployment adds the new year to its override file.

Override file (YAML, every key optional)::

    holidays: ["2027-01-01", "2027-02-06..2027-02-13"]   # extra rest days (local or new statutory ones)
    workdays: ["2027-02-14"]                             # make-up working days (调休上班)
    school_terms:                                       # inclusive date ranges when classes run
      - {name: 2026秋季学期, from: 2026-09-01, until: 2027-01-22}
    school_breaks: ["2026-11-09..2026-11-10"]           # days off inside a term (exams, sports days)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from broker.errors import BrokerError

log = logging.getLogger(__name__)

try:  # the statutory arrangements; optional so a bare install still runs (weekday fallback)
    import chinese_calendar as _statutory
except ImportError:  # pragma: no cover - the package is a declared dependency
    _statutory = None


class CalendarError(BrokerError, ValueError):
    """An override file is invalid; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class SchoolTerm:
    """Inclusive range of days on which a term's classes run (weekends and holidays still off)."""

    name: str
    start: date
    end: date


@dataclass
class HolidayCalendar:
    """Answers whether a local date is a working day, a rest day or a school day."""

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    school_terms: tuple[SchoolTerm, ...] = ()
    school_breaks: frozenset[date] = frozenset()
    source: str = "<statutory>"
    _warned_years: set[int] = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ questions
    def covers(self, year: int) -> bool:
        """Whether the statutory arrangement of ``year`` is known (from the package or the overrides)."""
        if any(d.year == year for d in self.holidays | self.workdays):
            return True
        return self._statutory_workday(date(year, 6, 1)) is not None

    def is_workday(self, day: date) -> bool:
        """A working day: a statutory working day (incl. make-up days), unless overridden."""
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        known = self._statutory_workday(day)
        if known is not None:
            return known
        if day.year not in self._warned_years:
            self._warned_years.add(day.year)
            log.warning("calendar: no holiday arrangement for %d in %s; Monday-Friday assumed until the override "
                        "file lists that year's holidays and make-up days", day.year, self.source)
        return day.weekday() < 5

    def is_rest_day(self, day: date) -> bool:
        """A weekend or holiday that is not a make-up working day."""
        return not self.is_workday(day)

    def is_school_day(self, day: date) -> bool:
        """A working day inside a school term and outside its breaks (no terms configured: every working day)."""
        if not self.is_workday(day) or day in self.school_breaks:
            return False
        if not self.school_terms:
            return True
        return any(t.start <= day <= t.end for t in self.school_terms)

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """The deadline ``days`` working days after ``start`` (same local time of day; 12345-style limits).

        A case opened on a rest day starts counting on the next working day, as the hotline rules do.
        """
        if days < 0:
            raise ValueError("days must be >= 0")
        current = start
        counted = 0
        while counted < days:
            current += timedelta(days=1)
            if self.is_workday(current.date()):
                counted += 1
        return current

    def working_days_between(self, start: date, end: date) -> int:
        """Working days in the half-open range ``(start, end]``."""
        n = 0
        day = start
        while day < end:
            day += timedelta(days=1)
            n += self.is_workday(day)
        return n

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _statutory_workday(day: date) -> bool | None:
        if _statutory is None:
            return None
        try:
            return bool(_statutory.is_workday(day))
        except NotImplementedError:  # year outside the package's data
            return None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> HolidayCalendar:
        """Read an override file.

        Raises:
            CalendarError: naming the file and key on any problem.
        """
        source = str(path)
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CalendarError(f"{source}: cannot read calendar: {exc}") from None
        return cls.from_mapping(doc, source)

    @classmethod
    def from_mapping(cls, doc: Any, source: str = "<calendar>") -> HolidayCalendar:
        """Build from an already-parsed override document (see the module docstring)."""
        if not isinstance(doc, dict):
            raise CalendarError(f"{source}: expected a mapping with holidays/workdays/school_terms/school_breaks")
        unknown = set(doc) - {"holidays", "workdays", "school_terms", "school_breaks"}
        if unknown:
            raise CalendarError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        terms = []
        for i, raw in enumerate(doc.get("school_terms") or []):
            where = f"{source}: school_terms[{i}]"
            if not isinstance(raw, dict) or set(raw) - {"name", "from", "until"} or not {"from", "until"} <= set(raw):
                raise CalendarError(f"{where}: expected {{name, from, until}}")
            start, end = _day(raw["from"], f"{where}.from"), _day(raw["until"], f"{where}.until")
            if end < start:
                raise CalendarError(f"{where}: until is before from")
            terms.append(SchoolTerm(str(raw.get("name", f"term {i + 1}")), start, end))
        holidays = _days(doc.get("holidays"), f"{source}: holidays")
        workdays = _days(doc.get("workdays"), f"{source}: workdays")
        both = holidays & workdays
        if both:
            raise CalendarError(f"{source}: {min(both).isoformat()} is listed both as a holiday and a workday")
        return cls(holidays=holidays, workdays=workdays, school_terms=tuple(terms),
                   school_breaks=_days(doc.get("school_breaks"), f"{source}: school_breaks"), source=source)


def _day(value: Any, where: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise CalendarError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _days(values: Any, where: str) -> frozenset[date]:
    """Dates and inclusive ``A..B`` ranges."""
    if values is None:
        return frozenset()
    if not isinstance(values, list):
        raise CalendarError(f"{where}: expected a list of dates or 'YYYY-MM-DD..YYYY-MM-DD' ranges")
    out: set[date] = set()
    for item in values:
        if isinstance(item, str) and ".." in item:
            a, b = item.split("..", 1)
            start, end = _day(a, where), _day(b, where)
            if end < start or (end - start).days > 366:
                raise CalendarError(f"{where}: bad range {item!r}")
            out.update(start + timedelta(days=i) for i in range((end - start).days + 1))
        else:
            out.add(_day(item, where))
    return frozenset(out)


_lock = threading.Lock()
_current = HolidayCalendar()


def current_calendar() -> HolidayCalendar:
    """The calendar schedules consult (statutory only until :func:`install_calendar`)."""
    return _current


def install_calendar(calendar: HolidayCalendar) -> HolidayCalendar:
    """Make ``calendar`` the one schedules consult; returns the previous one (for tests and reloads)."""
    global _current
    with _lock:
        previous, _current = _current, calendar
    return previous


DAY_FILTERS = ("any", "workdays", "rest_days", "school_days", "non_school_days")
"""Values of a schedule's ``days:`` key."""


def day_matches(filter_name: str, day: date, calendar: HolidayCalendar | None = None) -> bool:
    """Whether ``day`` passes a schedule's ``days:`` filter."""
    cal = calendar or _current
    if filter_name == "any":
        return True
    if filter_name == "workdays":
        return cal.is_workday(day)
    if filter_name == "rest_days":
        return cal.is_rest_day(day)
    if filter_name == "school_days":
        return cal.is_school_day(day)
    if filter_name == "non_school_days":
        return not cal.is_school_day(day)
    raise ValueError(f"unknown day filter {filter_name!r} (known: {', '.join(DAY_FILTERS)})")


def years_missing(calendar: HolidayCalendar, years: Iterable[int]) -> list[int]:
    """Years whose statutory arrangement the calendar lacks (for start-up warnings and `vigil config check`)."""
    return [y for y in years if not calendar.covers(y)]
