"""Vigil's shared contracts: MQTT topic names and versioned JSON payloads.

Every stage imports this module and nothing else of the other stages. Payloads are
msgspec Structs: decoding validates types, unknown extra fields in device payloads are
tolerated, and every rejection carries a machine-readable reason (see ``RejectReason``).

Timestamps are RFC 3339 strings with an offset (``2026-11-26T05:49:02.123Z``); the
platform works in UTC and converts to local time (Asia/Shanghai by default) only for
people. Units are SI unless the metric catalogue (docs/contracts.md) says otherwise.
"""

from __future__ import annotations

import base64
import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from broker.errors import BrokerError

SCHEMA_VERSION: Final = 1
TOPIC_ROOT: Final = "vigil/v1"
MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest device payload accepted; bigger ones are dead-lettered as ``too_large``."""

DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
METRIC_NAME_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
_DEVICE_ID_RE: Final = re.compile(DEVICE_ID_PATTERN)


class Kind(enum.StrEnum):
    """Device kinds the platform knows; a message for another kind is dead-lettered."""

    ELEVATOR = "elevator"
    EMISSION = "emission"
    VEHICLE = "vehicle"
    CAMERA = "camera"
    SENSOR = "sensor"
    VIGIL = "vigil"
    """The platform itself (``device_id`` = node name): its health alerts (``vigil.health``). Platform
    only: a device topic of this kind is refused (``unknown_kind``), so nothing can speak for it."""


class Channel(enum.StrEnum):
    """The last level of a device topic."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"
    COMMAND = "command"


class Severity(enum.StrEnum):
    """Alert severity, lowest first."""

    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class AlertStatus(enum.StrEnum):
    """Alert lifecycle states."""

    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class RejectReason(enum.StrEnum):
    """Why a message was refused at the platform boundary."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    SCHEMA = "schema"
    UNKNOWN_KIND = "unknown_kind"
    BAD_TOPIC = "bad_topic"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_DEVICE = "unknown_device"


UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]
MetricValue = float | int | bool | str
Labels = dict[str, str]


# ---------------------------------------------------------------------------- topics

def device_topic(kind: Kind | str, device_id: str, channel: Channel | str) -> str:
    """Topic of one device's channel: ``vigil/v1/{kind}/{device_id}/{channel}``."""
    return f"{TOPIC_ROOT}/{kind}/{device_id}/{channel}"


def device_filter(channel: Channel | str, kind: Kind | str = "+") -> str:
    """Subscription filter for one channel of every device (of one kind or all)."""
    return f"{TOPIC_ROOT}/{kind}/+/{channel}"


TRANSITIONS_FILTER: Final = f"{TOPIC_ROOT}/transitions/#"
ALERTS_FILTER: Final = f"{TOPIC_ROOT}/alerts/#"
DEAD_LETTER_FILTER: Final = f"{TOPIC_ROOT}/deadletter/#"


def transition_topic(kind: Kind | str, device_id: str) -> str:
    """Topic on which the rules engine hands alert transitions to alerting."""
    return f"{TOPIC_ROOT}/transitions/{kind}/{device_id}"


def alert_topic(kind: Kind | str, device_id: str, alert_id: str) -> str:
    """Topic of one alert's state: ``vigil/v1/alerts/{kind}/{device_id}/{alert_id}``."""
    return f"{TOPIC_ROOT}/alerts/{kind}/{device_id}/{alert_id}"


def dead_letter_topic(stage: str) -> str:
    """Topic on which a stage publishes the messages it refused."""
    return f"{TOPIC_ROOT}/deadletter/{stage}"


class DeviceTopic(msgspec.Struct, frozen=True):
    """A parsed device topic (a Struct: built for every message, ~6x cheaper than a frozen dataclass)."""

    kind: Kind
    device_id: str
    channel: Channel


PLATFORM_KINDS: Final = frozenset({Kind.VIGIL})
"""Kinds that only the platform publishes transitions and alerts for; never device data."""
_KINDS: Final = {k.value: k for k in Kind if k not in PLATFORM_KINDS}
_CHANNELS: Final = {c.value: c for c in Channel}


