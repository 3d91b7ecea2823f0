"""JT/T 808 bodies beyond positions: driver identity (0x0702) and platform commands (pure).

Terminal -> platform: 0x0702 driver identity report (IC card sign-in / sign-out, 2013 and 2019
layouts), 0x0104 parameter query reply. Platform -> terminal: 0x8203 manual alarm
confirmation, 0x8300 text message, 0x8103 set parameters, 0x8104 query all parameters,
0x8106 query given parameters. Parsers raise ``Jt808DecodeError`` (``bad_body``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from edge.jt808.codec import Jt808DecodeError, ProtocolVersion, RejectionReason
from edge.jt808.messages import _gbk, _text, build_bcd_time, parse_bcd_time


class CommandId(enum.IntEnum):
    """Message ids of the driver report and the platform commands."""

    DRIVER_IDENTITY = 0x0702
    QUERY_PARAMS_REPLY = 0x0104
    SET_PARAMS = 0x8103
    QUERY_PARAMS = 0x8104
    QUERY_GIVEN_PARAMS = 0x8106
    ALARM_CONFIRM = 0x8203
    TEXT = 0x8300


CLEAR_ON_ACK_BITS: Final = (0, 3, 20, 21, 22, 27, 28)
"""Alarm bits the terminal clears only when the platform confirms them (0x8203)."""
CLEAR_ON_ACK_MASK: Final = sum(1 << b for b in CLEAR_ON_ACK_BITS)

_WORD = struct.Struct(">H")
_DWORD = struct.Struct(">I")


def _short(what: str, need: int, got: int) -> Jt808DecodeError:
    return Jt808DecodeError(RejectionReason.BAD_BODY, f"{what}: body ends at byte {got}, need {need}")


# ---------------------------------------------------------------------------- 0x0702 driver identity

class CardResult(enum.IntEnum):
    """IC card read result of a sign-in."""

    OK = 0
    KEY_FAILED = 1
    CARD_LOCKED = 2
    CARD_REMOVED = 3
    CHECKSUM_ERROR = 4


@dataclass(frozen=True, slots=True)
class DriverIdentity:
    """A driver signing in (card inserted) or out (card removed)."""

    signed_in: bool
    time: datetime
    """When it happened (UTC)."""
    card_result: int = 0
    name: str = ""
    certificate: str = ""
    """Qualification certificate number (从业资格证编码): the driver's id in Vigil."""
    authority: str = ""
    valid_until: str = ""
    """Certificate validity, ``YYYY-MM-DD`` (empty when the BCD is not a date)."""
    id_number: str = ""
    """Identity card number (2019 only)."""

    @property
    def read_ok(self) -> bool:
        """A sign-in whose card was read (a sign-out has nothing to read)."""
        return self.signed_in and self.card_result == CardResult.OK


def parse_driver_identity(body: bytes, version: ProtocolVersion) -> DriverIdentity:
    """Parse a 0x0702 body (2013 layout; 2019 adds the identity card number)."""
    if len(body) < 7:
        raise _short("driver identity", 7, len(body))
    state = body[0]
    if state not in (1, 2):
        raise Jt808DecodeError(RejectionReason.BAD_BODY, f"driver identity state {state} (1 in, 2 out)")
    when = parse_bcd_time(body[1:7])
    if state == 2:
        return DriverIdentity(False, when)
    if len(body) < 8:
        raise _short("driver identity", 8, len(body))
    result = body[7]
    if result != CardResult.OK:
        return DriverIdentity(True, when, result)
    pos = 8
    if pos >= len(body):
        raise _short("driver name length", pos + 1, len(body))
    n = body[pos]
    name_end = pos + 1 + n
    if name_end + 20 + 1 > len(body):
        raise _short("driver name and certificate", name_end + 21, len(body))
    name = _text(body[pos + 1:name_end])
    certificate = _text(body[name_end:name_end + 20])
    pos = name_end + 20
    m = body[pos]
    auth_end = pos + 1 + m
    if auth_end + 4 > len(body):
        raise _short("issuing authority and validity", auth_end + 4, len(body))
    authority = _text(body[pos + 1:auth_end])
    digits = body[auth_end:auth_end + 4].hex()
    valid = f"{digits[:4]}-{digits[4:6]}-{digits[6:]}" if digits.isdigit() else ""
    id_number = ""
    if version is ProtocolVersion.V2019 and len(body) >= auth_end + 4 + 20:
        id_number = _text(body[auth_end + 4:auth_end + 24])
    if not certificate:
        raise Jt808DecodeError(RejectionReason.BAD_BODY, "driver identity without a certificate number")
    return DriverIdentity(True, when, result, name, certificate, authority, valid, id_number)


