"""Configuration of the rules stage (top-level key ``rules:`` in Vigil's config file)."""

from __future__ import annotations

import msgspec

SHIPPED_PACKS = ("elevator", "vehicle", "emission", "camera", "safety")
"""Rule packs shipped with Vigil, all loaded by default."""


class RulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which rules to run and how the engine keeps time and state."""

    packs: list[str] = msgspec.field(default_factory=lambda: list(SHIPPED_PACKS))
    """Rule packs shipped with Vigil (``rules/packs/{name}.yaml``) to load."""
    paths: list[str] = []
    """Extra rule files or directories of ``*.yaml`` rule files."""
    timezone: str = "Asia/Shanghai"
    """Default time zone of schedules (a rule file or schedule may name another)."""
    calendar: str | None = None
    """Override file of the working-day calendar (extra holidays, make-up days, school terms; broker/calendar.py).
    Statutory holidays come from the chinese_calendar package without it."""
    tick_interval_s: float = 1.0
    """How often time-driven rules (absence, pending timers, event expiry) are advanced."""
    snapshot_interval_s: float = 10.0
    """How often the full engine state is written to the state directory (also on stop)."""
    reload_interval_s: float = 2.0
    """How often rule files are checked for changes (0 turns polling off; SIGHUP still reloads)."""
    reload_on_sighup: bool = True
    """Reload rule files when the process receives SIGHUP."""
    fsync_journal: bool = False
    """fsync the state journal after every batch (survives power loss, costs throughput)."""
    qos: int = 1
    """MQTT QoS of published transitions."""
