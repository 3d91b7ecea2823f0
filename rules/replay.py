"""``vigil rules replay``: run rules over recorded history and print the alerts that would have fired.

Sources:
- a recorded file of MQTT messages: JSON lines ``{"topic": ..., "payload": ..., "ts": ...}`` where
  ``payload`` is the message as a JSON object or as text, and ``ts`` the receive time (epoch
  seconds or RFC 3339; the payload's own timestamp when missing);
- InfluxDB 1.x as written by Vigil's storage stage (``telemetry_{kind}``, ``events``, ``status``).

Messages are replayed in receive-time order through a fresh engine; the engine is ticked every
``tick`` seconds of recorded time, so absence and pending timers behave as they would have live.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec

from broker.contracts import (
    Channel,
    DeviceEvent,
    DeviceMessage,
    DeviceStatus,
    Kind,
    Rejected,
    Telemetry,
    Transition,
    decode_device_message,
    encode,
    format_ts,
)
from broker.registry import DeviceRegistry, RegistryError
from rules.engine import RuleEngine
from rules.errors import RulesError
from rules.loader import PACKS_DIR, load_rules
from rules.periods import PERIOD_SECONDS, period_of


class ReplayError(RulesError):
    """The history could not be read."""


def _epoch(raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw) / 1000.0 if raw > 1e11 else float(raw)
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _payload_ts(dm: DeviceMessage) -> float:
    ts = getattr(dm.payload, "ts", None)
    return ts.timestamp() if isinstance(ts, datetime) else 0.0


def read_mqtt_file(path: str | Path, rejected: dict[str, int]) -> list[DeviceMessage]:
    """Decode a recorded JSON-lines file; refused lines are counted in ``rejected`` by reason."""
    out: list[DeviceMessage] = []
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ReplayError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                topic = rec["topic"]
                payload = rec["payload"]
            except (json.JSONDecodeError, KeyError, TypeError):
                rejected["bad_line"] = rejected.get("bad_line", 0) + 1
                continue
            data = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")
            try:
                dm = decode_device_message(str(topic), data, received_at=_epoch(rec.get("ts")) or 0.0)
            except Rejected as exc:
                rejected[exc.reason.value] = rejected.get(exc.reason.value, 0) + 1
                continue
            if dm.received_at <= 0:
                dm = DeviceMessage(dm.kind, dm.device_id, dm.channel, dm.payload, _payload_ts(dm))
            out.append(dm)
            del lineno
    return out


def _rows(url: str, db: str, measurement: str, where: str) -> Iterator[dict[str, Any]]:
    try:
        from storage.query import QueryError, influxql
    except ImportError as exc:  # pragma: no cover - storage ships with Vigil
        raise ReplayError(f"InfluxDB replay needs the storage package: {exc}") from None
    try:
        series = influxql(url, db, f'SELECT * FROM "{measurement}"{where}', epoch="ms")
    except QueryError as exc:
        raise ReplayError(f"InfluxDB {measurement}: {exc}") from None
    for s in series:
        for row in s.rows():
            yield {**s.tags, **row}


def read_influx(url: str, db: str, since: float | None, until: float | None,
                kinds: Iterable[str]) -> list[DeviceMessage]:
    """Device messages rebuilt from Vigil's InfluxDB layout."""
    conds = []
    if since is not None:
        conds.append(f"time >= {int(since * 1000)}ms")
    if until is not None:
        conds.append(f"time < {int(until * 1000)}ms")
    where = (" WHERE " + " AND ".join(conds)) if conds else ""
    out: list[DeviceMessage] = []
    tag_cols = {"time", "device", "kind", "site", "seq"}
    for kind in kinds:
        for row in _rows(url, db, f"telemetry_{kind}", where):
            ts = datetime.fromtimestamp(row["time"] / 1000.0, UTC)
            metrics = {k: v for k, v in row.items() if k not in tag_cols and v is not None and not k.endswith(".Flag")}
            quality = {k[:-5]: v for k, v in row.items() if k.endswith(".Flag") and v is not None}
            if not metrics or not row.get("device"):
                continue
            tel = Telemetry(ts=ts, metrics=metrics, quality=quality or None, site=row.get("site"))
            # Storage keeps no receive time: a period record (HJ 212 2051/2061/2031, stamped with its
            # period's start) is replayed as received at its period's end, when a logger sends it.
            cn = period_of(metrics)
            received = ts.timestamp() + (PERIOD_SECONDS[cn] if cn is not None else 0.0)
            out.append(DeviceMessage(Kind(kind), row["device"], Channel.TELEMETRY, tel, received))
    wanted = set(kinds)
    for row in _rows(url, db, "events", where):
        if row.get("kind") not in wanted or not row.get("device") or not row.get("type"):
            continue
        ts = datetime.fromtimestamp(row["time"] / 1000.0, UTC)
        try:
            ev = msgspec.convert({"ts": ts, "type": row["type"], "state": row.get("state") or "instant",
                                  "event_id": row.get("event_id"), "zone": row.get("zone"),
                                  "measure": row.get("measure"), "message": row.get("message"),
                                  "snapshot_url": row.get("snapshot_url")}, DeviceEvent)
        except msgspec.ValidationError:
            continue
        out.append(DeviceMessage(Kind(row["kind"]), row["device"], Channel.EVENT, ev, ts.timestamp()))
    for row in _rows(url, db, "status", where):
        if row.get("kind") not in wanted or not row.get("device") or row.get("online") is None:
            continue
        ts = datetime.fromtimestamp(row["time"] / 1000.0, UTC)
        st = DeviceStatus(ts=ts, online=bool(row["online"]), reason=row.get("reason"))
        out.append(DeviceMessage(Kind(row["kind"]), row["device"], Channel.STATUS, st, ts.timestamp()))
    return out


