"""JT/T 808 message bodies: parsers for what terminals send, builders for both directions.

Pure; every parser either returns a typed value or raises ``Jt808DecodeError`` with a reason.
Strings are GBK (the standard's STRING type); numbers are big-endian.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from edge.jt808.codec import Jt808DecodeError, ProtocolVersion, RejectionReason


class MsgId(enum.IntEnum):
    """Message ids handled by Vigil."""

    TERMINAL_GENERAL_REPLY = 0x0001
    HEARTBEAT = 0x0002
    LOGOUT = 0x0003
    REGISTER = 0x0100
    AUTHENTICATE = 0x0102
    LOCATION = 0x0200
    BATCH_LOCATION = 0x0704
    PLATFORM_GENERAL_REPLY = 0x8001
    REGISTER_REPLY = 0x8100


class ReplyResult(enum.IntEnum):
    """Result byte of the platform general reply (0x8001)."""

    OK = 0
    FAIL = 1
    BAD_MESSAGE = 2
    UNSUPPORTED = 3
    ALARM_CONFIRMED = 4


class RegisterResult(enum.IntEnum):
    """Result byte of the register reply (0x8100)."""

    OK = 0
    VEHICLE_ALREADY_REGISTERED = 1
    VEHICLE_NOT_IN_DATABASE = 2
    TERMINAL_ALREADY_REGISTERED = 3
    TERMINAL_NOT_IN_DATABASE = 4


class StatusBit(enum.IntFlag):
    """Status bits of a location report used by Vigil."""

    ACC_ON = 1 << 0
    GNSS_FIXED = 1 << 1
    SOUTH = 1 << 2
    WEST = 1 << 3


# Plain ints in the hot path: IntFlag arithmetic costs more than the whole checksum.
_ACC_ON: Final = int(StatusBit.ACC_ON)
_GNSS_FIXED: Final = int(StatusBit.GNSS_FIXED)
_SOUTH: Final = int(StatusBit.SOUTH)
_WEST: Final = int(StatusBit.WEST)

CHINA_STANDARD_TIME: Final = timezone(timedelta(hours=8), "CST")
"""Terminals send times in UTC+8."""

_LOCATION = struct.Struct(">IIIIHHH6s")
_REGISTER_2013 = struct.Struct(">HH5s20s7sB")
_REGISTER_2019 = struct.Struct(">HH11s30s30sB")
_GENERAL_REPLY = struct.Struct(">HHB")
_WORD = struct.Struct(">H")
_DWORD = struct.Struct(">I")


def _text(raw: bytes) -> str:
    """A fixed-width or terminated GBK field as text (padding and terminators dropped)."""
    return raw.split(b"\x00", 1)[0].strip(b" \xff").decode("gbk", errors="replace")


def _gbk(text: str, width: int | None = None) -> bytes:
    raw = text.encode("gbk")
    if width is None:
        return raw
    return raw[:width].ljust(width, b"\x00")


# ---------------------------------------------------------------------------- terminal -> platform

@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """Terminal registration (0x0100)."""

    province: int
    city: int
    manufacturer: str
    model: str
    terminal_id: str
    plate_color: int
    plate: str


def parse_register(body: bytes, version: ProtocolVersion) -> RegisterRequest:
    """Parse a 0x0100 body. Raises ``Jt808DecodeError`` (``bad_body``)."""
    layout = _REGISTER_2019 if version is ProtocolVersion.V2019 else _REGISTER_2013
    if len(body) < layout.size:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"register body of {len(body)} bytes, need {layout.size}")
    province, city, maker, model, term, color = layout.unpack_from(body)
    return RegisterRequest(province, city, _text(maker), _text(model), _text(term), color, _text(body[layout.size:]))


def build_register(req: RegisterRequest, version: ProtocolVersion) -> bytes:
    """Build a 0x0100 body."""
    if version is ProtocolVersion.V2019:
        widths = (11, 30, 30)
        layout = _REGISTER_2019
    else:
        widths, layout = (5, 20, 7), _REGISTER_2013
    return layout.pack(req.province, req.city, _gbk(req.manufacturer, widths[0]), _gbk(req.model, widths[1]),
                       _gbk(req.terminal_id, widths[2]), req.plate_color) + _gbk(req.plate)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Terminal authentication (0x0102); IMEI and software version only in 2019."""

    code: str
    imei: str = ""
    software_version: str = ""


