"""The muting stage: silences, maintenance windows and inhibition behind one interface.

A muted alert stays visible and keeps its lifecycle; only its notifications are held back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import msgspec

from alerting.config import InhibitRule, MaintenanceWindow
from alerting.router import Matcher, match_all, parse_matchers


@dataclass(frozen=True, slots=True)
class MuteReason:
    """Why an alert is muted: ``silence``, ``maintenance`` or ``inhibition``, and by what."""

    kind: str
    id: str


class MuteStage(Protocol):
    """Something that may mute an alert at a time."""

    def mute_reason(self, alert_id: str, labels: Mapping[str, str], now: float) -> MuteReason | None:
        """The reason the alert is muted at ``now``, or None."""
        ...


class SilenceEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An ad hoc silence: matchers, validity period, author and comment."""

    id: str
    matchers: list[str]
    starts_at: float
    ends_at: float
    author: str
    comment: str = ""
    created_at: float = 0.0

    def active(self, now: float) -> bool:
        """Whether the silence is in force at ``now``."""
        return self.starts_at <= now < self.ends_at


@dataclass
class SilenceSet:
    """The silences in force or scheduled.

    Silences with an equality matcher are indexed by that (label, value), so a check looks only at
    the silences that can match; the others are scanned.
    """

    entries: dict[str, SilenceEntry] = field(default_factory=dict)
    _parsed: dict[str, tuple[Matcher, ...]] = field(default_factory=dict)
    _by_eq: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _scan: set[str] = field(default_factory=set)
    _index_key: dict[str, tuple[str, str] | None] = field(default_factory=dict)

    def put(self, s: SilenceEntry) -> None:
        """Add or replace a silence. Raises ``MatcherError`` for bad matchers."""
        parsed = parse_matchers(s.matchers)
        self.remove(s.id)
        self.entries[s.id] = s
        self._parsed[s.id] = parsed
        eq = next((m for m in parsed if m.op == "=" and m.value), None)
        if eq is None:
            self._scan.add(s.id)
            self._index_key[s.id] = None
        else:
            self._by_eq.setdefault((eq.name, eq.value), set()).add(s.id)
            self._index_key[s.id] = (eq.name, eq.value)

    def remove(self, sid: str) -> SilenceEntry | None:
        """Delete a silence."""
        self._parsed.pop(sid, None)
        key = self._index_key.pop(sid, None)
        self._scan.discard(sid)
        if key is not None:
            ids = self._by_eq.get(key)
            if ids is not None:
                ids.discard(sid)
                if not ids:
                    del self._by_eq[key]
        return self.entries.pop(sid, None)

    def expired(self, now: float) -> list[str]:
        """Ids of silences that ended."""
        return [sid for sid, s in self.entries.items() if s.ends_at <= now]

    def mute_reason(self, alert_id: str, labels: Mapping[str, str], now: float) -> MuteReason | None:
        """The first active silence matching the labels."""
        if not self.entries:
            return None
        candidates: list[str] = list(self._scan)
        for item in labels.items():
            ids = self._by_eq.get(item)
            if ids:
                candidates.extend(ids)
        for sid in sorted(candidates):
            s = self.entries[sid]
            if s.active(now) and match_all(self._parsed[sid], labels):
                return MuteReason("silence", sid)
        return None


def _parse_hhmm(text: str) -> tuple[int, int]:
    h, _, m = text.partition(":")
    return int(h), int(m or 0)


class MaintenanceEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A recurring maintenance window created at run time (by a supervisor, from the console or a script)."""

    id: str
    name: str
    matchers: list[str]
    start: str
    duration_min: float
    weekdays: list[int]
    timezone: str = "Asia/Shanghai"
    until: str | None = None
    """Last local date (``YYYY-MM-DD``) on which an occurrence starts; None = no end."""
    author: str = ""
    comment: str = ""
    created_at: float = 0.0


Window = MaintenanceWindow | MaintenanceEntry


def until_ts(until: str | None, tz: ZoneInfo) -> float | None:
    """The instant after which no occurrence starts: the local midnight ending the ``until`` date."""
    if not until:
        return None
    d = date.fromisoformat(until)
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() + 86400.0


class MaintenanceCalendar:
    """Recurring maintenance windows (by site or device) in local time: the config file's and run-time ones."""

    def __init__(self, windows: list[MaintenanceWindow]) -> None:
        self.windows: list[tuple[Window, tuple[Matcher, ...], ZoneInfo, tuple[int, int], float | None]] = [
            (w, parse_matchers(w.matchers), ZoneInfo(w.timezone), _parse_hhmm(w.start), None) for w in windows]
        self.entries: dict[str, MaintenanceEntry] = {}

    def put(self, e: MaintenanceEntry) -> None:
        """Add or replace a run-time window. Raises ``MatcherError``, ``ValueError`` (time, date) or
        ``ZoneInfoNotFoundError``."""
        tz = ZoneInfo(e.timezone)
        row = (e, parse_matchers(e.matchers), tz, _parse_hhmm(e.start), until_ts(e.until, tz))
        self.remove(e.id)
        self.entries[e.id] = e
        self.windows.append(row)

    def remove(self, wid: str) -> MaintenanceEntry | None:
        """Delete a run-time window."""
        old = self.entries.pop(wid, None)
        if old is not None:
            self.windows = [r for r in self.windows if r[0] is not old]
        return old

    def expired(self, now: float) -> list[str]:
        """Ids of run-time windows whose last occurrence is over."""
        out = []
        for w, _m, _tz, _hm, end in self.windows:
            if isinstance(w, MaintenanceEntry) and end is not None and end + w.duration_min * 60 <= now:
                out.append(w.id)
        return out

    @staticmethod
    def in_window(w: Window, tz: ZoneInfo, hm: tuple[int, int], now: float, until: float | None = None) -> bool:
        """Whether ``now`` falls inside an occurrence of the window (one may span midnight).

        With ``until``, occurrences starting at or after it do not count.
        """
        local = datetime.fromtimestamp(now, tz)
        for back in (0, 1, 2, 3, 4, 5, 6, 7):
            day = (local - timedelta(days=back)).date()
            if day.weekday() not in w.weekdays:
                continue
            start = datetime(day.year, day.month, day.day, hm[0], hm[1], tzinfo=tz)
            if start.timestamp() <= now < start.timestamp() + w.duration_min * 60 and (
                    until is None or start.timestamp() < until):
                return True
            if back * 86400 > w.duration_min * 60 + 86400:
                break
        return False

    def mute_reason(self, alert_id: str, labels: Mapping[str, str], now: float) -> MuteReason | None:
        """The first window matching the labels and open at ``now``."""
        for w, matchers, tz, hm, until in self.windows:
            if match_all(matchers, labels) and self.in_window(w, tz, hm, now, until):
                return MuteReason("maintenance", w.name)
        return None


class Inhibitor:
    """Inhibition: an open source alert mutes target alerts sharing the ``equal`` labels.

    The index of source alerts is kept incrementally, so a check is one dictionary look-up per rule.
    """

    def __init__(self, rules: list[InhibitRule]) -> None:
        self.rules = [(r, parse_matchers(r.source), parse_matchers(r.target)) for r in rules]
        self._sources: list[dict[tuple[str, ...], set[str]]] = [{} for _ in rules]
        self._where: dict[str, list[tuple[int, tuple[str, ...]]]] = {}

    def update(self, alert_id: str, labels: Mapping[str, str], is_open: bool) -> None:
        """Track an alert as a possible inhibition source (or drop it when it closes)."""
        for i, key in self._where.pop(alert_id, []):
            members = self._sources[i].get(key)
            if members is not None:
                members.discard(alert_id)
                if not members:
                    del self._sources[i][key]
        if not is_open:
            return
        spots: list[tuple[int, tuple[str, ...]]] = []
        for i, (rule, src, _tgt) in enumerate(self.rules):
            if match_all(src, labels):
                key = tuple(labels.get(e, "") for e in rule.equal)
                self._sources[i].setdefault(key, set()).add(alert_id)
                spots.append((i, key))
        if spots:
            self._where[alert_id] = spots

    def mute_reason(self, alert_id: str, labels: Mapping[str, str], now: float) -> MuteReason | None:
        """The first rule whose source fires for an alert with these labels."""
        for i, (rule, _src, tgt) in enumerate(self.rules):
            if not self._sources[i] or not match_all(tgt, labels):
                continue
            members = self._sources[i].get(tuple(labels.get(e, "") for e in rule.equal))
            if members and (len(members) > 1 or alert_id not in members):
                return MuteReason("inhibition", rule.name)
        return None


class Muter:
    """The single muting stage: asks each stage in turn (silences, maintenance, inhibition)."""

    def __init__(self, *stages: MuteStage) -> None:
        self.stages = stages

    def mute_reason(self, alert_id: str, labels: Mapping[str, str], now: float) -> MuteReason | None:
        """The first reason any stage gives, or None."""
        for st in self.stages:
            r = st.mute_reason(alert_id, labels, now)
            if r is not None:
                return r
        return None
