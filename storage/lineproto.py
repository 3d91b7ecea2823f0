"""Contract messages as InfluxDB line protocol: a pure, deterministic conversion.

Determinism is what makes retries harmless: the same message always yields the same line
(same measurement, tag set, fields and timestamp), so a batch written twice leaves the same
points in the database. Field types never depend on the value's JSON spelling: numbers are
floats except the catalogue's integer metrics, so ``0`` and ``0.0`` land in the same float
field and InfluxDB 1.x never sees a field type conflict from them.

Layout (see docs/storage.md):
- ``telemetry_{kind}``  tags device, kind, site; one field per metric, ``{code}.Flag`` per quality flag, ``seq``
- ``events``            tags device, kind, severity, site, state, type; fields count, event_id, zone, measure, ...
- ``status``            tags device, kind, site; fields online, reason, agent, detail
- ``alerts``            tags device, kind, rule, severity, site, status; fields id, summary, age_s, ...
- ``dead_letters``      tags reason, stage; fields topic, detail, size, payload, ...
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from broker.contracts import (
    Alert,
    DeadLetter,
    DeviceEvent,
    DeviceStatus,
    Kind,
    MetricValue,
    Telemetry,
    format_ts,
)
from storage.errors import StorageError

INT_METRICS: Final = frozenset({"floor", "occupancy", "alarm_flags", "status_flags", "cn"})
"""Catalogue metrics stored as InfluxDB integers; every other number is stored as a float."""

MAX_STRING_CHARS: Final = 16_384
"""Longer string fields are cut (InfluxDB 1.x refuses string fields above 64 KiB)."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EXACT_FLOAT_INT: Final = 2**53
"""Integers up to this size convert to float exactly (and never overflow)."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
_WORD_CHARS: Final = 32
"""String metric values up to this length have their ``key="value"`` text cached."""
_MAX_WORDS: Final = 10_000
_JSON: Final = msgspec.json.Encoder()

# Control characters would end a line; in names and tags they become spaces (then escaped).
_CONTROL: Final[dict[str, str]] = {chr(c): "\\ " for c in range(32)}
# InfluxDB's scanner skips whatever follows a backslash in names and tags but unescapes only
# ``\,``, ``\=`` and ``\ ``, so a backslash there cannot be written faithfully: it becomes ``/``.
_MEASUREMENT_ESC: Final = str.maketrans({**_CONTROL, ",": "\\,", " ": "\\ ", "\\": "/"})
_KEY_ESC: Final = str.maketrans({**_CONTROL, ",": "\\,", "=": "\\=", " ": "\\ ", "\\": "/"})
# In string field values only the quote and the backslash are escaped; raw newlines would
# split the line in the outbox and in 1.x's parser, so they are written as the two characters
# backslash-n (the value then reads back with ``\n`` spelled out).
_STRING_ESC: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


class SkipReason:
    """Why a field or a whole point was left out (counter keys)."""

    NON_FINITE = "non_finite"
    NOT_INTEGRAL = "int_metric_not_integral"
    INT_RANGE = "int_out_of_range"
    TRUNCATED = "string_truncated"
    NO_FIELDS = "no_fields"
    NO_TIME = "no_timestamp"


def escape_measurement(name: str) -> str:
    """Escape a measurement name (commas and spaces)."""
    return name.translate(_MEASUREMENT_ESC)


def escape_key(key: str) -> str:
    """Escape a tag key, tag value or field key (commas, equals signs, spaces; backslashes become ``/``)."""
    return key.translate(_KEY_ESC)


def quote_string(value: str) -> str:
    """A string field value: quoted, with quotes, backslashes and line breaks escaped."""
    return '"' + value.translate(_STRING_ESC) + '"'


def epoch_ms(ts: datetime) -> int:
    """Whole milliseconds since the Unix epoch (exact integer arithmetic, rounding down)."""
    return (ts - _EPOCH) // _MILLISECOND


def epoch_us(ts: datetime) -> int:
    """Whole microseconds since the Unix epoch (exact)."""
    d = ts - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def tag_section(measurement: str, tags: dict[str, str | None]) -> str:
    """``measurement,k=v,...`` with tags sorted by key and empty or missing values left out."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value:
            esc = escape_key(value)
            if esc:
                parts.append(f"{escape_key(key)}={esc}")
    return ",".join(parts)


_MetricSpec = tuple[str, bool, dict[object, str]]
"""Per metric name: ``key=`` (escaped), whether it is an integer metric, cached ``key=value`` texts of
its booleans and short strings."""