def parse_auth(body: bytes, version: ProtocolVersion) -> AuthRequest:
    """Parse a 0x0102 body. Raises ``Jt808DecodeError`` (``bad_body``)."""
    if version is ProtocolVersion.V2013:
        if not body:
            raise Jt808DecodeError(RejectionReason.BAD_BODY, "empty authentication code")
        return AuthRequest(_text(body))
    if not body or len(body) < 1 + body[0] + 15 + 20:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"2019 authentication body of {len(body)} bytes is short")
    n = body[0]
    return AuthRequest(_text(body[1:1 + n]), _text(body[1 + n:16 + n]), _text(body[16 + n:36 + n]))


def build_auth(req: AuthRequest, version: ProtocolVersion) -> bytes:
    """Build a 0x0102 body."""
    code = _gbk(req.code)
    if version is ProtocolVersion.V2013:
        return code
    return bytes((len(code),)) + code + _gbk(req.imei, 15) + _gbk(req.software_version, 20)


@dataclass(frozen=True, slots=True)
class LocationReport:
    """One position (0x0200 body, or one item of 0x0704)."""

    alarm_flags: int
    status_flags: int
    latitude: float
    """Degrees, WGS-84, negative in the southern hemisphere."""
    longitude: float
    """Degrees, WGS-84, negative in the western hemisphere."""
    altitude_m: int
    speed_kmh: float
    heading_deg: int
    time: datetime
    """The terminal's time converted to UTC."""
    extras: Mapping[int, bytes] = field(default_factory=dict)
    """Additional information items (TLV) by id, raw values."""

    @property
    def ignition(self) -> bool:
        """ACC on (status bit 0)."""
        return bool(self.status_flags & _ACC_ON)

    @property
    def gnss_fixed(self) -> bool:
        """The position is a GNSS fix (status bit 1)."""
        return bool(self.status_flags & _GNSS_FIXED)

    def extra_metrics(self) -> dict[str, float | int]:
        """Known additional items as named metrics (unknown items and odd lengths are skipped)."""
        out: dict[str, float | int] = {}
        for item_id, raw in self.extras.items():
            spec = EXTRA_METRICS.get(item_id)
            if spec is not None and len(raw) == spec[1]:
                value = int.from_bytes(raw, "big")
                out[spec[0]] = value / spec[2] if spec[2] != 1 else value
        return out


EXTRA_METRICS: Final[dict[int, tuple[str, int, int]]] = {
    0x01: ("mileage_km", 4, 10),
    0x02: ("fuel_l", 2, 10),
    0x03: ("recorder_speed_kmh", 2, 10),
    0x30: ("signal_strength", 1, 1),
    0x31: ("gnss_satellites", 1, 1),
}
"""Additional-information items published as metrics: id -> (name, length, divisor)."""


def parse_bcd_time(raw: bytes) -> datetime:
    """Parse BCD[6] YYMMDDhhmmss in UTC+8 and return it in UTC. Raises ``bad_time``."""
    digits = raw.hex()
    if not digits.isdigit():
        raise Jt808DecodeError(RejectionReason.BAD_TIME, f"time {digits!r} is not BCD")
    try:
        local = datetime(2000 + int(digits[0:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6:8]),
                         int(digits[8:10]), int(digits[10:12]), tzinfo=CHINA_STANDARD_TIME)
    except ValueError:
        raise Jt808DecodeError(RejectionReason.BAD_TIME, f"time {digits} is not a valid date") from None
    return local.astimezone(UTC)


def build_bcd_time(ts: datetime) -> bytes:
    """Encode an aware datetime as BCD[6] YYMMDDhhmmss in UTC+8."""
    return bytes.fromhex(ts.astimezone(CHINA_STANDARD_TIME).strftime("%y%m%d%H%M%S"))


def parse_location(body: bytes) -> LocationReport:
    """Parse a 0x0200 body (or one 0x0704 item).

    Raises:
        Jt808DecodeError: ``bad_body`` (short), ``bad_time``, ``bad_position`` or ``bad_tlv``.
    """
    if len(body) < _LOCATION.size:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"location body of {len(body)} bytes, need {_LOCATION.size}")
    alarm, status, lat, lon, alt, speed, heading, bcd = _LOCATION.unpack_from(body)
    if lat > 90_000_000 or lon > 180_000_000:
        raise Jt808DecodeError(RejectionReason.BAD_POSITION, f"latitude {lat} / longitude {lon} out of range")
    ts = parse_bcd_time(bcd)
    extras: dict[int, bytes] = {}
    pos, n = _LOCATION.size, len(body)
    while pos < n:
        if pos + 2 > n:
            raise Jt808DecodeError(RejectionReason.BAD_TLV, f"additional item header cut at byte {pos}")
        item_id, length = body[pos], body[pos + 1]
        end = pos + 2 + length
        if end > n:
            raise Jt808DecodeError(RejectionReason.BAD_TLV, f"item 0x{item_id:02x} of {length} bytes overruns the body")
        extras[item_id] = body[pos + 2:end]
        pos = end
    return LocationReport(
        alarm, status,
        -lat / 1e6 if status & _SOUTH else lat / 1e6,
        -lon / 1e6 if status & _WEST else lon / 1e6,
        alt, speed / 10, heading % 360, ts, extras,
    )


