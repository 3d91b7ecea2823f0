"""Configuration of the alerting stage (the ``alerting:`` key of Vigil's config file).

Every default works for the demo: one catch-all route to the on-duty operator with the
"135" escalation ladder for critical alerts, deadlines by severity, the HTTP API on
127.0.0.1:8085. Apprise URLs are secrets: they are masked wherever they are shown.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from alerting.errors import AlertingError
from alerting.evidence import EvidenceConfig
from alerting.workorders.model import OrderPolicy, default_policies

Locale = Literal["zh", "en"]
UserRole = Literal["grid_staff", "operator", "supervisor", "admin"]
"""``grid_staff``: field staff bound to ``User.grids``; they see and act only on their grids' work orders."""


class Receiver(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A static destination (a WeCom group bot, a webhook): channels tried in order."""

    name: str
    urls: list[str]
    locale: Locale | None = None


class Person(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Someone who may be notified; ``channels`` are Apprise URLs, tried in order (failover)."""

    id: str
    name: str = ""
    channels: list[str] = []
    roles: list[str] = []
    unit: str = ""
    locale: Locale | None = None


class Roster(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rotation of people filling one role for one unit.

    ``rotation``: ``shift`` hands over at every time in ``handovers`` each day, ``daily`` at
    the first handover time each day, ``weekly`` at the first handover time on ``anchor``'s
    weekday. ``anchor`` (local date) is when ``members[0]`` starts.
    """

    name: str
    role: str
    members: list[str]
    unit: str = ""
    rotation: Literal["shift", "daily", "weekly"] = "daily"
    handovers: list[str] = msgspec.field(default_factory=lambda: ["08:00"])
    anchor: str = "2026-01-05"
    timezone: str = "Asia/Shanghai"


class RosterOverride(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Someone else covers a roster for a period (a swap, a sick day); RFC 3339 times."""

    roster: str
    person: str
    starts_at: str
    ends_at: str
    reason: str = ""


class EscalationStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One rung: after ``delay_s`` without acknowledgement, notify ``targets``.

    Targets: ``person:ID``, ``role:NAME`` (on duty now for the alert's unit), ``roster:NAME``,
    ``receiver:NAME``.
    """

    delay_s: float
    targets: list[str]


class EscalationPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ordered steps; stops when acknowledged; ``repeat_s`` repeats the last step until then."""

    name: str
    steps: list[EscalationStep]
    repeat_s: float | None = None


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"continue_": "continue"}):
    """A node of the routing tree; unset timing fields inherit from the parent.

    ``matchers`` are ``label=value``, ``label!=value``, ``label=~regex``, ``label!~regex``.
    """

    name: str = ""
    matchers: list[str] = []
    receivers: list[str] = []
    escalation: str | None = None
    group_by: list[str] | None = None
    group_wait_s: float | None = None
    group_interval_s: float | None = None
    repeat_interval_s: float | None = None
    send_resolved: bool | None = None
    continue_: bool = False
    routes: list[Route] = []


class Silence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A silence given in the config file (the API creates more at run time)."""

    matchers: list[str]
    starts_at: str
    ends_at: str
    author: str = "config"
    comment: str = ""


class MaintenanceWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A recurring window muting notifications for matching alerts (local time of ``timezone``)."""

    name: str
    matchers: list[str]
    start: str = "02:00"
    duration_min: float = 60.0
    weekdays: list[int] = msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    """0 = Monday."""
    timezone: str = "Asia/Shanghai"


class InhibitRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """While a ``source`` alert fires, ``target`` alerts with the same ``equal`` labels are muted."""

    name: str
    source: list[str]
    target: list[str]
    equal: list[str] = []


class User(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An API user: a bearer token (or the name of an environment variable holding it) and a role."""

    name: str
    role: UserRole = "operator"
    token: str | None = msgspec.field(default=None)
    token_env: str | None = None
    unit: str = ""
    grids: list[str] = []
    """For ``grid_staff``: the grids (``alerting.workorders.grids_file`` ids) whose cases they handle."""


class WorkOrdersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Work orders (``alerting.workorders``): every new case is dispatched to its grid and followed to closure."""

    enabled: bool = False
    grids_file: str | None = None
    """GeoJSON FeatureCollection of grid polygons (``alerting.grids``); reloaded when it changes."""
    grids_check_s: float = 5.0
    policies: list[OrderPolicy] = msgspec.field(default_factory=default_policies)
    """Milestone time limits by category and severity; the first match wins ("135" for critical cases)."""
    arrive_max_m: float = 300.0
    """How far from the case's location an "on site" report may be."""
    arrive_mode: Literal["refuse", "flag"] = "flag"
    """Farther than ``arrive_max_m``: refuse the report, or accept it flagged for the centre."""
    photo_max_bytes: int = 5 * 1024 * 1024
    photos_dir: str | None = None
    """Where field photos are stored (default: ``<evidence.dir>/workorders``, else the state folder)."""
    calendar_file: str | None = None
    """Holiday override file for working-day limits (``broker.calendar``); the statutory calendar otherwise."""
    page_url: str | None = None
    """The phone page's address in notifications (default ``<console_url>/h5/``)."""

    def __post_init__(self) -> None:
        if not 1024 <= self.photo_max_bytes <= 32 * 1024 * 1024:
            raise ValueError("workorders.photo_max_bytes must be 1024 .. 33554432")
        if not self.arrive_max_m > 0 or not self.grids_check_s > 0:
            raise ValueError("workorders.arrive_max_m and grids_check_s must be > 0")


class CategoryDeadline(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Time limits for one alert category, overriding those of the severity where set."""

    ack_s: float | None = None
    resolve_s: float | None = None


class Deadlines(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Handling time limits in seconds by severity (acknowledge-by, resolve-by), and by alert category."""

    ack_s: dict[str, float] = msgspec.field(default_factory=lambda: {
        "critical": 60.0, "major": 300.0, "warning": 1800.0, "info": 7200.0})
    resolve_s: dict[str, float] = msgspec.field(default_factory=lambda: {
        "critical": 1800.0, "major": 4 * 3600.0, "warning": 24 * 3600.0, "info": 72 * 3600.0})
    categories: dict[str, CategoryDeadline] = msgspec.field(default_factory=lambda: {
        "rescue": CategoryDeadline(resolve_s=1800.0)})
    """By the rule label ``category``. ``rescue`` (trapped passengers, alarm button) is the rescue clock:
    most cities require the rescuer on site and the passengers out within 30 minutes; an alert still
    open then is resolve-overdue and escalates. Set ``rescue: {resolve_s: 1200}`` for a stricter city."""


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Delivery retries per channel with jittered exponential backoff."""

    attempts: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 15.0


class Storm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Above ``max_per_minute`` notifications to one recipient, send one digest per ``digest_s``."""

    max_per_minute: int = 20
    digest_s: float = 60.0


class ApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP API for the console and other systems."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8085
    auth_failures: int = 10
    """Failed bearer tokens allowed per client address within ``auth_window_s`` before it gets 429."""
    auth_window_s: float = 300.0
    auth_failures_global: int = 200
    """Failed bearer tokens of all clients together within ``auth_window_s`` before every request gets 429."""
    max_body_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.auth_failures < 1 or self.auth_failures_global < self.auth_failures or self.auth_window_s <= 0:
            raise ValueError("api: auth_failures >= 1, auth_failures_global >= auth_failures, auth_window_s > 0")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ValueError("api.max_body_bytes must be 1024 .. 16777216")


def _default_receivers() -> list[Receiver]:
    return [Receiver(name="console-log", urls=["json://127.0.0.1:8086/vigil/notifications"])]


def _default_people() -> list[Person]:
    return [
        Person(id="operator", name="值班员", roles=["operator"], channels=[]),
        Person(id="shift-lead", name="值班长", roles=["shift_lead"], channels=[]),
        Person(id="duty-chief", name="值班主任", roles=["duty_chief"], channels=[]),
        Person(id="unit-head", name="单位负责人", roles=["unit_head"], channels=[]),
    ]


def _default_policies() -> list[EscalationPolicy]:
    return [EscalationPolicy(
        name="135",
        steps=[
            EscalationStep(delay_s=0.0, targets=["role:operator"]),
            EscalationStep(delay_s=60.0, targets=["role:shift_lead"]),
            EscalationStep(delay_s=180.0, targets=["role:duty_chief"]),
            EscalationStep(delay_s=300.0, targets=["role:unit_head"]),
        ],
        repeat_s=60.0,
    ), EscalationPolicy(name="standard", steps=[
        EscalationStep(delay_s=0.0, targets=["role:operator"]),
        EscalationStep(delay_s=900.0, targets=["role:shift_lead"]),
    ])]


def _default_route() -> Route:
    return Route(
        name="root", receivers=["console-log"], escalation="standard",
        group_by=["rule", "site"], group_wait_s=0.0, group_interval_s=30.0, repeat_interval_s=4 * 3600.0,
        send_resolved=True,
        routes=[Route(name="critical", matchers=["severity=critical"], escalation="135", repeat_interval_s=600.0)],
    )


def _default_inhibit() -> list[InhibitRule]:
    return [
        InhibitRule(name="site-power-mutes-elevators", source=["rule=site_power_failure"],
                    target=["kind=elevator"], equal=["site"]),
        InhibitRule(name="offline-device-mutes-its-alerts", source=["rule=device_offline"],
                    target=["rule!=device_offline"], equal=["device_id"]),
    ]


class AlertingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``alerting:`` section."""

    receivers: list[Receiver] = msgspec.field(default_factory=_default_receivers)
    people: list[Person] = msgspec.field(default_factory=_default_people)
    rosters: list[Roster] = []
    overrides: list[RosterOverride] = []
    escalation_policies: list[EscalationPolicy] = msgspec.field(default_factory=_default_policies)
    route: Route = msgspec.field(default_factory=_default_route)
    silences: list[Silence] = []
    maintenance: list[MaintenanceWindow] = []
    inhibit_rules: list[InhibitRule] = msgspec.field(default_factory=_default_inhibit)
    users: list[User] = msgspec.field(default_factory=lambda: [
        User(name="admin", role="admin", token_env="VIGIL_ALERTING_TOKEN")])
    deadlines: Deadlines = Deadlines()
    retry: Retry = Retry()
    storm: Storm = Storm()
    api: ApiConfig = ApiConfig()
    reopen_window_s: float = 300.0
    """A rule firing again within this time after resolution reopens the same alert."""
    locale: Locale = "zh"
    timezone: str = "Asia/Shanghai"
    console_url: str = "http://127.0.0.1:8080"
    templates: dict[str, dict[str, str]] = {}
    """Per locale: ``line`` (one alert; fields sev, summary, device_id, site, unit, starts, ack_by, link) and
    titles by kind (firing, resolved, repeat, escalation, overdue, digest)."""
    attach_snapshots: bool = True
    evidence: EvidenceConfig = EvidenceConfig()
    """Where snapshots may be read from: the evidence store and allow-listed camera-agent hosts."""
    workorders: WorkOrdersConfig = WorkOrdersConfig()
    sender_threads: int = 8
    sender_concurrency: int = 16
    queue_size: int = 10000
    tick_s: float = 1.0
    notification_log_keep: int = 200000


class AlertingConfigError(AlertingError, ValueError):
    """The alerting configuration is invalid; the message names the key."""


def load_config(raw: Any, source: str = "alerting") -> AlertingConfig:
    """Validate an already-parsed ``alerting:`` mapping.

    Raises:
        AlertingConfigError: naming the source and the offending key.
    """
    try:
        cfg = msgspec.convert(raw or {}, AlertingConfig)
    except msgspec.ValidationError as exc:
        raise AlertingConfigError(f"{source}: {exc}") from None
    check_config(cfg, source)
    return cfg


def check_config(cfg: AlertingConfig, source: str = "alerting") -> None:
    """Cross-check names (receivers, policies, people, rosters).

    Raises:
        AlertingConfigError: naming the offending key.
    """
    receivers = {r.name for r in cfg.receivers}
    policies = {p.name for p in cfg.escalation_policies}
    people = {p.id for p in cfg.people}
    rosters = {r.name for r in cfg.rosters}

    def check_target(t: str, where: str) -> None:
        kind, _, name = t.partition(":")
        ok = {"person": people, "receiver": receivers, "roster": rosters}.get(kind)
        if kind == "role" or t in ("grid:staff", "grid:duty"):  # resolved per alert (its unit, its grid)
            return
        if ok is None:
            raise AlertingConfigError(f"{source}: {where}: target {t!r} must be person:/role:/roster:/receiver:")
        if name not in ok:
            raise AlertingConfigError(f"{source}: {where}: unknown {kind} {name!r}")

    def walk(route: Route, where: str) -> None:
        for name in route.receivers:
            if name not in receivers and ":" not in name:
                raise AlertingConfigError(f"{source}: {where}.receivers: unknown receiver {name!r}")
            if ":" in name:
                check_target(name, f"{where}.receivers")
        if route.escalation is not None and route.escalation not in policies:
            raise AlertingConfigError(f"{source}: {where}.escalation: unknown policy {route.escalation!r}")
        for i, child in enumerate(route.routes):
            walk(child, f"{where}.routes[{i}]")

    walk(cfg.route, "route")
    for i, pol in enumerate(cfg.escalation_policies):
        for j, step in enumerate(pol.steps):
            for t in step.targets:
                check_target(t, f"escalation_policies[{i}].steps[{j}]")
    for i, ros in enumerate(cfg.rosters):
        for m in ros.members:
            if m not in people:
                raise AlertingConfigError(f"{source}: rosters[{i}].members: unknown person {m!r}")
    for i, ov in enumerate(cfg.overrides):
        if ov.roster not in rosters or ov.person not in people:
            raise AlertingConfigError(f"{source}: overrides[{i}]: unknown roster or person")
    kinds = {"line", "firing", "resolved", "repeat", "escalation", "overdue", "digest"}
    for loc, entries in cfg.templates.items():
        for key, text in entries.items():
            if key not in kinds:
                raise AlertingConfigError(f"{source}: templates.{loc}.{key}: unknown template (one of {sorted(kinds)})")
            # Titles and lines share one context (alerting.templates.LINE_FIELDS).
            try:
                text.format(**{f: "" for f in ("sev", "summary", "device_id", "site", "unit", "starts",
                                                "ack_by", "link", "rule", "kind", "severity", "id", "device")})
            except (KeyError, IndexError, ValueError) as exc:
                raise AlertingConfigError(f"{source}: templates.{loc}.{key}: bad field {exc}") from None
    for i, u in enumerate(cfg.users):
        if u.token is None and u.token_env is None:
            raise AlertingConfigError(f"{source}: users[{i}]: give token or token_env")
    check_workorders(cfg, source)
    check_tokens(cfg, source)


def check_workorders(cfg: AlertingConfig, source: str = "alerting", files: bool = True) -> None:
    """Work orders: grid staff have grids, policies name real milestones and targets, and (when enabled and
    ``files``) the grids file and the holiday file can be read. The service runs it at start-up too.

    Raises:
        AlertingConfigError: naming the key (``users[i]``, ``workorders.policies[i]``, ``workorders.grids_file``...).
    """
    from alerting.workorders.model import MILESTONES

    for i, u in enumerate(cfg.users):
        if u.role == "grid_staff" and not u.grids:
            raise AlertingConfigError(f"{source}: users[{i}]: a grid_staff user needs grids")
    known = {"person": {p.id for p in cfg.people}, "receiver": {r.name for r in cfg.receivers},
             "roster": {r.name for r in cfg.rosters}}
    for i, op in enumerate(cfg.workorders.policies):
        where = f"workorders.policies[{i}]"
        for key in (*op.limits_s, *op.limits_working_days):
            if key not in MILESTONES:
                raise AlertingConfigError(f"{source}: {where}: unknown milestone {key!r} (one of {list(MILESTONES)})")
        if any(v <= 0 for v in op.limits_s.values()) or any(v < 0 for v in op.limits_working_days.values()):
            raise AlertingConfigError(f"{source}: {where}: limits must be positive")
        for t in op.escalate:
            kind, _, name = t.partition(":")
            if kind == "role" or t in ("grid:staff", "grid:duty"):
                continue
            if kind not in known:
                raise AlertingConfigError(f"{source}: {where}.escalate: target {t!r} must be person:/role:/roster:/"
                                          "receiver:/grid:staff/grid:duty")
            if name not in known[kind]:
                raise AlertingConfigError(f"{source}: {where}.escalate: unknown {kind} {name!r}")
    if not cfg.workorders.enabled or not files:
        return
    from alerting.grids import GridBook, GridError
    from broker.calendar import CalendarError, HolidayCalendar

    wo = cfg.workorders
    try:
        GridBook.load(wo.grids_file)
    except GridError as exc:
        raise AlertingConfigError(f"{source}: workorders.grids_file: {exc}") from None
    if wo.calendar_file:
        try:
            HolidayCalendar.load(wo.calendar_file)
        except (CalendarError, OSError) as exc:
            raise AlertingConfigError(f"{source}: workorders.calendar_file: {exc}") from None


def check_tokens(cfg: AlertingConfig, source: str = "alerting", env: dict[str, str] | None = None) -> None:
    """Refuse short or low-entropy API tokens (inline, or in a set environment variable).

    Raises:
        AlertingConfigError: naming ``users[i].token`` or ``users[i].token_env`` and the variable.
    """
    from alerting.access import TokenBook, TokenError

    try:
        TokenBook.from_users(cfg.users, env, source)
    except TokenError as exc:
        raise AlertingConfigError(str(exc)) from None