@dataclass(slots=True)
class FieldWriter:
    """Formats typed field values and counts what it had to leave out or cut."""

    skipped: Counter[str]

    def number(self, name: str, value: float | int, as_int: bool) -> str | None:
        """A float field, or an integer field (``i`` suffix) when ``as_int``."""
        if as_int:
            if isinstance(value, float):
                if not value.is_integer():
                    self.skipped[SkipReason.NOT_INTEGRAL if math.isfinite(value) else SkipReason.NON_FINITE] += 1
                    return None
                value = int(value)
            if not _INT64_MIN <= value <= _INT64_MAX:
                self.skipped[SkipReason.INT_RANGE] += 1
                return None
            return f"{value}i"
        try:
            f = float(value)
        except OverflowError:
            self.skipped[SkipReason.INT_RANGE] += 1
            return None
        if not math.isfinite(f):
            self.skipped[SkipReason.NON_FINITE] += 1
            return None
        return repr(f)

    def string(self, value: str) -> str:
        """A quoted string field, cut at ``MAX_STRING_CHARS``."""
        if len(value) > MAX_STRING_CHARS:
            self.skipped[SkipReason.TRUNCATED] += 1
            value = value[:MAX_STRING_CHARS]
        return quote_string(value)

    def value(self, name: str, value: MetricValue, int_names: frozenset[str]) -> str | None:
        """Any metric value, typed by the catalogue (bool, int metric, float, string)."""
        if value is True:
            return "true"
        if value is False:
            return "false"
        if isinstance(value, str):
            return self.string(value)
        return self.number(name, value, name in int_names)


