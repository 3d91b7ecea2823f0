"""What the desks use of the alerting engine, as Protocols: the desks type their engine with these.

``alerting.engine.AlertingEngine`` builds the alert desk and the work-order desk and hands itself to
them; typing that back-reference with the engine's class would make engine and desks import each
other. These Protocols name only the members the desks call, so the desks import this leaf module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from alerting.config import AlertingConfig
from alerting.lifecycle import AlertRecord, AuditEvent
from alerting.muting import MaintenanceCalendar, SilenceSet
from alerting.roster import DutyRoster
from alerting.store import AlertStore
from broker.contracts import Transition
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry


class DeskHost(Protocol):
    """What ``alerting.desk.AlertDesk`` uses of the engine: state to read and the commit of people's changes."""

    @property
    def config(self) -> AlertingConfig:
        """The validated ``alerting:`` configuration."""

    @property
    def store(self) -> AlertStore:
        """The alert database."""

    @property
    def clock(self) -> Callable[[], float]:
        """Alerting's wall clock (follows platform clock steps)."""

    @property
    def open(self) -> dict[str, AlertRecord]:
        """Open alerts by id, in memory."""

    @property
    def roster(self) -> DutyRoster:
        """People, rosters and overrides."""

    @property
    def silences(self) -> SilenceSet:
        """Silences in force or scheduled."""

    @property
    def maintenance(self) -> MaintenanceCalendar:
        """Recurring maintenance windows."""

    @property
    def mqtt(self) -> MqttClient:
        """The MQTT session (device commands go out on it)."""

    def record_action(self, before: AlertRecord, after: AlertRecord, events: Sequence[AuditEvent]) -> None:
        """Save a person's change to one alert with its audit events, commit and publish."""

    def commit(self) -> None:
        """Commit what was written to the store and publish what it changed."""


class WorkOrderHost(DeskHost, Protocol):
    """What ``alerting.workorders.desk.WorkOrderDesk`` uses of the engine besides what the alert desk does."""

    @property
    def by_fingerprint(self) -> dict[str, str]:
        """Open alert id by fingerprint."""

    @property
    def counters(self) -> Counter[str]:
        """The engine's counters."""

    @property
    def registry(self) -> DeviceRegistry | None:
        """The device registry (sites of devices), when the process has one."""

    def save(self, rec: AlertRecord, events: Sequence[AuditEvent] = ()) -> None:
        """Write an alert's new state and audit events (published at the next commit)."""

    def on_local_transitions(self, items: list[tuple[Transition, bytes]]) -> None:
        """Take transitions raised in this process (a reported incident) as if they came over MQTT."""

    def queue_notification(self, nid: int) -> None:
        """Send an outbox entry written outside the pipeline after the next commit."""

    def resolve_targets(self, targets: list[str], unit: str, now: float, grid: str = "") -> list[str]:
        """Turn notification targets into recipients."""
