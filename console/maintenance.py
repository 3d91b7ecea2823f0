"""The body of ``POST /api/maintenance`` (a recurring maintenance window) read and checked, and its JSON form.

The alerting desk checks the role, the matchers, the zone, the date and name uniqueness; this reads the
HTTP body's types and turns the page's start and end times into a duration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from console.params import ApiError, text_field

_HHMM = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True, slots=True)
class WindowRequest:
    """A new window as asked for: ``duration_min`` from ``end`` (an end before the start spans midnight)."""

    name: str
    matchers: list[str]
    weekdays: list[int]
    start: str
    duration_min: float
    timezone: str
    until: str | None
    comment: str


def _minute_of(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def window_request(body: dict[str, Any], default_zone: str) -> WindowRequest:
    """Read ``name, matchers, weekdays, start, end | duration_min, timezone, until, comment``. Raises ``ApiError``."""
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) and len(m) <= 500 for m in matchers) \
            or len(matchers) > 50:
        raise ApiError(400, "invalid", "matchers must be a list (at most 50) of strings like 'site=tower-a'")
    weekdays = body.get("weekdays")
    if not isinstance(weekdays, list) or len(weekdays) > 7 \
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in weekdays):
        raise ApiError(400, "invalid", "weekdays must be a list of 0 (Monday) .. 6 (Sunday)")
    start, end = body.get("start"), body.get("end")
    if not isinstance(start, str) or not _HHMM.fullmatch(start) or not (
            end is None or end == "" or (isinstance(end, str) and _HHMM.fullmatch(end))):
        raise ApiError(400, "invalid", "start and end must be HH:MM (00:00 .. 23:59)")
    if end:
        minutes = float((_minute_of(end) - _minute_of(start)) % 1440 or 1440)
    else:
        raw = body.get("duration_min")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ApiError(400, "invalid", "give end (HH:MM) or duration_min")
        minutes = float(raw)
    return WindowRequest(name=text_field(body, "name", 100), matchers=[m.strip() for m in matchers if m.strip()],
                         weekdays=list(weekdays), start=start, duration_min=minutes,
                         timezone=text_field(body, "timezone", 64) or default_zone,
                         until=text_field(body, "until", 40) or None, comment=text_field(body, "comment", 1000))


def maintenance_json(m: msgspec.Struct) -> dict[str, Any]:
    """A run-time window (``alerting.muting.MaintenanceEntry``) for API answers: all its fields."""
    out: dict[str, Any] = msgspec.to_builtins(m)
    return out