class LineEncoder:
    """Turns contract messages into line-protocol lines (``str``, no trailing newline).

    Pure apart from bounded caches (per metric name, per device, short string values) and the
    ``skipped`` counter; the same input always gives the same line.
    """

    def __init__(self, int_metrics: frozenset[str] = INT_METRICS, cache_size: int = 100_000) -> None:
        self.int_metrics = int_metrics
        self.skipped: Counter[str] = Counter()
        self._fields = FieldWriter(self.skipped)
        self._keys: dict[str, str] = {}
        self._specs: dict[str, _MetricSpec] = {}
        self._prefixes: dict[str, tuple[Kind | str, str | None, str]] = {}
        """device id -> (kind, site, ``telemetry_{kind},device=..,kind=..,site=..``)."""
        self._words = 0
        """Cached ``key="value"`` texts in all ``_MetricSpec.words`` (bounded by ``_MAX_WORDS``)."""
        self._cache_size = cache_size

    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= self._cache_size:
                self._keys.clear()
            key = self._keys[name] = escape_key(name)
        return key

    def _fields_line(self, fields: dict[str, str | None]) -> str:
        return ",".join(f"{self._key(k)}={v}" for k, v in fields.items() if v is not None)

    def _spec(self, name: str) -> _MetricSpec:
        if len(self._specs) >= self._cache_size:
            self._specs.clear()
            self._words = 0
        eq = self._key(name) + "="
        spec = self._specs[name] = (eq, name in self.int_metrics, {True: eq + "true", False: eq + "false"})
        return spec

    def _word(self, spec: _MetricSpec, value: str) -> str:
        """``key="value"`` of a short string, cached: a fleet repeats a few states (door "closed", mode "normal")."""
        text = f'{spec[0]}"{value.translate(_STRING_ESC)}"'
        if self._words >= _MAX_WORDS:
            self._specs.clear()  # rebuilt on the next messages, with empty word caches
            self._words = 0
        else:
            spec[2][value] = text
            self._words += 1
        return text

    def telemetry(self, kind: Kind | str, device_id: str, site: str | None, msg: Telemetry) -> str | None:
        """The point of one telemetry message, or None when it has no storable field."""
        cached = self._prefixes.get(device_id)
        if cached is not None and cached[1] == site and cached[0] == kind:
            prefix = cached[2]
        else:
            if len(self._prefixes) >= self._cache_size:
                self._prefixes.clear()
            prefix = tag_section(f"telemetry_{kind}", {"device": device_id, "kind": str(kind), "site": site})
            self._prefixes[device_id] = (kind, site, prefix)
        specs = self._specs
        metrics = msg.metrics
        parts: list[str] = []
        append = parts.append
        # One branch per value type, most common first (this runs for every metric of every message).
        for name, value in metrics.items():
            spec = specs.get(name)
            if spec is None:
                spec = self._spec(name)
            t = type(value)
            if t is float:
                # ``x - x`` is 0.0 for every finite float and NaN for inf and NaN (cheaper than isfinite).
                if not spec[1] and value - value == 0.0:  # type: ignore[operator]
                    append(spec[0] + repr(value))
                    continue
            elif t is str:
                if len(value) <= _WORD_CHARS:  # type: ignore[arg-type]
                    word = spec[2].get(value)
                    append(word if word is not None else self._word(spec, value))  # type: ignore[arg-type]
                    continue
                if len(value) <= MAX_STRING_CHARS:  # type: ignore[arg-type]
                    append(f'{spec[0]}"{value.translate(_STRING_ESC)}"')  # type: ignore[union-attr]
                    continue
            elif t is bool:
                append(spec[2][value])
                continue
            elif t is int:
                if spec[1]:
                    if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
                        append(f"{spec[0]}{value}i")
                        continue
                elif -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:  # type: ignore[operator]
                    append(spec[0] + repr(float(value)))  # a JSON integer of a float metric (load_kg: 0)
                    continue
            # Everything else (non-finite, out of range, too long, subclasses): the general path counts it.
            text = self._fields.value(name, value, self.int_metrics)
            if text is not None:
                append(spec[0] + text)
        if msg.quality:
            fw = self._fields
            for code, flag in msg.quality.items():
                append(f"{self._key(code + '.Flag')}={fw.string(flag)}")
        seq = msg.seq
        if seq is not None and "seq" not in metrics:
            if 0 <= seq <= _INT64_MAX:
                append(f"seq={seq}i")
            else:
                text = self._fields.number("seq", seq, True)
                if text is not None:
                    append(f"seq={text}")
        if not parts:
            self.skipped[SkipReason.NO_FIELDS] += 1
            return None
        return f"{prefix} {','.join(parts)} {(msg.ts - _EPOCH) // _MILLISECOND}000000"

    def event(self, kind: Kind | str, device_id: str, site: str | None, ev: DeviceEvent) -> str:
        """The point of one device event (``count=1i`` so ``sum(count)`` counts events)."""
        fw = self._fields
        head = tag_section("events", {
            "device": device_id, "kind": str(kind), "severity": ev.severity.value if ev.severity else None,
            "site": site, "state": ev.state, "type": ev.type,
        })
        fields: dict[str, str | None] = {
            "count": "1i",
            "event_id": fw.string(ev.event_id) if ev.event_id else None,
            "zone": fw.string(ev.zone) if ev.zone else None,
            "measure": fw.number("measure", ev.measure, False) if ev.measure is not None else None,
            "message": fw.string(ev.message) if ev.message else None,
            "snapshot_url": fw.string(ev.snapshot_url) if ev.snapshot_url else None,
            "data": fw.string(_json(ev.data)) if ev.data else None,
        }
        return f"{head} {self._fields_line(fields)} {epoch_ms(ev.ts)}000000"

    def status(self, kind: Kind | str, device_id: str, site: str | None, st: DeviceStatus,
               received_at: float = 0.0) -> str | None:
        """The point of one status message; without its own ``ts`` the receive time is used."""
        if st.ts is not None:
            ms = epoch_ms(st.ts)
        elif received_at > 0:
            ms = int(received_at * 1000)
        else:
            self.skipped[SkipReason.NO_TIME] += 1
            return None
        fw = self._fields
        head = tag_section("status", {"device": device_id, "kind": str(kind), "site": site})
        fields: dict[str, str | None] = {
            "online": "true" if st.online else "false",
            "reason": fw.string(st.reason) if st.reason else None,
            "agent": fw.string(st.agent) if st.agent else None,
            "detail": fw.string(_json(st.detail)) if st.detail else None,
        }
        return f"{head} {self._fields_line(fields)} {ms}000000"

    def alert(self, al: Alert) -> str:
        """The point of one alert state change, at ``updated_at``; ``age_s`` is time since it started."""
        fw = self._fields
        head = tag_section("alerts", {
            "device": al.device_id, "kind": al.kind.value, "rule": al.rule, "severity": al.severity.value,
            "site": al.site, "status": al.status.value,
        })
        age = (al.updated_at - al.starts_at).total_seconds()
        fields: dict[str, str | None] = {
            "id": fw.string(al.id),
            "fingerprint": fw.string(al.fingerprint),
            "summary": fw.string(al.summary),
            "summary_en": fw.string(al.summary_en) if al.summary_en else None,
            "description": fw.string(al.description) if al.description else None,
            "age_s": fw.number("age_s", age, False),
            "starts_at": fw.string(format_ts(al.starts_at)),
            "ends_at": fw.string(format_ts(al.ends_at)) if al.ends_at else None,
            "acknowledged_by": fw.string(al.acknowledged_by) if al.acknowledged_by else None,
            "assignee": fw.string(al.assignee) if al.assignee else None,
            "ack_by": fw.string(format_ts(al.ack_by)) if al.ack_by else None,
            "resolve_by": fw.string(format_ts(al.resolve_by)) if al.resolve_by else None,
            "reason": fw.string(al.reason) if al.reason else None,
            "snapshot_url": fw.string(al.snapshot_url) if al.snapshot_url else None,
            "values": fw.string(_json(al.values)) if al.values else None,
            "labels": fw.string(_json(al.labels)) if al.labels else None,
        }
        return f"{head} {self._fields_line(fields)} {epoch_ms(al.updated_at)}000000"

    def dead_letter(self, dl: DeadLetter) -> str:
        """The point of one dead letter, at microsecond precision so a burst keeps every record."""
        fw = self._fields
        head = tag_section("dead_letters", {"reason": dl.reason.value, "stage": dl.stage})
        fields: dict[str, str | None] = {
            "topic": fw.string(dl.topic),
            "detail": fw.string(dl.detail),
            "size": f"{dl.size}i",
            "payload": fw.string(dl.payload),
            "payload_encoding": fw.string(dl.payload_encoding),
            "truncated": "true" if dl.truncated else "false",
        }
        return f"{head} {self._fields_line(fields)} {epoch_us(dl.ts)}000"


