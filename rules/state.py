"""Engine state that survives a restart: periodic snapshots plus a journal of state-machine changes.

- The snapshot holds everything (device clocks, latest values, every rule's state machine and
  condition state such as windows and accumulators). It is written atomically (temporary
  file, fsync, rename) every ``snapshot_interval_s`` and on stop.
- The journal gets one line per (device, rule) whose state machine changed -- pending
  started, fired, clearing, resolved -- written after every handled batch and before the
  batch is acknowledged to the broker. Lines carry the snapshot generation they follow, so a
  crash between writing a snapshot and truncating the journal never replays stale lines.

A journal write the disk refuses is cut off again (no torn line is left) and its lines stay in
memory (``unwritten``); they are written first at the next attempt. The rules service does not
let the MQTT client acknowledge a batch while lines are unwritten (see ``rules.service``).

After a restart the engine therefore knows which alerts are firing (no duplicate firing)
and which were pending since when (no lost alert); only window samples newer than the last
snapshot are lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from broker.contracts import Severity, Transition
from rules.engine import CLEARING, FIRING, INACTIVE, PENDING, DeviceState, RuleEngine, RuleState
from rules.model import Rule
from rules.steady import STALE

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
_encoder = msgspec.json.Encoder()


def _machine(rs: RuleState, rule: Rule | None, device_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "phase": rs.phase, "since": rs.since, "clear_since": rs.clear_since, "started_at": rs.started_at,
        "signal": rs.signal, "published": rs.published, "flapping": rs.flapping, "flaps": list(rs.flaps),
        "values": rs.values, "digest": rs.digest,
    }
    if rs.published == "firing" and rule is not None:
        # Enough to resolve the alert even if the rule is gone when the engine restarts.
        entry["alert"] = {"fingerprint": rule.fingerprint(device_id), "severity": rule.severity.value,
                          "labels": rule.labels, "summary": rule.summary.text, "summary_en": rule.summary_en.text}
    return entry


def _orphan(engine: RuleEngine, dev: DeviceState, name: str, entry: dict[str, Any]) -> None:
    """A firing alert whose rule no longer exists: resolve it rather than leave it open forever."""
    alert = entry.get("alert")
    if entry.get("published") != "firing" or not isinstance(alert, dict):
        return
    now = datetime.now(UTC)
    try:
        engine.orphans.append(Transition(
            ts=now, fingerprint=str(alert["fingerprint"]), rule=name, status="resolved",
            severity=Severity(alert["severity"]), kind=dev.kind, device_id=dev.device_id, site=dev.site,
            labels=dict(alert.get("labels", {})), summary=str(alert.get("summary", "")),
            summary_en=str(alert.get("summary_en", "")), description="规则已删除 / rule removed",
            started_at=datetime.fromtimestamp(float(entry.get("started_at", 0.0)), UTC),
        ))
    except (KeyError, ValueError, TypeError):
        log.warning("rules: cannot resolve the alert of removed rule %s for %s", name, dev.device_id)


def _dump_slots(rule: Rule, rs: RuleState) -> list[Any]:
    if not rs.slots:
        return []
    out: list[Any] = [None] * len(rs.slots)
    for cond in rule.stateful_conditions:
        if 0 <= cond.slot < len(rs.slots) and rs.slots[cond.slot] is not None:
            out[cond.slot] = cond.dump(rs.slots[cond.slot])
    return out


def _load_slots(rule: Rule, raw: list[Any]) -> list[Any]:
    slots: list[Any] = [None] * rule.slots
    for cond in rule.stateful_conditions:
        if 0 <= cond.slot < min(len(raw), rule.slots) and raw[cond.slot] is not None:
            slots[cond.slot] = cond.load(raw[cond.slot])
    return slots


def _device_doc(engine: RuleEngine, dev: DeviceState) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for name, rs in dev.rules.items():
        rule = engine.rules.get(name)
        if rule is None:
            continue
        if rs.phase == INACTIVE and not rs.slots and rs.published is None and not rs.flaps:
            continue  # nothing to remember: a fresh state is the same
        entry = _machine(rs, rule, dev.device_id)
        entry["slots"] = _dump_slots(rule, rs)
        rules[name] = entry
    return {
        "kind": dev.kind, "site": dev.site, "last_ts": dev.last_ts, "last_rx": dev.last_rx,
        "event_ts": dev.event_ts, "status_ts": dev.status_ts, "seen_rx": dev.seen_rx,
        "metrics": dev.metrics, "quality": dev.quality, "rules": rules,
        "periods": dev.periods, "period_end": dev.period_end,  # HJ 212 period records' clocks (rules.periods)
    }


def engine_to_doc(engine: RuleEngine, generation: int) -> dict[str, Any]:
    """The whole engine state as JSON-serialisable data."""
    devices = {dev.device_id: _device_doc(engine, dev) for dev in engine.devices.values()}
    return {"version": FORMAT_VERSION, "generation": generation, "watch_start": engine.watch_start,
            "devices": devices}


class SnapshotEncoder:
    """Encodes a snapshot a slice of devices at a time, so the event loop is never held for long.

    The device list is fixed when encoding starts and the journal switches to the new generation
    at that moment. A device encoded later may already hold changes that the new journal also
    records; replaying them on restore is harmless because journal lines carry whole state
    machines (they overwrite) and device clocks only move forward (they are merged with max).
    """

    def __init__(self, engine: RuleEngine, generation: int) -> None:
        self.engine = engine
        self.generation = generation
        self._ids = list(engine.devices)
        self._next = 0
        head = _encoder.encode({"version": FORMAT_VERSION, "generation": generation,
                                "watch_start": engine.watch_start})
        self._parts: list[bytes] = [head[:-1], b',"devices":{']
        self._first = True

    @property
    def done(self) -> bool:
        """Whether every device has been encoded."""
        return self._next >= len(self._ids)

    def step(self, budget_s: float) -> bool:
        """Encode devices for about ``budget_s`` seconds; returns True when all are done."""
        deadline = time.perf_counter() + budget_s
        devices = self.engine.devices
        while self._next < len(self._ids):
            device_id = self._ids[self._next]
            self._next += 1
            dev = devices.get(device_id)
            if dev is None:
                continue
            if not self._first:
                self._parts.append(b",")
            self._first = False
            self._parts.append(_encoder.encode(device_id))
            self._parts.append(b":")
            self._parts.append(_encoder.encode(_device_doc(self.engine, dev)))
            if not self._next % 16 and time.perf_counter() >= deadline:
                break
        return self.done

    def result(self) -> bytes:
        """The encoded snapshot (after ``step`` returned True)."""
        assert self.done
        return b"".join(self._parts) + b"}}"


def _apply_machine(engine: RuleEngine, dev: DeviceState, name: str, entry: dict[str, Any], with_slots: bool) -> None:
    rule = engine.rules.get(name)
    if rule is None:
        _orphan(engine, dev, name, entry)
        return
    rs = dev.rules.get(name)
    if rs is None:
        rs = dev.rules[name] = RuleState(rule, engine._params(rule, dev.device_id))
    same = entry.get("digest") == rule.digest
    rs.memo = STALE  # restored state: no signal of the running engine is reusable
    dev.settled = None
    rs.phase = int(entry.get("phase", INACTIVE))
    rs.since = float(entry.get("since", 0.0))
    rs.clear_since = float(entry.get("clear_since", 0.0))
    rs.started_at = float(entry.get("started_at", 0.0))
    rs.signal = entry.get("signal")
    rs.published = entry.get("published")
    rs.flapping = bool(entry.get("flapping", False))
    rs.flaps = [float(t) for t in entry.get("flaps", [])]
    rs.values = dict(entry.get("values", {}))
    rs.digest = rule.digest
    if with_slots and same and isinstance(entry.get("slots"), list):
        rs.slots = _load_slots(rule, entry["slots"])
    if not same:
        # Changed while down: conditions start afresh, a firing alert stays firing.
        rs.slots = [None] * rule.slots
        if rs.phase == PENDING:
            rs.phase = INACTIVE
        elif rs.phase == CLEARING:
            rs.phase = FIRING
    if rs.phase in (PENDING, CLEARING) or rs.flapping:
        engine._timed.add((dev.device_id, name))


def engine_from_doc(engine: RuleEngine, doc: dict[str, Any]) -> int:
    """Load a snapshot into a fresh engine (rules already set); returns the generation."""
    engine.watch_start = doc.get("watch_start")
    for device_id, d in doc.get("devices", {}).items():
        dev = engine._device(device_id, d["kind"], d.get("site"))
        dev.last_ts = float(d.get("last_ts", 0.0))
        dev.event_ts = float(d.get("event_ts", 0.0))
        dev.status_ts = float(d.get("status_ts", 0.0))
        dev.seen_rx = float(d.get("seen_rx", 0.0))
        dev.last_rx = float(d.get("last_rx", 0.0))
        dev.metrics.update(d.get("metrics", {}))
        dev.quality.update(d.get("quality", {}))
        if d.get("periods"):
            dev.periods = {str(k): float(v) for k, v in d["periods"].items()}  # period records' own clocks
        dev.period_end = float(d.get("period_end", 0.0))
        for name, entry in d.get("rules", {}).items():
            _apply_machine(engine, dev, name, entry, with_slots=True)
    return int(doc.get("generation", 0))


class StateStore:
    """Snapshot and journal files in the service's state directory.

    Journals are named by the snapshot generation they follow (``rules-journal-7.jsonl``);
    restoring loads the snapshot of generation G and replays the journals of G and later,
    so a crash while a snapshot is being written loses nothing.
    """

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.snapshot_path = directory / "rules-state.json"
        self.fsync = fsync
        self.generation = 0
        self._fd: int | None = None
        self._size = 0
        self._unwritten: list[bytes] = []
        self.snapshots = 0
        self.journal_lines = 0
        self.journal_errors = 0
        self.snapshot_errors = 0
        self.last_error: str | None = None

    def journal_path(self, generation: int) -> Path:
        """The journal that follows snapshot ``generation``."""
        return self.directory / f"rules-journal-{generation}.jsonl"

    def _journals(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.glob("rules-journal-*.jsonl"):
            with contextlib.suppress(ValueError):
                found.append((int(p.stem.rsplit("-", 1)[1]), p))
        return sorted(found)

    def restore(self, engine: RuleEngine) -> int:
        """Load the snapshot and replay the journals; returns the number of journal lines replayed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.snapshot_path.exists():
            try:
                doc = msgspec.json.decode(self.snapshot_path.read_bytes())
                self.generation = engine_from_doc(engine, doc)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("rules: state snapshot %s is unreadable (%s); starting from the journals only",
                            self.snapshot_path, exc)
        replayed = 0
        for gen, path in self._journals():
            if gen < self.generation:
                continue
            self.generation = max(self.generation, gen)
            for raw in path.read_bytes().splitlines():
                try:
                    line = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    continue  # a torn last line after a crash
                if not isinstance(line, dict) or "d" not in line or "r" not in line:
                    continue
                dev = engine._device(line["d"], line["k"], line.get("s"))
                dev.last_ts = max(dev.last_ts, float(line.get("ts", 0.0)))
                dev.event_ts = max(dev.event_ts, float(line.get("ets", 0.0)))
                dev.last_rx = max(dev.last_rx, float(line.get("rx", 0.0)))
                if line.get("m") is None:
                    dev.rules.pop(line["r"], None)
                else:
                    _apply_machine(engine, dev, line["r"], line["m"], with_slots=False)
                replayed += 1
        return replayed

    @property
    def unwritten(self) -> int:
        """Journal lines kept in memory because the disk refused them."""
        return len(self._unwritten)

    def append(self, engine: RuleEngine, changes: list[tuple[str, str]]) -> None:
        """Journal the state machines of the changed (device, rule) pairs.

        Raises:
            OSError: the disk refused the write; the lines stay in memory for ``flush_pending``.
        """
        lines = self._unwritten
        for device_id, name in changes:
            dev = engine.devices.get(device_id)
            if dev is None:
                continue
            rs = dev.rules.get(name)
            machine = _machine(rs, engine.rules.get(name), device_id) if rs is not None else None
            lines.append(_encoder.encode({
                "d": device_id, "k": dev.kind, "s": dev.site, "r": name,
                "ts": dev.last_ts, "ets": dev.event_ts, "rx": dev.last_rx, "m": machine,
            }))
        self.flush_pending()

    def flush_pending(self) -> None:
        """Write the journal lines not written yet (one ``write``; a partial one is cut off again).

        Raises:
            OSError: the disk still refuses them; they stay in memory.
        """
        if not self._unwritten:
            return
        data = b"\n".join(self._unwritten) + b"\n"
        try:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.journal_path(self.generation), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                self._size = os.fstat(self._fd).st_size
                if self._size and os.pread(self._fd, 1, self._size - 1) != b"\n":
                    data = b"\n" + data  # end a torn last line (crash) so it does not swallow these
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
                if self.fsync:
                    os.fsync(self._fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
        except OSError as exc:
            self.journal_errors += 1
            self.last_error = str(exc)
            raise
        self._size += len(data)
        self.journal_lines += len(self._unwritten)
        self._unwritten = []
        self.last_error = None

    def begin_snapshot(self, engine: RuleEngine) -> tuple[int, bytes]:
        """Encode the state now (in the engine's thread) and start the next journal generation."""
        enc = self.begin_incremental(engine)
        enc.step(float("inf"))
        return enc.generation, enc.result()

    def begin_incremental(self, engine: RuleEngine) -> SnapshotEncoder:
        """Start the next journal generation and return an encoder for the snapshot it follows.

        Call ``step`` on the encoder between batches of messages until it is done, then hand
        ``result()`` to ``write_snapshot``.
        """
        generation = self.generation + 1
        enc = SnapshotEncoder(engine, generation)
        self.close()
        self.generation = generation
        return enc

    def write_snapshot(self, generation: int, data: bytes) -> None:
        """Write an encoded snapshot atomically (may run in a thread), then drop older journals."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshot_path.with_suffix(".json.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.snapshot_path)
        except OSError:
            # The previous snapshot and every journal since it stay, so a restart still restores.
            self.snapshot_errors += 1
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.snapshots += 1
        for gen, path in self._journals():
            if gen < generation:
                with contextlib.suppress(OSError):
                    path.unlink()

    def save(self, engine: RuleEngine) -> None:
        """Snapshot synchronously (used on stop and in tests)."""
        generation, data = self.begin_snapshot(engine)
        self.write_snapshot(generation, data)

    def close(self) -> None:
        """Close the journal file (unwritten lines stay in memory for the next journal)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