def build_driver_identity(d: DriverIdentity, version: ProtocolVersion) -> bytes:
    """Build a 0x0702 body (terminal side: simulators and tests)."""
    head = bytes((1 if d.signed_in else 2,)) + build_bcd_time(d.time)
    if not d.signed_in:
        return head
    if d.card_result != CardResult.OK:
        return head + bytes((d.card_result,))
    name, authority = _gbk(d.name), _gbk(d.authority)
    valid = bytes.fromhex(d.valid_until.replace("-", "") or "00000000")
    body = (head + bytes((0, len(name))) + name + _gbk(d.certificate, 20) + bytes((len(authority),)) + authority
            + valid)
    if version is ProtocolVersion.V2019:
        body += _gbk(d.id_number, 20)
    return body


# ---------------------------------------------------------------------------- platform commands

def build_alarm_confirm(alarm_mask: int, alarm_serial: int = 0) -> bytes:
    """0x8203: confirm the alarms in ``alarm_mask`` (serial 0: every alarm of those types)."""
    return _WORD.pack(alarm_serial & 0xFFFF) + _DWORD.pack(alarm_mask & CLEAR_ON_ACK_MASK)


def parse_alarm_confirm(body: bytes) -> tuple[int, int]:
    """(alarm serial, alarm mask) of a 0x8203 body (terminal side)."""
    if len(body) < 6:
        raise _short("alarm confirmation", 6, len(body))
    return _WORD.unpack_from(body)[0], _DWORD.unpack_from(body, 2)[0]


class TextFlag(enum.IntFlag):
    """0x8300 flag bits."""

    EMERGENCY = 1 << 0
    DISPLAY = 1 << 2
    TTS = 1 << 3
    AD_SCREEN = 1 << 4


MAX_TEXT_BYTES: Final = 1000
"""Text longer than this (GBK bytes) is refused: the whole frame must stay under 1023 body bytes."""


def build_text(text: str, version: ProtocolVersion, *, flags: int = TextFlag.DISPLAY | TextFlag.TTS,
               text_type: int = 1) -> bytes:
    """0x8300 body (2019 adds the text type: 1 notice, 2 service). Raises ``ValueError`` if too long."""
    raw = text.encode("gbk", errors="replace")
    if not raw or len(raw) > MAX_TEXT_BYTES:
        raise ValueError(f"text of {len(raw)} GBK bytes (1..{MAX_TEXT_BYTES})")
    head = bytes((flags & 0xFF,))
    if version is ProtocolVersion.V2019:
        head += bytes((text_type,))
    return head + raw