def parse_device_topic(topic: str) -> DeviceTopic:
    """Parse ``vigil/v1/{kind}/{device_id}/{channel}``.

    Raises:
        Rejected: with ``bad_topic`` or ``unknown_kind``.
    """
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "vigil" or parts[1] != "v1":
        raise Rejected(RejectReason.BAD_TOPIC, f"not a device topic: {topic[:200]!r}")
    kind = _KINDS.get(parts[2])
    if kind is None:
        raise Rejected(RejectReason.UNKNOWN_KIND, f"unknown device kind {parts[2][:64]!r}")
    channel = _CHANNELS.get(parts[4])
    if channel is None:
        raise Rejected(RejectReason.BAD_TOPIC, f"unknown channel {parts[4][:64]!r}")
    if not _DEVICE_ID_RE.match(parts[3]):
        raise Rejected(RejectReason.BAD_TOPIC, f"invalid device id {parts[3][:64]!r}")
    return DeviceTopic(kind, parts[3], channel)


# ---------------------------------------------------------------------------- payloads

class Telemetry(msgspec.Struct, frozen=True, kw_only=True):
    """Measurements from one device at one instant (``.../telemetry``).

    ``metrics`` maps metric names (see the catalogue in docs/contracts.md) to values;
    ``quality`` optionally maps a metric to its data flag (HJ 212: N normal, M, C, D, ...).
    """

    v: int = SCHEMA_VERSION
    ts: UtcTime
    metrics: dict[Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)], MetricValue]
    site: str | None = None
    seq: int | None = None
    quality: dict[str, str] | None = None


class DeviceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something a device or edge agent detected (``.../event``).

    Events with a duration send ``state="start"`` and later ``state="end"`` with the same
    ``event_id``; one-off events use ``state="instant"``.
    """

    v: int = SCHEMA_VERSION
    ts: UtcTime
    type: Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]
    state: Literal["start", "end", "instant"] = "instant"
    event_id: str | None = None
    severity: Severity | None = None
    zone: str | None = None
    measure: float | None = None
    snapshot_url: str | None = None
    message: str | None = None
    data: dict[str, Any] = {}


class DeviceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Device health, published retained (``.../status``); the last will says offline."""

    v: int = SCHEMA_VERSION
    ts: UtcTime | None = None
    online: bool
    reason: str | None = None
    agent: str | None = None
    detail: dict[str, Any] = {}


class DeviceCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A platform request to a device or the gateway hosting it (``.../command``; platform accounts only).

    ``command`` is namespaced by protocol (``hj212.history``, ``hj212.set_time``); the gateway audits
    what it did with it as events on the device's ``.../event`` topic, naming ``command_id``.
    """

    v: int = SCHEMA_VERSION
    ts: UtcTime
    command: Annotated[str, msgspec.Meta(pattern=METRIC_NAME_PATTERN)]
    command_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    params: dict[str, Any] = {}


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A rule's decision handed from the rules engine to alerting."""

    v: int = SCHEMA_VERSION
    ts: UtcTime
    fingerprint: str
    rule: str
    status: Literal["firing", "resolved"]
    severity: Severity
    kind: Kind
    device_id: str
    site: str | None = None
    labels: Labels = {}
    summary: str = ""
    summary_en: str = ""
    description: str = ""
    values: dict[str, MetricValue] = {}
    started_at: UtcTime | None = None
    source_ts: UtcTime | None = None
    """Device timestamp of the message that caused the transition."""
    received_at: float | None = None
    """Wall-clock (epoch seconds) when the rules engine received that message; latency tracing."""
    snapshot_url: str | None = None


