"""Typed queries and results of alerting's public surface (frozen dataclasses; alerts are ``AlertRecord``)."""

from __future__ import annotations

from dataclasses import dataclass

from alerting.desk import Invalid
from alerting.lifecycle import AlertRecord

STATUSES = ("firing", "acknowledged", "resolved")
OPEN_STATUSES = ("firing", "acknowledged")
SEVERITIES = ("info", "warning", "major", "critical")
FILTER_COLUMNS = ("kind", "site", "unit", "industry", "severity", "device_id")
"""Alert columns a query filters on (``unit`` is the assigned unit, else the site's)."""
NOTIFICATION_STATUSES = ("pending", "sending", "sent", "dead", "digested")
MAX_LIMIT = 5000


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Which alerts: statuses (none: all), start time in [since, until), column filters, one page, newest first.

    Raises ``Invalid`` on construction for an unknown status, filter column or severity, or a bad page.
    """

    status: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    filters: tuple[tuple[str, str], ...] = ()
    limit: int = 200
    offset: int = 0

    def __post_init__(self) -> None:
        if not set(self.status) <= set(STATUSES):
            raise Invalid(f"status is a comma-separated list of {', '.join(STATUSES)}")
        for col, val in self.filters:
            if col not in FILTER_COLUMNS:
                raise Invalid(f"unknown filter {col!r} (one of {', '.join(FILTER_COLUMNS)})")
            if col == "severity" and val not in SEVERITIES:
                raise Invalid("severity must be info, warning, major or critical")
        if not 1 <= self.limit <= MAX_LIMIT or not 0 <= self.offset <= 1_000_000:
            raise Invalid(f"limit must be 1 .. {MAX_LIMIT} and offset 0 .. 1000000")

    @property
    def open_only(self) -> bool:
        """Whether only open alerts with no time window are asked for (answered from memory)."""
        return bool(self.status) and set(self.status) <= set(OPEN_STATUSES) and self.since is None \
            and self.until is None


@dataclass(frozen=True, slots=True)
class NotificationQuery:
    """Which notifications of the log: a delivery status (``dead``: the dead letters), one alert's, how many."""

    status: str | None = None
    alert_id: str | None = None
    limit: int = 200

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in NOTIFICATION_STATUSES:
            raise Invalid(f"status must be one of {', '.join(NOTIFICATION_STATUSES)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise Invalid(f"limit must be 1 .. {MAX_LIMIT}")


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One try to deliver a notification on one channel (masked)."""

    ts: float
    channel: str
    attempt: int
    ok: bool
    error: str | None
    elapsed_ms: float | None


@dataclass(frozen=True, slots=True)
class DutyShift:
    """Who is on duty in one roster now (or at the asked time), and from / until when."""

    roster: str
    role: str
    unit: str
    person: str
    name: str
    starts_at: float
    ends_at: float
    override: str | None
    """The id of the override that put this person there, None for the rotation."""


@dataclass(frozen=True, slots=True)
class UpcomingShift:
    """One of a roster's coming shifts."""

    person: str
    name: str
    starts_at: float
    ends_at: float
    override: str | None


@dataclass(frozen=True, slots=True)
class EscalationStepView:
    """One rung of an alert's escalation: when it is due and whether it is done."""

    delay_s: float
    targets: tuple[str, ...]
    at: float
    done: bool


@dataclass(frozen=True, slots=True)
class EscalationView:
    """A firing alert climbing its escalation policy."""

    alert: AlertRecord
    policy: str
    steps: tuple[EscalationStepView, ...]
    repeats: int
