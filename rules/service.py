"""The rules stage: device messages from ``DeviceIngest`` in, alert transitions out over MQTT.

A thin adapter around the pure ``RuleEngine``: it feeds validated batches to the engine,
publishes the transitions with ``publish_nowait`` (never blocks on storage or notification),
journals state changes before the batch is acknowledged, ticks time-driven rules, writes
snapshots, and hot-reloads rule files (polling their modification times, or on SIGHUP). A
rule file with an error is rejected whole and its previous version keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.calendar import HolidayCalendar, install_calendar
from broker.clocksteps import WallClockSteps
from broker.contracts import Channel, DeviceMessage, Transition, encode, transition_topic
from broker.ingest import DeviceIngest
from broker.mqtt import MqttClient, NotDurable
from broker.registry import DeviceRegistry
from rules.config import RulesConfig
from rules.engine import RuleEngine
from rules.loader import PACKS_DIR, load_rule_file, rule_files
from rules.model import Rule
from rules.state import StateStore

LocalTransitionConsumer = Callable[[list[tuple[Transition, bytes]]], None]
"""Receives transitions in this process, each with the exact payload published for it."""

log = logging.getLogger(__name__)


def configured_files(config: RulesConfig) -> list[Path]:
    """The rule files a config selects now: shipped packs by name, then extra files and directories."""
    files = [PACKS_DIR / f"{name}.yaml" for name in config.packs]
    return files + rule_files(config.paths)


class RuleFiles:
    """The currently accepted version of each rule file; a broken new version is refused whole.

    Directories are rescanned on every reload: a new file is loaded, a deleted one's rules are
    removed. A named file that disappears is an error and its previous version keeps running.
    """

    def __init__(self, files: list[Path], timezone: str, config: RulesConfig | None = None) -> None:
        self.files = files
        self.timezone = timezone
        self.config = config
        self.accepted: dict[Path, list[Rule]] = {}
        self.mtimes: dict[Path, float] = {}
        self.errors: list[str] = []

    def _rescan(self) -> bool:
        if self.config is None:
            return False
        named = {PACKS_DIR / f"{n}.yaml" for n in self.config.packs} | {
            Path(p) for p in self.config.paths if not Path(p).is_dir()}
        current = configured_files(self.config)
        gone = [f for f in self.files if f not in current and f not in named]
        for f in gone:
            self.accepted.pop(f, None)
            self.mtimes.pop(f, None)
        self.files = current + [f for f in self.files if f in named and f not in current]
        return bool(gone)

    def _mtime(self, path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return -1.0

    def load(self, force: bool = False) -> bool:
        """Re-read changed files; returns True when the accepted rule set changed."""
        changed = self._rescan()
        errors: list[str] = []
        for path in self.files:
            mtime = self._mtime(path)
            if not force and self.mtimes.get(path) == mtime:
                continue
            self.mtimes[path] = mtime
            rules, file_errors = load_rule_file(path, self.timezone)
            if file_errors:
                errors.extend(file_errors)
                kept = "the previous version keeps running" if path in self.accepted else "no rules loaded from it"
                log.error("rules: %s refused (%s):\n  %s", path, kept, "\n  ".join(file_errors))
                continue
            self.accepted[path] = rules
            changed = True
        names: dict[str, Path] = {}
        for path in self.files:
            for rule in list(self.accepted.get(path, [])):
                if rule.name in names and names[rule.name] != path:
                    errors.append(f"{path}:{rule.line}: rule {rule.name!r}: duplicate of a rule in {names[rule.name]}")
                    self.accepted[path] = [r for r in self.accepted[path] if r.name != rule.name]
                else:
                    names[rule.name] = path
        if errors or changed:
            self.errors = errors
        return changed

    def rules(self) -> list[Rule]:
        """Every accepted rule."""
        return [r for path in self.files for r in self.accepted.get(path, [])]


class RulesService:
    """Runs the rules engine on the platform's device stream."""

    def __init__(self, config: RulesConfig, *, mqtt: MqttClient, ingest: DeviceIngest,
                 registry: DeviceRegistry, state_dir: Path) -> None:
        self.config = config
        self.mqtt = mqtt
        self.ingest = ingest
        self.registry = registry
        if config.calendar:
            install_calendar(HolidayCalendar.load(config.calendar))
        self.files = RuleFiles(configured_files(config), config.timezone, config)
        self.files.load(force=True)
        self.engine = RuleEngine(self.files.rules(), registry)
        if ingest.partition is not None:
            self.engine.owns = ingest.owns
        self.store = StateStore(Path(state_dir), fsync=config.fsync_journal)
        self.restored = self.store.restore(self.engine)
        self.published = 0
        self.publish_errors = 0
        self.reloads = 0
        self.reload_failures = 0
        self.handler_errors = 0
        self._local_consumers: list[LocalTransitionConsumer] = []
        self._reload_requested = False
        self._last_error_log = 0.0
        self._last_journal_log = 0.0
        self._not_durable: list[NotDurable] = []
        self.clock_steps = WallClockSteps()
        log.info("rules: %d rules from %d files, %d devices restored from %s", len(self.engine.rules),
                 len(self.files.files), len(self.engine.devices), state_dir)

    def attach(self) -> None:
        """Register with the ingest for telemetry, events and status."""
        self.ingest.add_consumer({Channel.TELEMETRY, Channel.EVENT, Channel.STATUS}, self.on_device_messages)

    def on_device_messages(self, messages: list[DeviceMessage]) -> None:
        """Ingest consumer: evaluate, publish transitions, journal state before the batch is acknowledged."""
        errors = self.engine.counters.errors
        try:
            transitions = self.engine.process(messages, self.wall_now())
        except Exception:
            # A bug must not stop the stream; the batch is still journaled below.
            self.handler_errors += 1
            log.exception("rules: evaluating a batch of %d messages failed", len(messages))
            transitions = []
        self._publish(transitions)
        self._journal()
        self._report_errors(errors)
        pending = self._take_not_durable()
        if self.store.unwritten:
            # The batch's state changes are not on disk: the MQTT client must not acknowledge it.
            # The retry writes the journal only; the messages are not evaluated twice.
            pending.append(NotDurable(f"rules journal: {self.store.last_error}", self.store.flush_pending))
        if pending:
            raise NotDurable.combine(pending)

    def _take_not_durable(self) -> list[NotDurable]:
        pending, self._not_durable = self._not_durable, []
        return pending

    def _retry_not_durable(self) -> None:
        """From the run loop: retry what local consumers could not store during a tick (kept otherwise)."""
        still: list[NotDurable] = []
        for item in self._take_not_durable():
            try:
                item.retry()
            except NotDurable as exc:
                still.append(exc)
            except OSError as exc:
                still.append(NotDurable(str(exc), item.retry))
        self._not_durable = still + self._not_durable

    def _report_errors(self, before: int) -> None:
        """Log (at most every 10 s) that rule evaluations raised; the engine counted and skipped them."""
        errors = self.engine.counters.errors
        if errors > before and time.monotonic() - self._last_error_log > 10.0:
            self._last_error_log = time.monotonic()
            log.warning("rules: %d rule evaluations raised so far; last: %r", errors, self.engine.last_error)

    def add_local_consumer(self, consumer: LocalTransitionConsumer) -> None:
        """Also hand every transition straight to ``consumer`` in this process.

        The runtime connects the alerting stage of the same process here, so an alert does not
        wait for the broker round trip behind the device messages queued for this process. The
        transitions are still published: alerting recognises the echo (same payload) and skips
        it, and stages in other processes receive them as usual.
        """
        self._local_consumers.append(consumer)

    def _publish(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        out: list[tuple[Transition, bytes]] = []
        for tr in transitions:
            payload = encode(tr)
            out.append((tr, payload))
            try:
                self.mqtt.publish_nowait(transition_topic(tr.kind, tr.device_id), payload, qos=self.config.qos)
                self.published += 1
            except Exception as exc:
                self.publish_errors += 1
                log.warning("rules: could not publish transition %s for %s: %s", tr.rule, tr.device_id, exc)
        for consumer in self._local_consumers:
            try:
                consumer(out)
            except NotDurable as exc:
                # Applied but not stored (alerting's database on a full disk): the batch stays
                # unacknowledged until its retry succeeds (see on_device_messages).
                self._not_durable.append(exc)
            except Exception:
                self.handler_errors += 1
                log.exception("rules: local transition consumer %r failed", consumer)

    def _journal(self) -> None:
        try:
            self.store.append(self.engine, self.engine.drain_changes())
        except OSError as exc:
            # The lines stay in memory (StateStore.unwritten) and are written first next time.
            if time.monotonic() - self._last_journal_log > 10.0:
                self._last_journal_log = time.monotonic()
                log.warning("rules: cannot write the state journal (%d lines kept in memory): %s",
                            self.store.unwritten, exc)

    def wall_now(self) -> float:
        """The wall time; after a step of the wall clock the engine's wall-time anchors move with it first."""
        delta = self.clock_steps.check()
        if delta:
            moved = self.engine.shift_wall(delta)
            log.warning("rules: platform clock stepped %+.0f s; shifted last-heard, absence and pending-timer anchors "
                        "of %d devices by the step", delta, moved)
        return time.time()

    def tick(self, now: float | None = None) -> None:
        """Advance time-driven rules and publish what they decide."""
        errors = self.engine.counters.errors
        self._publish(self.engine.tick(self.wall_now() if now is None else now))
        self._journal()
        self._report_errors(errors)

    async def tick_sliced(self, slice_s: float = 0.004) -> None:
        """``tick``, yielding to the event loop whenever a piece of it ran ``slice_s`` seconds."""
        errors = self.engine.counters.errors
        deadline = time.perf_counter() + slice_s
        for transitions in self.engine.tick_slices(self.wall_now()):
            self._publish(transitions)
            if time.perf_counter() >= deadline:
                self._journal()
                await asyncio.sleep(0)
                deadline = time.perf_counter() + slice_s
        self._journal()
        self._report_errors(errors)

    def reload(self, force: bool = False) -> bool:
        """Re-read changed rule files; unchanged rules keep their state. Returns True when rules changed."""
        before = self.files.errors
        try:
            changed = self.files.load(force=force)
        except Exception:
            self.reload_failures += 1
            log.exception("rules: reload failed; the previous rules keep running")
            return False
        if self.files.errors and self.files.errors is not before:
            self.reload_failures += 1  # counted once per refused version, not on every poll
        if not changed:
            return False
        self.reloads += 1
        self._publish(self.engine.set_rules(self.files.rules(), self.wall_now()))
        self._journal()
        log.info("rules: reloaded, %d rules active", len(self.engine.rules))
        return True

    def request_reload(self) -> None:
        """Ask the run loop to reload every rule file (SIGHUP)."""
        self._reload_requested = True

    async def snapshot(self, slice_s: float = 0.004) -> None:
        """Write a snapshot: encoded here in slices of ``slice_s`` seconds, written in a thread.

        Between slices the event loop handles other work, so a large engine never holds up
        message handling (or an alert) for the whole encoding.
        """
        enc = self.store.begin_incremental(self.engine)
        while not enc.step(slice_s):
            await asyncio.sleep(0)
        await asyncio.to_thread(self.store.write_snapshot, enc.generation, enc.result())

    async def run(self) -> None:
        """Tick, snapshot and watch rule files until cancelled; snapshot on the way out."""
        loop = asyncio.get_running_loop()
        sighup = False
        if self.config.reload_on_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, self.request_reload)
                sighup = True
        last_snapshot = last_reload = time.monotonic()
        if self.engine.orphans:
            log.info("rules: resolving %d alerts of rules removed while stopped", len(self.engine.orphans))
            self._publish(self.engine.orphans)
            self.engine.orphans = []
        try:
            while True:
                await asyncio.sleep(self.config.tick_interval_s)
                try:
                    if self._not_durable:
                        self._retry_not_durable()
                    await self.tick_sliced()
                    mono = time.monotonic()
                    if self._reload_requested:
                        self._reload_requested = False
                        self.reload(force=True)
                    elif self.config.reload_interval_s > 0 and mono - last_reload >= self.config.reload_interval_s:
                        last_reload = mono
                        self.reload()
                    if mono - last_snapshot >= self.config.snapshot_interval_s:
                        last_snapshot = mono
                        await self.snapshot()
                except asyncio.CancelledError:
                    raise
                except OSError as exc:
                    # Disk full: the previous snapshot and the journals still restore everything.
                    log.warning("rules: cannot write the state snapshot: %s", exc)
                except Exception:
                    self.handler_errors += 1
                    log.exception("rules: periodic work failed; carrying on")
        finally:
            if sighup:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGHUP)
            try:
                self.store.save(self.engine)
            except OSError as exc:
                log.warning("rules: could not write the final state snapshot: %s", exc)
            except Exception:
                # Never let a snapshot bug turn a clean cancellation into a crash of the process.
                log.exception("rules: the final state snapshot failed")
            self.store.close()

    def stats(self) -> dict[str, float]:
        """Counters for the runtime's health view."""
        c = self.engine.counters
        out: dict[str, Any] = {
            "rules": len(self.engine.rules), "devices": len(self.engine.devices), "messages": c.messages,
            "evaluations": c.evaluations, "evaluations_reused": c.reused, "late_messages": c.late,
            "transitions": c.transitions,
            "published": self.published, "publish_errors": self.publish_errors,
            "suppressed_flapping": c.suppressed_flapping, "firing": len(self.engine.firing()),
            "reloads": self.reloads, "reload_failures": self.reload_failures, "rule_file_errors": len(self.files.errors),
            "handler_errors": self.handler_errors, "evaluation_errors": c.errors, "snapshots": self.store.snapshots,
            "journal_lines": self.store.journal_lines, "restored_journal_lines": self.restored,
            "journal_errors": self.store.journal_errors, "journal_unwritten": self.store.unwritten,
            "snapshot_errors": self.store.snapshot_errors, "clock_steps": self.clock_steps.steps,
        }
        return {k: float(v) for k, v in out.items()}