class WorkOrderState(msgspec.Struct, frozen=True, kw_only=True):
    """Where an alert's work order stands (``alerting.workorders``): stage, grid, who has it, deadlines."""

    stage: str
    """new, dispatched, accepted, en_route, on_site, handled, verified, closed or returned."""
    grid: str = ""
    assignee: str | None = None
    source: str = "device"
    """``device`` (a rule fired) or ``grid_staff`` (reported from the field)."""
    policy: str = ""
    next_due: UtcTime | None = None
    overdue: list[str] = []
    """Milestones past their deadline before being reached (since the latest dispatch)."""


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """An alert's state as published on ``vigil/v1/alerts/...``."""

    v: int = SCHEMA_VERSION
    id: str
    fingerprint: str
    rule: str
    severity: Severity
    status: AlertStatus
    kind: Kind
    device_id: str
    site: str | None = None
    labels: Labels = {}
    summary: str
    summary_en: str = ""
    description: str = ""
    values: dict[str, MetricValue] = {}
    starts_at: UtcTime
    updated_at: UtcTime
    ends_at: UtcTime | None = None
    acknowledged_by: str | None = None
    assignee: str | None = None
    ack_by: UtcTime | None = None
    resolve_by: UtcTime | None = None
    snapshot_url: str | None = None
    reason: str | None = None
    work_order: WorkOrderState | None = None
    """Present once work orders are enabled and the alert has one (older consumers ignore it)."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A refused message, published on ``vigil/v1/deadletter/{stage}`` with the reason."""

    v: int = SCHEMA_VERSION
    ts: UtcTime
    stage: str
    reason: RejectReason
    detail: str
    topic: str
    size: int
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    truncated: bool


# ---------------------------------------------------------------------------- validation