def parse_text(body: bytes, version: ProtocolVersion) -> tuple[int, str]:
    """(flags, text) of a 0x8300 body (terminal side)."""
    skip = 2 if version is ProtocolVersion.V2019 else 1
    if len(body) < skip:
        raise _short("text message", skip, len(body))
    return body[0], body[skip:].decode("gbk", errors="replace")


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A terminal parameter Vigil names: id, metric-style name, width in bytes, divisor."""

    id: int
    name: str
    width: int
    divisor: int = 1


PARAMS: Final[dict[int, ParamSpec]] = {p.id: p for p in (
    ParamSpec(0x0001, "heartbeat_interval_s", 4),
    ParamSpec(0x0029, "report_interval_s", 4),
    ParamSpec(0x0055, "max_speed_kmh", 4),
    ParamSpec(0x0056, "overspeed_duration_s", 4),
    ParamSpec(0x0057, "continuous_driving_limit_s", 4),
    ParamSpec(0x0058, "daily_driving_limit_s", 4),
    ParamSpec(0x0059, "min_rest_s", 4),
    ParamSpec(0x005A, "max_parking_s", 4),
    ParamSpec(0x005B, "overspeed_warning_margin_kmh", 2, 10),
    ParamSpec(0x005C, "fatigue_warning_margin_s", 2),
)}
"""Parameters (JT/T 808 table 12) Vigil reads and sets by name; others come back as ``param_0xNNNN``."""
PARAM_BY_NAME: Final = {p.name: p for p in PARAMS.values()}


def _param_value(spec: ParamSpec | None, raw: bytes) -> float | int | str:
    if spec is not None and len(raw) == spec.width:
        value = int.from_bytes(raw, "big")
        return value / spec.divisor if spec.divisor != 1 else value
    if len(raw) in (1, 2, 4):
        return int.from_bytes(raw, "big")
    return _text(raw)


def build_set_params(values: Mapping[str, float | int]) -> bytes:
    """0x8103 body from named values. Raises ``ValueError`` for unknown names or bad values."""
    items = b""
    for name, value in values.items():
        spec = PARAM_BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"unknown terminal parameter {name!r} (known: {', '.join(sorted(PARAM_BY_NAME))})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"parameter {name}: a number is needed")
        n = round(value * spec.divisor)
        if not 0 <= n < 1 << (8 * spec.width):
            raise ValueError(f"parameter {name}: {value} out of range")
        items += _DWORD.pack(spec.id) + bytes((spec.width,)) + n.to_bytes(spec.width, "big")
    if not values:
        raise ValueError("no parameters to set")
    return bytes((len(values),)) + items


def build_query_params(names: list[str] | None = None) -> tuple[int, bytes]:
    """(message id, body): 0x8104 (all parameters) or 0x8106 (the named ones)."""
    if not names:
        return CommandId.QUERY_PARAMS, b""
    ids = []
    for name in names:
        spec = PARAM_BY_NAME.get(name)
        if spec is None:
            raise ValueError(f"unknown terminal parameter {name!r}")
        ids.append(spec.id)
    return CommandId.QUERY_GIVEN_PARAMS, bytes((len(ids),)) + b"".join(_DWORD.pack(i) for i in ids)


def _parse_items(body: bytes, pos: int, count: int, what: str) -> dict[str, float | int | str]:
    out: dict[str, float | int | str] = {}
    for i in range(count):
        if pos + 5 > len(body):
            raise Jt808DecodeError(RejectionReason.BAD_BODY, f"{what}: says {count} items, body ends at item {i}")
        pid, n = _DWORD.unpack_from(body, pos)[0], body[pos + 4]
        end = pos + 5 + n
        if end > len(body):
            raise Jt808DecodeError(RejectionReason.BAD_BODY, f"{what}: item 0x{pid:04x} overruns the body")
        spec = PARAMS.get(pid)
        out[spec.name if spec else f"param_0x{pid:04x}"] = _param_value(spec, body[pos + 5:end])
        pos = end
    return out


def parse_set_params(body: bytes) -> dict[str, float | int | str]:
    """Named values of a 0x8103 body (terminal side)."""
    if not body:
        raise _short("set parameters", 1, 0)
    return _parse_items(body, 1, body[0], "set parameters")


@dataclass(frozen=True, slots=True)
class ParamsReply:
    """0x0104: the terminal's parameters, answering the query with ``reply_serial``."""

    reply_serial: int
    values: dict[str, float | int | str]


def parse_params_reply(body: bytes) -> ParamsReply:
    """Parse a 0x0104 body."""
    if len(body) < 3:
        raise _short("parameter reply", 3, len(body))
    return ParamsReply(_WORD.unpack_from(body)[0], _parse_items(body, 3, body[2], "parameter reply"))


def build_params_reply(reply_serial: int, values: Mapping[str, float | int]) -> bytes:
    """Build a 0x0104 body (terminal side)."""
    items = build_set_params(values)
    return _WORD.pack(reply_serial & 0xFFFF) + items