def _json(value: Any) -> str:
    return _JSON.encode(value).decode("utf-8")


# ---------------------------------------------------------------------------- reading back

FieldValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class ParsedPoint:
    """One line of line protocol, parsed."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts: int
    """Nanoseconds since the epoch."""

    @property
    def series(self) -> str:
        """The series key: measurement and sorted tags (what InfluxDB deduplicates on with ``ts``)."""
        return ",".join([self.measurement, *(f"{k}={v}" for k, v in sorted(self.tags.items()))])


class LineSyntaxError(StorageError, ValueError):
    """A line is not valid line protocol."""


def _scan(text: str, start: int, stops: str) -> tuple[str, int]:
    """Read an escaped token up to an unescaped stop character; returns (unescaped, index of stop)."""
    out: list[str] = []
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in ",= ":
            out.append(text[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _field_value(text: str, i: int) -> tuple[FieldValue, int]:
    if i < len(text) and text[i] == '"':
        out: list[str] = []
        i += 1
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                # Like InfluxDB: only the quote and the backslash are escapes here.
                nxt = text[i + 1]
                out.append(nxt if nxt in '"\\' else "\\" + nxt)
                i += 2
                continue
            if c == '"':
                return "".join(out), i + 1
            out.append(c)
            i += 1
        raise LineSyntaxError("unterminated string field")
    j = i
    while j < len(text) and text[j] not in ", ":
        j += 1
    raw = text[i:j]
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True, j
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False, j
    try:
        if raw.endswith("i"):
            return int(raw[:-1]), j
        if raw.endswith("u"):
            return int(raw[:-1]), j
        return float(raw), j
    except ValueError:
        raise LineSyntaxError(f"bad field value {raw[:40]!r}") from None


def parse_line(line: str) -> ParsedPoint:
    """Parse one line (the subset Vigil writes: escaped names, typed fields, an integer timestamp).

    Raises:
        LineSyntaxError: the line is not valid line protocol.
    """
    measurement, i = _scan(line, 0, ", ")
    if not measurement:
        raise LineSyntaxError("missing measurement")
    tags: dict[str, str] = {}
    while i < len(line) and line[i] == ",":
        key, i = _scan(line, i + 1, "=, ")
        if i >= len(line) or line[i] != "=":
            raise LineSyntaxError(f"tag {key!r} without value")
        value, i = _scan(line, i + 1, ", ")
        tags[key] = value
    if i >= len(line) or line[i] != " ":
        raise LineSyntaxError("missing fields")
    fields: dict[str, FieldValue] = {}
    i += 1
    while True:
        key, i = _scan(line, i, "= ")
        if i >= len(line) or line[i] != "=" or not key:
            raise LineSyntaxError("field without value")
        fields[key], i = _field_value(line, i + 1)
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        break
    rest = line[i:].strip()
    if not rest:
        raise LineSyntaxError("missing timestamp")
    try:
        ts = int(rest)
    except ValueError:
        raise LineSyntaxError(f"bad timestamp {rest[:30]!r}") from None
    return ParsedPoint(measurement, tags, fields, ts)
