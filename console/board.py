"""The live alert board's query: filter, sort and page open alerts in memory (pure).

Open alerts live in the alerting stage's memory, so filtering 10,000 of them is a list
comprehension, not a database query; resolved history goes to the alert store (see
``ConsoleService.board``). Filters are single values per column, as the board's drop-downs are.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alerting.surface import SEVERITY_RANK, AlertRecord
from broker.contracts import AlertStatus, Severity
from console.errors import ConsoleError

FILTER_COLUMNS = ("industry", "site", "unit", "kind", "severity", "device_id")
STATUS_SETS: dict[str, tuple[str, ...]] = {
    "open": ("firing", "acknowledged"),
    "firing": ("firing",),
    "acknowledged": ("acknowledged",),
    "resolved": ("resolved",),
    "all": ("firing", "acknowledged", "resolved"),
}
SORTS = ("newest", "oldest", "severity", "deadline")
FACETS = ("severity", "status", "industry", "site", "unit", "kind")


class BoardQueryError(ConsoleError, ValueError):
    """A board query parameter is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class BoardQuery:
    """What the board asks for."""

    status: str = "open"
    filters: tuple[tuple[str, str], ...] = ()
    text: str = ""
    sort: str = "newest"
    offset: int = 0
    limit: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str], max_limit: int = 500) -> BoardQuery:
        """Build a query from URL parameters.

        Raises:
            BoardQueryError: naming the bad parameter.
        """
        status = params.get("status") or "open"
        if status not in STATUS_SETS:
            raise BoardQueryError(f"status must be one of {', '.join(STATUS_SETS)}")
        sort = params.get("sort") or "newest"
        if sort not in SORTS:
            raise BoardQueryError(f"sort must be one of {', '.join(SORTS)}")
        try:
            offset = int(params.get("offset") or 0)
            limit = int(params.get("limit") or 50)
        except ValueError:
            raise BoardQueryError("offset and limit must be integers") from None
        if offset < 0 or not 1 <= limit <= max_limit:
            raise BoardQueryError(f"offset >= 0 and 1 <= limit <= {max_limit}")
        filters = tuple((c, params[c]) for c in FILTER_COLUMNS if params.get(c))
        return cls(status, filters, (params.get("q") or "").strip().lower()[:200], sort, offset, limit)

    @property
    def statuses(self) -> tuple[str, ...]:
        """The alert states this query covers."""
        return STATUS_SETS[self.status]

    @property
    def in_memory(self) -> bool:
        """Whether only open alerts are asked for (answered from memory)."""
        return "resolved" not in self.statuses


def column(rec: AlertRecord, col: str) -> str:
    """A record's value for a filter or facet column."""
    if col == "unit":
        return rec.assigned_unit or rec.unit
    if col in ("severity", "status", "kind"):
        return str(getattr(rec, col).value)
    return str(getattr(rec, col, "") or "")


def matches_text(rec: AlertRecord, text: str) -> bool:
    """Whether the lower-cased text occurs in the alert's summary, device, site, id, rule or assignee."""
    return any(text in (v or "").lower() for v in (rec.summary, rec.summary_en, rec.device_id, rec.site, rec.id,
                                                   rec.rule, rec.assignee))


def sort_key(sort: str) -> tuple[Callable[[AlertRecord], Any], bool]:
    """Key function and reverse flag for a sort name."""
    if sort == "oldest":
        return (lambda r: r.starts_at), False
    if sort == "severity":
        return (lambda r: (SEVERITY_RANK[r.severity], r.status.value == "firing", r.starts_at)), True
    if sort == "deadline":
        return (lambda r: (r.ack_by if r.status.value == "firing" and r.ack_by else r.resolve_by or 9e18)), False
    return (lambda r: r.starts_at), True


def select(records: Iterable[AlertRecord], q: BoardQuery) -> tuple[int, list[AlertRecord]]:
    """The total matching and the requested page of records."""
    statuses = q.statuses
    recs = [r for r in records if r.status.value in statuses]
    for col, val in q.filters:
        recs = [r for r in recs if column(r, col) == val]
    if q.text:
        recs = [r for r in recs if matches_text(r, q.text)]
    key, reverse = sort_key(q.sort)
    recs.sort(key=key, reverse=reverse)
    return len(recs), recs[q.offset:q.offset + q.limit]


def facets(records: Iterable[AlertRecord]) -> dict[str, dict[str, int]]:
    """Counts per value of each facet column (the board's drop-downs and badges)."""
    recs = list(records)
    # Count the raw attribute values (enum members, strings) and convert once: far cheaper than per-record work.
    sev: Counter[Severity] = Counter(r.severity for r in recs)
    status: Counter[AlertStatus] = Counter(r.status for r in recs)
    kind = Counter(r.kind for r in recs)
    return {
        "severity": {k.value: v for k, v in sev.items()},
        "status": {k.value: v for k, v in status.items()},
        "industry": dict(Counter(r.industry or "" for r in recs)),
        "site": dict(Counter(r.site or "" for r in recs)),
        "unit": dict(Counter(r.assigned_unit or r.unit for r in recs)),
        "kind": {k.value: v for k, v in kind.items()},
    }


def critical_unacknowledged(records: Iterable[AlertRecord], limit: int = 50) -> list[AlertRecord]:
    """Firing critical alerts nobody has taken yet (the banner and the sound), newest first, at most ``limit``."""
    crit = [r for r in records if r.severity is Severity.CRITICAL and r.status is AlertStatus.FIRING]
    return heapq.nlargest(limit, crit, key=lambda r: r.starts_at)