def build_location(report: LocationReport) -> bytes:
    """Build a 0x0200 body; hemisphere bits are set from the signs of the coordinates."""
    status = report.status_flags & ~(_SOUTH | _WEST)
    if report.latitude < 0:
        status |= _SOUTH
    if report.longitude < 0:
        status |= _WEST
    head = _LOCATION.pack(report.alarm_flags, status, round(abs(report.latitude) * 1e6),
                          round(abs(report.longitude) * 1e6), report.altitude_m, round(report.speed_kmh * 10),
                          report.heading_deg, build_bcd_time(report.time))
    return head + b"".join(bytes((k, len(v))) + v for k, v in report.extras.items())


class BatchKind(enum.IntEnum):
    """0x0704 data type."""

    NORMAL = 0
    BLIND_AREA = 1
    """Positions stored while the terminal had no connection (supplementary upload)."""


@dataclass(frozen=True, slots=True)
class BatchLocation:
    """Batch location upload (0x0704)."""

    kind: BatchKind | int
    reports: tuple[LocationReport, ...]


def parse_batch_location(body: bytes) -> BatchLocation:
    """Parse a 0x0704 body; any bad item refuses the whole batch.

    Raises:
        Jt808DecodeError: ``bad_body`` for bad counts or lengths, or the item's own reason.
    """
    if len(body) < 3:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"batch body of {len(body)} bytes is short")
    count = _WORD.unpack_from(body)[0]
    kind = body[2]
    pos, n = 3, len(body)
    reports: list[LocationReport] = []
    for i in range(count):
        if pos + 2 > n:
            raise Jt808DecodeError(RejectionReason.BAD_BODY, f"batch says {count} items, body ends at item {i}")
        length = _WORD.unpack_from(body, pos)[0]
        end = pos + 2 + length
        if end > n:
            raise Jt808DecodeError(RejectionReason.BAD_BODY, f"batch item {i} of {length} bytes overruns the body")
        reports.append(parse_location(body[pos + 2:end]))
        pos = end
    if pos != n:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"{n - pos} bytes after the last of {count} batch items")
    return BatchLocation(BatchKind(kind) if kind in (0, 1) else kind, tuple(reports))


def build_batch_location(reports: Iterable[LocationReport], kind: BatchKind = BatchKind.NORMAL) -> bytes:
    """Build a 0x0704 body."""
    items = [build_location(r) for r in reports]
    return _WORD.pack(len(items)) + bytes((kind,)) + b"".join(_WORD.pack(len(i)) + i for i in items)


# ---------------------------------------------------------------------------- platform -> terminal

@dataclass(frozen=True, slots=True)
class GeneralReply:
    """Platform (0x8001) or terminal (0x0001) general reply."""

    reply_serial: int
    reply_id: int
    result: int


def build_general_reply(reply_serial: int, reply_id: int, result: ReplyResult) -> bytes:
    """Build a 0x8001 body."""
    return _GENERAL_REPLY.pack(reply_serial & 0xFFFF, reply_id, result)


def parse_general_reply(body: bytes) -> GeneralReply:
    """Parse a 0x8001 / 0x0001 body. Raises ``Jt808DecodeError`` (``bad_body``)."""
    if len(body) < _GENERAL_REPLY.size:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"general reply of {len(body)} bytes")
    return GeneralReply(*_GENERAL_REPLY.unpack_from(body))


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """Register reply (0x8100)."""

    reply_serial: int
    result: int
    auth_code: str


def build_register_reply(reply_serial: int, result: RegisterResult, auth_code: str = "") -> bytes:
    """Build a 0x8100 body; the auth code is sent only on success."""
    body = _WORD.pack(reply_serial & 0xFFFF) + bytes((result,))
    return body + _gbk(auth_code) if result is RegisterResult.OK else body


def parse_register_reply(body: bytes) -> RegisterReply:
    """Parse a 0x8100 body. Raises ``Jt808DecodeError`` (``bad_body``)."""
    if len(body) < 3:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"register reply of {len(body)} bytes")
    return RegisterReply(_WORD.unpack_from(body)[0], body[2], _text(body[3:]))


def dword(value: int) -> bytes:
    """A DWORD, for building additional-information items."""
    return _DWORD.pack(value)


def word(value: int) -> bytes:
    """A WORD, for building additional-information items."""
    return _WORD.pack(value)
