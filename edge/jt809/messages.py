"""JT/T 809-2011 message bodies the gateway reads and writes (pure ``parse_`` / ``build_`` pairs).

Strings are GBK, fixed-width fields padded with NUL. Times inside vehicle positions are the
lower platform's local time, UTC+8; alarm times (0x1402) are UTC seconds since 1970.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from edge.jt808.codec import RejectionReason
from edge.jt809.codec import Jt809DecodeError

CHINA: Final = timezone(timedelta(hours=8))


class MsgId(enum.IntEnum):
    """Message ids (MSG_ID) handled or sent by the gateway."""

    UP_CONNECT_REQ = 0x1001
    UP_CONNECT_RSP = 0x1002
    UP_DISCONNECT_REQ = 0x1003
    UP_DISCONNECT_RSP = 0x1004
    UP_LINKTEST_REQ = 0x1005
    UP_LINKTEST_RSP = 0x1006
    UP_DISCONNECT_INFORM = 0x1007
    UP_CLOSELINK_INFORM = 0x1008
    UP_EXG_MSG = 0x1200
    UP_WARN_MSG = 0x1400
    DOWN_CONNECT_REQ = 0x9001
    DOWN_CONNECT_RSP = 0x9002
    DOWN_DISCONNECT_REQ = 0x9003
    DOWN_DISCONNECT_RSP = 0x9004
    DOWN_LINKTEST_REQ = 0x9005
    DOWN_LINKTEST_RSP = 0x9006


class DataType(enum.IntEnum):
    """Sub-business types (DATA_TYPE) inside 0x1200 and 0x1400."""

    UP_EXG_MSG_REGISTER = 0x1201
    UP_EXG_MSG_REAL_LOCATION = 0x1202
    UP_EXG_MSG_HISTORY_LOCATION = 0x1203
    UP_WARN_MSG_ADPT_INFO = 0x1402
    UP_WARN_MSG_ADPT_TODO_INFO = 0x1403


class LoginResult(enum.IntEnum):
    """0x1002 RESULT."""

    OK = 0
    BAD_IP = 1
    BAD_ACCESS_CODE = 2
    USER_NOT_REGISTERED = 3
    BAD_PASSWORD = 4
    BUSY = 5
    OTHER = 9


class DownConnectResult(enum.IntEnum):
    """0x9002 RESULT."""

    OK = 0
    BAD_VERIFY_CODE = 1
    BUSY = 2
    OTHER = 3


def _bad(detail: str) -> Jt809DecodeError:
    return Jt809DecodeError(RejectionReason.BAD_BODY, detail)


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("gbk", errors="replace").strip()


def _field(text: str, size: int) -> bytes:
    raw = text.encode("gbk")
    if len(raw) > size:
        raise ValueError(f"{text!r} is longer than {size} bytes")
    return raw.ljust(size, b"\x00")


def _need(body: bytes, size: int, what: str, *, exact: bool = True) -> None:
    if len(body) < size or (exact and len(body) != size):
        raise _bad(f"{what}: {len(body)} bytes, expected {size}")


# ---------------------------------------------------------------------------- link management

@dataclass(frozen=True, slots=True)
class LoginRequest:
    """0x1001 UP_CONNECT_REQ."""

    user_id: int
    password: str
    downlink_ip: str
    downlink_port: int


_LOGIN = struct.Struct(">I8s32sH")


def parse_login(body: bytes) -> LoginRequest:
    """Read 0x1001.

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(body, _LOGIN.size, "0x1001")
    user, pw, ip, port = _LOGIN.unpack(body)
    return LoginRequest(user, pw.split(b"\x00", 1)[0].decode("latin-1"), _text(ip), port)


def build_login(req: LoginRequest) -> bytes:
    """0x1001 body."""
    return _LOGIN.pack(req.user_id, req.password.encode("latin-1")[:8].ljust(8, b"\x00"), _field(req.downlink_ip, 32),
                       req.downlink_port)


def parse_login_reply(body: bytes) -> tuple[int, int]:
    """Read 0x1002: (result, verify code).

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(body, 5, "0x1002")
    result, code = struct.unpack(">BI", body)
    return result, code


def build_login_reply(result: LoginResult, verify_code: int) -> bytes:
    """0x1002 body."""
    return struct.pack(">BI", result, verify_code & 0xFFFFFFFF)


def parse_logout(body: bytes) -> tuple[int, str]:
    """Read 0x1003: (user id, password).

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(body, 12, "0x1003")
    user, pw = struct.unpack(">I8s", body)
    return user, pw.split(b"\x00", 1)[0].decode("latin-1")


