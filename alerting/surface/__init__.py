"""Alerting's public surface: the only alerting module other stages (the console) import.

``AlertingSurface`` answers typed queries and runs the desk's commands on a running alerting
service; the names re-exported here are the types those queries and commands take and return, the
exception family (``AlertingError`` > ``DeskError`` > ``NotFound`` / ``Invalid`` / ``Forbidden`` /
``Conflict``, plus ``EvidenceRefused`` and ``AlertingUnavailable``), the shared HTTP input checks,
and the pieces of access control and evidence policy the console applies with alerting's users.
"""

from alerting.access import GuessLimiter, TokenBook, digest
from alerting.config import AlertingConfig, EscalationPolicy, Person, Roster, User
from alerting.desk import (
    ROLE_RANK,
    Actor,
    Conflict,
    DeskError,
    Forbidden,
    Invalid,
    MaintenanceWindowView,
    NotFound,
    make_actor,
)
from alerting.errors import AlertingError
from alerting.evidence import EvidenceConfig, EvidencePolicy, EvidenceRefused, Snapshot
from alerting.inbox import NotificationInbox
from alerting.lifecycle import SEVERITY_RANK, AlertRecord, AuditEvent
from alerting.muting import MaintenanceEntry, MuteReason, SilenceEntry
from alerting.roster import OverrideEntry
from alerting.store import NotificationRow
from alerting.surface.core import AlertingSurface, AlertingUnavailable, as_json, iso
from alerting.surface.params import ID_RE, json_body, parse_time, query_int, query_text, strict_json
from alerting.surface.views import (
    FILTER_COLUMNS,
    MAX_LIMIT,
    NOTIFICATION_STATUSES,
    STATUSES,
    AlertQuery,
    DeliveryAttempt,
    DutyShift,
    EscalationStepView,
    EscalationView,
    NotificationQuery,
    UpcomingShift,
)
from alerting.workorders.desk import WorkOrderDesk, photo_type

__all__ = [
    "FILTER_COLUMNS", "ID_RE", "MAX_LIMIT", "NOTIFICATION_STATUSES", "ROLE_RANK", "SEVERITY_RANK", "STATUSES",
    "Actor", "AlertQuery", "AlertRecord", "AlertingConfig", "AlertingError", "AlertingSurface",
    "AlertingUnavailable", "AuditEvent", "Conflict", "DeliveryAttempt", "DeskError", "DutyShift", "EscalationPolicy",
    "EscalationStepView", "EscalationView", "EvidenceConfig", "EvidencePolicy", "EvidenceRefused", "Forbidden",
    "GuessLimiter", "Invalid", "MaintenanceEntry", "MaintenanceWindowView", "MuteReason", "NotFound", "NotificationInbox",
    "NotificationQuery", "NotificationRow", "OverrideEntry", "Person", "Roster", "SilenceEntry", "Snapshot",
    "TokenBook", "UpcomingShift", "User", "WorkOrderDesk", "as_json", "digest", "iso", "json_body", "make_actor",
    "parse_time", "photo_type", "query_int", "query_text", "strict_json",
]