class Rejected(BrokerError):
    """A message refused at the boundary, with its reason and a human-readable detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class _TelemetryWire(msgspec.Struct, frozen=True, kw_only=True):
    """``Telemetry`` as decoded: metric names are checked after decoding, against the names already seen valid.

    msgspec checks a key pattern with a regex for every key of every message: 4 of the 5.5 µs of decoding an
    elevator's 11 metrics. A fleet sends the same few dozen names, so each is checked once.
    """

    v: int = SCHEMA_VERSION
    ts: UtcTime
    metrics: dict[str, MetricValue]
    site: str | None = None
    seq: int | None = None
    quality: dict[str, str] | None = None


_METRIC_NAME_RE: Final = re.compile(METRIC_NAME_PATTERN)
_VALID_METRIC_NAMES: set[str] = set()


def _telemetry(wire: _TelemetryWire) -> Telemetry:
    """The ``Telemetry`` of a decoded message, refusing a metric name the contract does not allow."""
    valid = _VALID_METRIC_NAMES
    # A fleet's messages carry names already seen: one set operation in C instead of a loop per name.
    for name in () if valid.issuperset(wire.metrics) else wire.metrics:
        if name not in valid:
            if not _METRIC_NAME_RE.search(name):  # search, as msgspec applies a pattern
                raise Rejected(RejectReason.SCHEMA, f"Expected `str` matching regex {METRIC_NAME_PATTERN!r} - "
                                                    f"at `key` in `$.metrics` ({name[:64]!r})")
            if len(valid) < 100_000:
                valid.add(name)
    return Telemetry(v=wire.v, ts=wire.ts, metrics=wire.metrics, site=wire.site, seq=wire.seq, quality=wire.quality)


_DECODERS: Final[dict[Channel, msgspec.json.Decoder[Any]]] = {
    Channel.TELEMETRY: msgspec.json.Decoder(_TelemetryWire),
    Channel.EVENT: msgspec.json.Decoder(DeviceEvent),
    Channel.STATUS: msgspec.json.Decoder(DeviceStatus),
}
_TRANSITION_DECODER: Final = msgspec.json.Decoder(Transition)
_ALERT_DECODER: Final = msgspec.json.Decoder(Alert)
_DEAD_LETTER_DECODER: Final = msgspec.json.Decoder(DeadLetter)
_COMMAND_DECODER: Final = msgspec.json.Decoder(DeviceCommand)
_ENCODER: Final = msgspec.json.Encoder()

DevicePayload = Telemetry | DeviceEvent | DeviceStatus


class DeviceMessage(msgspec.Struct, frozen=True):
    """A validated device message with the identity taken from its topic (built for every message)."""

    kind: Kind
    device_id: str
    channel: Channel
    payload: DevicePayload
    received_at: float = 0.0
    """Wall-clock time (epoch seconds) at which the platform read the message."""


def _decode(decoder: msgspec.json.Decoder[Any], payload: bytes, limit: int) -> Any:
    if len(payload) > limit:
        raise Rejected(RejectReason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {limit}")
    if not payload.isascii():
        # msgspec does not check UTF-8 inside strings, so check it here (ASCII is the fast path).
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise Rejected(RejectReason.NOT_UTF8, f"invalid UTF-8 at byte {uexc.start}") from None
    try:
        value = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise Rejected(RejectReason.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Rejected(RejectReason.MALFORMED_JSON, str(exc)) from None
    if value.v != SCHEMA_VERSION:
        raise Rejected(RejectReason.UNSUPPORTED_VERSION, f"schema version {value.v} is not {SCHEMA_VERSION}")
    return value


def decode_device_message(topic: str, payload: bytes, limit: int = MAX_PAYLOAD_BYTES,
                          received_at: float = 0.0) -> DeviceMessage:
    """Validate a message published on a device topic.

    Raises:
        Rejected: the message is refused; ``reason`` says why.
    """
    return decode_device_payload(parse_device_topic(topic), payload, limit, received_at)


def decode_device_payload(parsed: DeviceTopic, payload: bytes, limit: int = MAX_PAYLOAD_BYTES,
                          received_at: float = 0.0) -> DeviceMessage:
    """``decode_device_message`` for a topic already parsed (the ingest caches parsed topics).

    Raises:
        Rejected: the message is refused; ``reason`` says why.
    """
    decoder = _DECODERS.get(parsed.channel)
    if decoder is None:
        raise Rejected(RejectReason.BAD_TOPIC, f"channel {parsed.channel.value!r} is not accepted from devices")
    value = _decode(decoder, payload, limit)
    if parsed.channel is Channel.TELEMETRY:
        value = _telemetry(value)
    return DeviceMessage(parsed.kind, parsed.device_id, parsed.channel, value, received_at)


def decode_transition(payload: bytes) -> Transition:
    """Validate a transition from the rules engine. Raises ``Rejected``."""
    return _decode(_TRANSITION_DECODER, payload, MAX_PAYLOAD_BYTES)  # type: ignore[no-any-return]


def decode_alert(payload: bytes) -> Alert:
    """Validate an alert state message. Raises ``Rejected``."""
    return _decode(_ALERT_DECODER, payload, MAX_PAYLOAD_BYTES)  # type: ignore[no-any-return]


def decode_dead_letter(payload: bytes) -> DeadLetter:
    """Validate a dead-letter record. Raises ``Rejected``."""
    return _decode(_DEAD_LETTER_DECODER, payload, MAX_PAYLOAD_BYTES)  # type: ignore[no-any-return]


def decode_command(payload: bytes) -> DeviceCommand:
    """Validate a platform command. Raises ``Rejected``."""
    return _decode(_COMMAND_DECODER, payload, MAX_PAYLOAD_BYTES)  # type: ignore[no-any-return]


def encode(message: msgspec.Struct) -> bytes:
    """Encode any contract message as compact JSON."""
    return _ENCODER.encode(message)


DEAD_LETTER_PAYLOAD_LIMIT: Final = 4096
"""Bytes of a refused payload kept in its dead letter (the rest is cut, ``truncated``)."""


def make_dead_letter(stage: str, topic: str, payload: bytes, reason: RejectReason, detail: str,
                     now: datetime | None = None) -> DeadLetter:
    """Build the dead-letter record for a refused message."""
    kept = payload[:DEAD_LETTER_PAYLOAD_LIMIT]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return DeadLetter(
        ts=now or utcnow(), stage=stage, reason=reason, detail=detail[:1000], topic=topic[:512],
        size=len(payload), payload=text, payload_encoding=encoding,  # type: ignore[arg-type]
        truncated=len(payload) > len(kept),
    )


def utcnow() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def format_ts(ts: datetime) -> str:
    """RFC 3339 UTC with milliseconds, the contract's timestamp form."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