def build_logout(user_id: int, password: str) -> bytes:
    """0x1003 body."""
    return struct.pack(">I8s", user_id, password.encode("latin-1")[:8].ljust(8, b"\x00"))


def parse_verify_code(body: bytes) -> int:
    """Read 0x9001 / 0x9003: the verify code.

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(body, 4, "verify code")
    return int.from_bytes(body, "big")


def build_verify_code(code: int) -> bytes:
    """0x9001 / 0x9003 body."""
    return (code & 0xFFFFFFFF).to_bytes(4, "big")


def parse_result_byte(body: bytes) -> int:
    """Read a one-byte result (0x9002, 0x1007 error code).

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(body, 1, "result")
    return body[0]


# ---------------------------------------------------------------------------- 0x1200 / 0x1400 envelope

@dataclass(frozen=True, slots=True)
class VehicleEnvelope:
    """The common part of 0x1200 and 0x1400 bodies: which vehicle, which sub-type, its data."""

    plate: str
    colour: int
    data_type: int
    data: bytes


_ENVELOPE = struct.Struct(">21sBHI")


def parse_envelope(body: bytes) -> VehicleEnvelope:
    """Read VEHICLE_NO, VEHICLE_COLOR, DATA_TYPE, DATA_LENGTH, DATA.

    Raises:
        Jt809DecodeError: ``bad_body`` (short, or DATA_LENGTH disagreeing with the body).
    """
    _need(body, _ENVELOPE.size, "vehicle envelope", exact=False)
    plate, colour, data_type, length = _ENVELOPE.unpack_from(body)
    data = body[_ENVELOPE.size:]
    if length != len(data):
        raise _bad(f"DATA_LENGTH {length}, {len(data)} bytes follow")
    return VehicleEnvelope(_text(plate), colour, data_type, data)


def build_envelope(plate: str, colour: int, data_type: int, data: bytes) -> bytes:
    """A 0x1200 / 0x1400 body."""
    return _ENVELOPE.pack(_field(plate, 21), colour, data_type, len(data)) + data


# ---------------------------------------------------------------------------- positions

@dataclass(frozen=True, slots=True)
class GnssData:
    """One vehicle position (GNSS_DATA, 36 bytes)."""

    coordinates_encrypted: bool
    """ENCRYPT = 1: lon/lat are GCJ-02 (the national map offset), else WGS-84."""
    time: datetime
    """Converted to UTC."""
    lon_e6: int
    lat_e6: int
    speed_kmh: int
    """VEC1: satellite speed."""
    recorder_speed_kmh: int
    """VEC2: the driving recorder's speed."""
    mileage_km: int
    """VEC3: odometer."""
    heading_deg: int
    altitude_m: int
    state: int
    """Status bits as in JT/T 808 (0 ACC, 1 fixed, 2 south, 3 west, ...)."""
    alarm: int
    """Alarm bits as in JT/T 808."""


_GNSS = struct.Struct(">BBBHBBBIIHHIHHII")
GNSS_SIZE: Final = _GNSS.size


def parse_gnss(raw: bytes) -> GnssData:
    """Read one GNSS_DATA.

    Raises:
        Jt809DecodeError: ``bad_body`` (size), ``bad_time`` (no such date), ``bad_position`` (out of range).
    """
    _need(raw, GNSS_SIZE, "GNSS_DATA")
    (enc, day, month, year, hour, minute, second, lon, lat, vec1, vec2, vec3, direction, altitude, state,
     alarm) = _GNSS.unpack(raw)
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=CHINA)
    except ValueError:
        raise Jt809DecodeError(RejectionReason.BAD_TIME, f"{year:04d}-{month:02d}-{day:02d} "
                               f"{hour:02d}:{minute:02d}:{second:02d}") from None
    if lon > 180_000_000 or lat > 90_000_000:
        raise Jt809DecodeError(RejectionReason.BAD_POSITION, f"lon {lon / 1e6}, lat {lat / 1e6}")
    if enc not in (0, 1):
        raise _bad(f"GNSS ENCRYPT {enc}")
    return GnssData(enc == 1, local.astimezone(UTC), lon, lat, vec1, vec2, vec3, direction, altitude, state, alarm)


def build_gnss(g: GnssData) -> bytes:
    """One GNSS_DATA (``time`` any aware datetime; sent in UTC+8)."""
    t = g.time.astimezone(CHINA)
    return _GNSS.pack(1 if g.coordinates_encrypted else 0, t.day, t.month, t.year, t.hour, t.minute, t.second,
                      g.lon_e6, g.lat_e6, g.speed_kmh, g.recorder_speed_kmh, g.mileage_km, g.heading_deg,
                      g.altitude_m, g.state, g.alarm)