def run_replay(engine: RuleEngine, messages: list[DeviceMessage], tick: float) -> list[Transition]:
    """Feed messages in receive-time order, ticking every ``tick`` seconds of recorded time."""
    messages = sorted(messages, key=lambda m: (m.received_at, _payload_ts(m)))
    out: list[Transition] = []
    if not messages:
        return out
    next_tick = messages[0].received_at
    for dm in messages:
        while tick > 0 and next_tick <= dm.received_at:
            out.extend(engine.tick(next_tick))
            next_tick += tick
        out.extend(engine.process([dm], dm.received_at))
    out.extend(engine.tick(messages[-1].received_at))
    return out


def replay_history(rule_paths: list[str], *, mqtt_file: str | None, influx_url: str | None, influx_db: str,
                   since: str | None, until: str | None, registry: str | None, devices: list[str] | None,
                   kinds: list[str] | None, tick: float, as_json: bool, timezone: str, out: TextIO) -> int:
    """The ``replay`` sub-command: 0 on success, 1 on rule errors, 2 when the history cannot be read."""
    ruleset = load_rules(rule_paths or [PACKS_DIR], timezone)
    if ruleset.errors:
        for err in ruleset.errors:
            print(err, file=sys.stderr)
        return 1
    reg = None
    if registry:
        try:
            reg = DeviceRegistry.load(registry)
        except RegistryError as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1
    t_since, t_until = _epoch(since), _epoch(until)
    rejected: dict[str, int] = {}
    try:
        if mqtt_file:
            messages = read_mqtt_file(mqtt_file, rejected)
        elif influx_url:
            messages = read_influx(influx_url, influx_db, t_since, t_until, kinds or [k.value for k in Kind])
        else:
            print("give --mqtt-file or --influx-url", file=sys.stderr)
            return 2
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    messages = [m for m in messages
                if (not devices or m.device_id in devices) and (not kinds or m.kind.value in kinds)
                and (t_since is None or _payload_ts(m) >= t_since) and (t_until is None or _payload_ts(m) < t_until)]
    try:
        engine = RuleEngine(ruleset.rules, reg)
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    transitions = run_replay(engine, messages, tick)
    firing = 0
    for tr in transitions:
        firing += tr.status == "firing"
        if as_json:
            out.write(encode(tr).decode("utf-8") + "\n")
        else:
            print(f"{format_ts(tr.ts)}  {tr.status.upper():8} {tr.severity.value:8} {tr.rule:40} "
                  f"{tr.device_id:16} {tr.summary}", file=out)
    if not as_json:
        refused = f", {sum(rejected.values())} refused {rejected}" if rejected else ""
        print(f"{len(messages)} messages replayed{refused}: {firing} alerts fired, "
              f"{len(transitions) - firing} resolved, {len(engine.firing())} still firing at the end", file=out)
    return 0
