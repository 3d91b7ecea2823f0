"""Alerting as an ordered list of stages: what a batch carries, the stage protocol, the pipeline, and
the commit point that ends it.

A batch of transitions (from MQTT or from the rules stage of this process) and every timer tick go
through the same list, each stage a small object with one job (see ``alerting.stages`` and the table
in docs/alerting.md)::

    dedup -> decode -> lifecycle -> grouping -> muting -> targets -> render -> storm -> outbox

A stage reads the items the stages before it left in the ``Batch`` and leaves its own for the next
ones; a stage with nothing to do passes the batch on. The outbox stage writes into the store's open
transaction; the ``CommitPoint`` (called by ``AlertingEngine.commit``) then commits it, publishes the
changed alerts and hands the new notifications to the delivery workers. Nothing a batch decided leaves
the process before its SQLite transaction is committed, and the MQTT batch of transitions is
acknowledged only after that (``broker.mqtt.NotDurable`` otherwise). Timers (group flushes, escalation
rungs, deadlines, digests) start a batch of their own: escalation and deadline notices already name
their recipients, so they join the list at ``targets``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from alerting.delivery import AlertPublisher, DeliveryWorkers
from alerting.errors import AlertingError
from alerting.grouping import GroupFlush
from alerting.lifecycle import AlertRecord
from alerting.router import RoutePlan
from alerting.store import AlertStore
from alerting.templates import Rendered
from broker.contracts import Transition
from broker.mqtt import Message as MqttMessage
from broker.mqtt import NotDurable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One transition as it came in: the MQTT message still to decode, or one decoded in this process."""

    payload: bytes
    received_at: float
    transition: Transition | None = None
    message: MqttMessage | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """An alert the lifecycle changed, with the routes it matched (for grouping)."""

    record: AlertRecord
    change: str
    plans: tuple[RoutePlan, ...]
    renotify: bool = False


@dataclass(slots=True)
class Notice:
    """A notification about alerts before it is addressed (``targets``) or after (``recipients``)."""

    kind: str
    """firing, resolved, repeat, escalation, overdue or digest."""
    firing: list[AlertRecord]
    resolved: list[AlertRecord]
    key: str
    """Dedup key prefix; the outbox appends the recipient."""
    step: int | None = None
    targets: list[str] = field(default_factory=list)
    unit: str = ""
    grid: str = ""
    recipients: list[str] | None = None
    """Set by the targets stage, or by a timer that already resolved them."""
    lines: list[str] | None = None
    """A digest's held lines (kind ``digest`` only)."""


@dataclass(slots=True)
class Letter:
    """One rendered notification for one recipient; the storm stage sets ``status`` to ``digested`` when held."""

    notice: Notice
    recipient: str
    text: Rendered
    status: str = "pending"


@dataclass(slots=True)
class Batch:
    """What one pass through the pipeline carries; each list is filled by one stage and read by the next."""

    now: float
    arrivals: list[Arrival] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    flushes: list[GroupFlush] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    """Outbox ids written in this batch (handed to delivery after the commit)."""


class Stage(Protocol):
    """One step of the alerting pipeline."""

    name: str

    def process(self, batch: Batch) -> Batch:
        """Read the batch's items of the stages before, add this stage's, and return the batch."""
        ...


class PipelineError(AlertingError, ValueError):
    """A stage list that cannot run (two stages with one name)."""


class Pipeline:
    """The ordered stages; ``run`` passes a batch through all of them (or from a named one on)."""

    def __init__(self, stages: list[Stage]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"stage names must be unique: {names}")
        self.stages: tuple[Stage, ...] = tuple(stages)
        self._index = {s.name: i for i, s in enumerate(self.stages)}

    def names(self) -> list[str]:
        """The stage names in order (what docs/alerting.md draws)."""
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        """The stage called ``name`` (KeyError if there is none)."""
        return self.stages[self._index[name]]

    def run(self, batch: Batch, start: str | None = None) -> Batch:
        """Pass ``batch`` through every stage, from ``start`` (a stage name) when given."""
        for s in self.stages[self._index[start] if start is not None else 0:]:
            batch = s.process(batch)
        return batch


def _nothing() -> None:
    return None


class CommitPoint:
    """Commit, then publish the changed alerts and queue the new outbox rows."""

    def __init__(self, store: AlertStore, publisher: AlertPublisher, delivery: DeliveryWorkers,
                 counters: Counter[str]) -> None:
        self.store = store
        self.publisher = publisher
        self.delivery = delivery
        self.counters = counters
        self.wake: Callable[[], None] = _nothing
        """Called after a commit that may have armed an earlier timer (the service's timer loop sleeps on it)."""
        self.diverged: str | None = None
        """Set when SQLite rolled back a batch the lifecycle had applied in memory (see ``commit_or_hold``)."""

    def commit(self, wake: bool = True) -> None:
        """Commit the store's transaction, then publish and queue what it holds."""
        self.store.commit()
        self.publisher.flush()
        self.delivery.after_commit()
        if wake:
            # New groups or timers may be due earlier than the timer's current sleep.
            self.wake()

    def commit_or_hold(self) -> None:
        """Commit a handled batch; if the disk refuses it, the batch must not be acknowledged.

        If SQLite kept the transaction open after the failed COMMIT, the MQTT client holds the batch
        and retries the commit (publishing and sending follow it). If SQLite rolled it back (what it
        does for a full disk in WAL mode), the alerts in memory are ahead of the database: nothing
        more is acknowledged until the node is restarted (it then reloads the database and the
        broker redelivers every unacknowledged transition); the health model reports the stall.
        """
        try:
            self.commit()
        except sqlite3.OperationalError as exc:
            self.counters["commit_errors"] += 1
            if self.store.db.in_transaction:
                raise NotDurable(f"alerting database: {exc}", self.commit) from None
            self.diverged = f"alerting database: {exc}; rolled back, restart the node once there is space"
            log.error("alerting: %s", self.diverged)
        if self.diverged is not None:
            raise NotDurable(self.diverged, self._refuse_until_restart)

    def _refuse_until_restart(self) -> None:
        assert self.diverged is not None
        raise NotDurable(self.diverged, self._refuse_until_restart)