MAX_HISTORY: Final = 5
"""Positions one 0x1203 may carry (GNSS_CNT 1..5)."""


def parse_history(data: bytes) -> list[GnssData]:
    """Read 0x1203: GNSS_CNT then that many GNSS_DATA.

    Raises:
        Jt809DecodeError: ``bad_body``, ``bad_time``, ``bad_position``.
    """
    _need(data, 1, "0x1203", exact=False)
    count = data[0]
    if not 1 <= count <= MAX_HISTORY:
        raise _bad(f"GNSS_CNT {count} (1..{MAX_HISTORY})")
    _need(data, 1 + count * GNSS_SIZE, "0x1203")
    return [parse_gnss(data[1 + i * GNSS_SIZE:1 + (i + 1) * GNSS_SIZE]) for i in range(count)]


def build_history(items: list[GnssData]) -> bytes:
    """0x1203 data."""
    if not 1 <= len(items) <= MAX_HISTORY:
        raise ValueError(f"0x1203 carries 1..{MAX_HISTORY} positions, got {len(items)}")
    return bytes((len(items),)) + b"".join(build_gnss(g) for g in items)


@dataclass(frozen=True, slots=True)
class VehicleRegistration:
    """0x1201: the vehicle's terminal as the lower platform knows it."""

    platform_id: str
    producer_id: str
    terminal_model: str
    terminal_id: str
    sim: str


def parse_vehicle_registration(data: bytes) -> VehicleRegistration:
    """Read 0x1201 (terminal model 8 bytes as in 2011, or 20 as platforms updated for JT/T 808-2013 send).

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    if len(data) not in (49, 61):
        raise _bad(f"0x1201: {len(data)} bytes, expected 49 or 61")
    model_size = len(data) - 41
    p, q = 22, 22 + model_size
    return VehicleRegistration(_text(data[:11]), _text(data[11:22]), _text(data[p:q]), _text(data[q:q + 7]),
                               _text(data[q + 7:q + 19]))


def build_vehicle_registration(r: VehicleRegistration) -> bytes:
    """0x1201 data (20-byte terminal model)."""
    return (_field(r.platform_id, 11) + _field(r.producer_id, 11) + _field(r.terminal_model, 20)
            + _field(r.terminal_id, 7) + _field(r.sim, 12))


# ---------------------------------------------------------------------------- alarms

@dataclass(frozen=True, slots=True)
class WarnInfo:
    """0x1402 UP_WARN_MSG_ADPT_INFO: an alarm the lower platform reports."""

    source: int
    """WARN_SRC: 1 terminal, 2 enterprise platform, 3 government platform, 9 other."""
    warn_type: int
    time: datetime
    info_id: int
    content: str


_WARN = struct.Struct(">BHQII")
MAX_WARN_CONTENT: Final = 1024


def parse_warn(data: bytes) -> WarnInfo:
    """Read 0x1402.

    Raises:
        Jt809DecodeError: ``bad_body``, ``bad_time``.
    """
    _need(data, _WARN.size, "0x1402", exact=False)
    src, wtype, wtime, info_id, length = _WARN.unpack_from(data)
    if length != len(data) - _WARN.size or length > MAX_WARN_CONTENT:
        raise _bad(f"INFO_LENGTH {length}, {len(data) - _WARN.size} bytes follow (limit {MAX_WARN_CONTENT})")
    try:
        when = datetime.fromtimestamp(wtime, UTC)
    except (OverflowError, OSError, ValueError):
        raise Jt809DecodeError(RejectionReason.BAD_TIME, f"WARN_TIME {wtime}") from None
    return WarnInfo(src, wtype, when, info_id, _text(data[_WARN.size:]))


def build_warn(w: WarnInfo) -> bytes:
    """0x1402 data."""
    content = w.content.encode("gbk")
    return _WARN.pack(w.source, w.warn_type, int(w.time.timestamp()), w.info_id, len(content)) + content


def parse_warn_todo(data: bytes) -> tuple[int, int]:
    """Read 0x1403 (alarm handling result): (info id, result).

    Raises:
        Jt809DecodeError: ``bad_body``.
    """
    _need(data, 5, "0x1403")
    info_id, result = struct.unpack(">IB", data)
    return info_id, result


def build_warn_todo(info_id: int, result: int) -> bytes:
    """0x1403 data."""
    return struct.pack(">IB", info_id, result)
