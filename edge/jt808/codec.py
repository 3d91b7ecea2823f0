"""JT/T 808 framing: stream splitting, escaping, checksum, 2013/2019 headers, split packets.

Pure functions and small state machines; no I/O. Everything a terminal can send is either
decoded into typed values or refused with a ``RejectionReason`` (``Jt808DecodeError``), never
with any other exception. Message bodies live in ``edge.jt808.messages``.

Wire format (JT/T 808-2013 section 4.4, 2019 section 4.4)::

    0x7E | header | body | checksum | 0x7E

Inside the flags 0x7E is sent as ``7D 02`` and 0x7D as ``7D 01``; the checksum is the XOR of
header and body before escaping.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from functools import reduce
from operator import xor
from typing import Final, Protocol

from edge.errors import EdgeError

FLAG: Final = 0x7E
ESCAPE: Final = 0x7D
MAX_BODY: Final = 0x3FF
"""Largest body one packet can carry (10 length bits)."""
HEADER_2013: Final = 12
HEADER_2019: Final = 17
SPLIT_FIELDS: Final = 4
MAX_UNESCAPED_FRAME: Final = HEADER_2019 + SPLIT_FIELDS + MAX_BODY + 1
MAX_ESCAPED_FRAME: Final = 2 * MAX_UNESCAPED_FRAME
"""Longest byte run between two flags that can still be a valid frame."""

_ATTR_LENGTH: Final = 0x03FF
_ATTR_ENCRYPTION: Final = 0x1C00
_ATTR_SPLIT: Final = 0x2000
_ATTR_VERSION: Final = 0x4000

_HEAD_2013 = struct.Struct(">HH6sH")
_HEAD_2019 = struct.Struct(">HHB10sH")
_SPLIT = struct.Struct(">HH")


class RejectionReason(enum.StrEnum):
    """Why the gateway refused bytes, a frame or a message (counted per reason)."""

    GARBAGE = "garbage"
    """Bytes outside any 0x7E ... 0x7E frame."""
    FRAME_TOO_LONG = "frame_too_long"
    BAD_ESCAPE = "bad_escape"
    TOO_SHORT = "too_short"
    BAD_CHECKSUM = "bad_checksum"
    LENGTH_MISMATCH = "length_mismatch"
    BAD_PHONE = "bad_phone"
    BAD_SPLIT_HEADER = "bad_split_header"
    ENCRYPTED = "encrypted"
    BAD_BODY = "bad_body"
    BAD_TIME = "bad_time"
    BAD_TLV = "bad_tlv"
    BAD_POSITION = "bad_position"
    UNSUPPORTED_MESSAGE = "unsupported_message"
    NOT_AUTHENTICATED = "not_authenticated"
    UNKNOWN_TERMINAL = "unknown_terminal"
    AUTH_FAILED = "auth_failed"
    PHONE_MISMATCH = "phone_mismatch"
    SPLIT_EXPIRED = "split_expired"
    SPLIT_OVERFLOW = "split_overflow"
    IDENTITY_MISMATCH = "identity_mismatch"
    """Registration fields differ from the device registry's record of the vehicle."""
    ALREADY_REGISTERED = "already_registered"
    """Registration of a terminal (or plate) that is registered already: an operator must reset it."""
    RATE_LIMITED = "rate_limited"
    """Too many registration/authentication attempts from one address or for one phone."""
    AUTH_TIMEOUT = "auth_timeout"
    """The connection did not authenticate in time."""
    TOO_MANY_ERRORS = "too_many_errors"
    """An unauthenticated connection caused too many refusals and was closed."""
    CONNECTION_LIMIT = "connection_limit"
    """A connection refused by the gateway's total or per-address connection caps."""
    STORE_FAILED = "store_failed"
    """The registration store could not be read or written."""


class Jt808DecodeError(EdgeError):
    """Bytes that are not a valid JT/T 808 frame or body.

    ``header`` is set when the header could be read, so the platform can still answer the
    terminal with a general reply "message error".
    """

    def __init__(self, reason: RejectionReason, detail: str, header: Jt808Header | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = header


class ProtocolVersion(enum.IntEnum):
    """Header layout: 2013 (6-byte BCD phone) or 2019 (version byte, 10-byte BCD phone)."""

    V2013 = 2013
    V2019 = 2019


@dataclass(frozen=True, slots=True)
class Jt808Header:
    """A decoded message header."""

    msg_id: int
    body_length: int
    encryption: int
    version: ProtocolVersion
    protocol_version: int
    """The 2019 header's protocol-version byte (1 for JT/T 808-2019); 0 for 2013."""
    phone: str
    """The terminal phone number as sent: 12 BCD digits (2013) or 20 (2019)."""
    serial: int
    packet_total: int = 0
    """Split packets: number of packets of the whole message (0 when not split)."""
    packet_index: int = 0
    """Split packets: this packet's number, starting at 1 (0 when not split)."""

    @property
    def is_split(self) -> bool:
        """Whether this packet is one part of a split message."""
        return self.packet_total > 0

    @property
    def device_id(self) -> str:
        """The Vigil device id: the phone number's digits without leading zeros."""
        return self.phone.lstrip("0")


@dataclass(frozen=True, slots=True)
class Jt808Frame:
    """One decoded frame (or a message reassembled from split packets)."""

    header: Jt808Header
    body: bytes
    reassembled: bool = False


def unescape(data: bytes) -> bytes:
    """Undo the 0x7D escaping of bytes taken from between two flags.

    Raises:
        Jt808DecodeError: ``bad_escape`` for 0x7D followed by anything but 01/02, or a bare 0x7E.
    """
    if FLAG in data:
        raise Jt808DecodeError(RejectionReason.BAD_ESCAPE, "unescaped 0x7E inside a frame")
    if ESCAPE not in data:
        return data
    out = data.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")
    # A 0x7D that survives the replacements was followed by something other than 01/02, except
    # when it came from "7D 01" itself; count escape bytes to tell them apart.
    if out.count(ESCAPE) != data.count(b"\x7d\x01"):
        raise Jt808DecodeError(RejectionReason.BAD_ESCAPE, "0x7D not followed by 0x01 or 0x02")
    return out


def escape(data: bytes) -> bytes:
    """Escape 0x7D and 0x7E for the wire (0x7D first, so the 0x7D it adds are not doubled)."""
    if ESCAPE in data:
        data = data.replace(b"\x7d", b"\x7d\x01")
    if FLAG in data:
        data = data.replace(b"\x7e", b"\x7d\x02")
    return data


def checksum(data: bytes) -> int:
    """XOR of all bytes (the JT/T 808 check code)."""
    return reduce(xor, data, 0)


def decode_frame(content: bytes) -> Jt808Frame:
    """Decode the escaped bytes found between two 0x7E flags.

    Raises:
        Jt808DecodeError: the frame is refused; ``reason`` says why and ``header`` is set when
            the header was readable.
    """
    raw = unescape(content)
    n = len(raw)
    if n < HEADER_2013 + 1:
        raise Jt808DecodeError(RejectionReason.TOO_SHORT, f"{n} bytes, a frame has at least {HEADER_2013 + 1}")
    attrs = (raw[2] << 8) | raw[3]
    if attrs & _ATTR_VERSION:
        if n < HEADER_2019 + 1:
            raise Jt808DecodeError(RejectionReason.TOO_SHORT, f"{n} bytes, a 2019 frame has at least {HEADER_2019 + 1}")
        msg_id, attrs, proto, phone_bcd, serial = _HEAD_2019.unpack_from(raw)
        version, pos = ProtocolVersion.V2019, HEADER_2019
    else:
        msg_id, attrs, phone_bcd, serial = _HEAD_2013.unpack_from(raw)
        version, proto, pos = ProtocolVersion.V2013, 0, HEADER_2013
    total = index = 0
    split = bool(attrs & _ATTR_SPLIT)
    if split:
        if n < pos + SPLIT_FIELDS + 1:
            raise Jt808DecodeError(RejectionReason.TOO_SHORT, f"{n} bytes, too short for a split-packet header")
        total, index = _SPLIT.unpack_from(raw, pos)
        pos += SPLIT_FIELDS
    phone = phone_bcd.hex()
    if not phone.isdigit():
        # No header in the error: a reply cannot be addressed to a phone number that is not BCD.
        raise Jt808DecodeError(RejectionReason.BAD_PHONE, f"phone {phone!r} is not BCD")
    header = Jt808Header(msg_id, attrs & _ATTR_LENGTH, (attrs & _ATTR_ENCRYPTION) >> 10, version, proto, phone,
                         serial, total, index)
    if not header.device_id:
        # No header in the error either: a reply to phone 000000000000 could not be addressed to
        # any terminal (and would itself be a frame the protocol refuses). Checked before the
        # checksum so that no refusal of such a frame carries a header to reply to.
        raise Jt808DecodeError(RejectionReason.BAD_PHONE, "phone number is all zeros")
    if checksum(raw) != 0:
        # XOR over header, body and the check byte is zero exactly when the check byte matches.
        raise Jt808DecodeError(RejectionReason.BAD_CHECKSUM, f"check byte 0x{raw[-1]:02x} does not match", header)
    body_len = n - 1 - pos
    if body_len != header.body_length:
        raise Jt808DecodeError(RejectionReason.LENGTH_MISMATCH,
                               f"header says {header.body_length} body bytes, frame has {body_len}", header)
    if split and not (1 <= index <= total):
        raise Jt808DecodeError(RejectionReason.BAD_SPLIT_HEADER, f"packet {index} of {total}", header)
    if header.encryption:
        raise Jt808DecodeError(RejectionReason.ENCRYPTED, f"encryption mode {header.encryption} is not supported",
                               header)
    return Jt808Frame(header, raw[pos:-1])


def encode_phone(phone: str, version: ProtocolVersion) -> bytes:
    """Encode a phone number or device id as BCD, left-padded with zeros.

    Raises:
        ValueError: not digits, or too long for the header.
    """
    digits = 12 if version is ProtocolVersion.V2013 else 20
    if not phone.isdigit() or len(phone) > digits:
        raise ValueError(f"phone {phone!r} is not at most {digits} digits")
    return bytes.fromhex(phone.rjust(digits, "0"))


def encode_frame(msg_id: int, phone: str, serial: int, body: bytes = b"", *,
                 version: ProtocolVersion = ProtocolVersion.V2013, protocol_version: int = 1,
                 packet: tuple[int, int] | None = None) -> bytes:
    """Build one wire frame: header, body, checksum, escaping and flags.

    Args:
        msg_id: message id.
        phone: terminal phone number (digits).
        serial: message serial number (taken modulo 65536).
        body: message body, at most 1023 bytes.
        version: header layout.
        protocol_version: the 2019 header's protocol-version byte.
        packet: ``(total, index)`` for one packet of a split message.

    Returns:
        The escaped frame including both 0x7E flags.

    Raises:
        ValueError: the body is too long or the phone does not fit.
    """
    if len(body) > MAX_BODY:
        raise ValueError(f"body of {len(body)} bytes exceeds {MAX_BODY}; split it with encode_split_frames")
    attrs = len(body)
    if packet is not None:
        attrs |= _ATTR_SPLIT
    phone_bcd = encode_phone(phone, version)
    if version is ProtocolVersion.V2019:
        head = _HEAD_2019.pack(msg_id, attrs | _ATTR_VERSION, protocol_version, phone_bcd, serial & 0xFFFF)
    else:
        head = _HEAD_2013.pack(msg_id, attrs, phone_bcd, serial & 0xFFFF)
    if packet is not None:
        head += _SPLIT.pack(*packet)
    raw = head + body
    return b"\x7e" + escape(raw + bytes((checksum(raw),))) + b"\x7e"


def encode_split_frames(msg_id: int, phone: str, first_serial: int, body: bytes, *,
                        version: ProtocolVersion = ProtocolVersion.V2013, packet_size: int = MAX_BODY) -> list[bytes]:
    """Split a long body into consecutive packets with consecutive serial numbers."""
    chunks = [body[i:i + packet_size] for i in range(0, len(body), packet_size)] or [b""]
    total = len(chunks)
    return [encode_frame(msg_id, phone, first_serial + i, chunk, version=version, packet=(total, i + 1))
            for i, chunk in enumerate(chunks)]


@dataclass(frozen=True, slots=True)
class StreamNoise:
    """Bytes the stream splitter threw away, and why."""

    reason: RejectionReason
    size: int
    head: bytes
    """The first bytes thrown away (for the dead letter)."""


class FrameSplitter:
    """Cuts a TCP byte stream into the escaped contents of 0x7E-delimited frames.

    Bounded: a run longer than ``max_frame`` without a flag is dropped (``frame_too_long``)
    and the splitter resynchronises on the next flag.
    """

    __slots__ = ("_buf", "_discarding", "_synced", "max_frame")

    def __init__(self, max_frame: int = MAX_ESCAPED_FRAME) -> None:
        self._buf = b""
        self._synced = False
        self._discarding = False
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for a closing flag."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | StreamNoise]:
        """Add received bytes; return complete frame contents and discarded noise, in order."""
        out: list[bytes | StreamNoise] = []
        if self._discarding:
            i = data.find(FLAG)
            if i < 0:
                return out
            data = data[i:]
            self._discarding = False
        chunk = self._buf + data if self._buf else data
        pieces = chunk.split(b"\x7e")
        rest = pieces.pop()
        for i, piece in enumerate(pieces):
            if i == 0 and not self._synced:
                self._synced = True
                if piece:
                    out.append(StreamNoise(RejectionReason.GARBAGE, len(piece), piece[:64]))
                continue
            if not piece:
                continue
            if len(piece) > self.max_frame:
                out.append(StreamNoise(RejectionReason.FRAME_TOO_LONG, len(piece), piece[:64]))
                continue
            out.append(piece)
        if len(rest) > self.max_frame:
            reason = RejectionReason.FRAME_TOO_LONG if self._synced else RejectionReason.GARBAGE
            out.append(StreamNoise(reason, len(rest), rest[:64]))
            self._buf = b""
            self._discarding = True
            self._synced = True
        else:
            self._buf = rest
        return out


@dataclass(slots=True)
class _PendingMessage:
    first: Jt808Header
    parts: dict[int, bytes]
    started: float
    size: int = 0


class SplitPacketAssembler:
    """Reassembles split messages (header bit 13) from packets with consecutive serials.

    Bounded in time (``timeout_s``), in concurrent messages (``max_pending``), in size
    (``max_packets``), in bytes held (``max_bytes``) and, when given, in a ``budget`` shared with
    other connections (anything with ``take(n) -> bool`` and ``give(n)``); what does not
    complete is reported by ``expire``.
    """

    def __init__(self, timeout_s: float = 30.0, max_pending: int = 16, max_packets: int = 64,
                 max_bytes: int = 1 << 20, budget: _Budget | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.budget = budget
        self.held = 0
        """Bytes of packets held for unfinished messages."""
        self._pending: dict[tuple[str, int, int, int], _PendingMessage] = {}

    @property
    def pending(self) -> int:
        """Messages waiting for more packets."""
        return len(self._pending)

    def clear(self) -> None:
        """Drop every unfinished message (the connection closed) and release its bytes."""
        for entry in self._pending.values():
            self._release(entry)
        self._pending.clear()

    def _release(self, entry: _PendingMessage) -> None:
        self.held -= entry.size
        if self.budget is not None:
            self.budget.give(entry.size)
        entry.size = 0

    def _store(self, key: tuple[str, int, int, int], entry: _PendingMessage, h: Jt808Header, body: bytes) -> None:
        grow = len(body) - len(entry.parts.get(h.packet_index, b""))
        if grow > 0 and (self.held + grow > self.max_bytes or
                         (self.budget is not None and not self.budget.take(grow))):
            self._release(entry)
            del self._pending[key]
            raise Jt808DecodeError(RejectionReason.SPLIT_OVERFLOW, "reassembly memory exhausted "
                                   f"({self.held} bytes held on this connection); dropped the message", h)
        if grow < 0 and self.budget is not None:
            self.budget.give(-grow)
        self.held += grow
        entry.size += grow
        entry.parts[h.packet_index] = body

    def add(self, frame: Jt808Frame, now: float) -> Jt808Frame | None:
        """Add one packet; return the whole message once its last packet arrived.

        Raises:
            Jt808DecodeError: ``split_overflow`` for a message of too many packets or too many
                unfinished messages at once (the oldest is dropped).
        """
        h = frame.header
        if h.packet_total > self.max_packets:
            raise Jt808DecodeError(RejectionReason.SPLIT_OVERFLOW,
                                   f"{h.packet_total} packets exceeds {self.max_packets}", h)
        key = (h.phone, h.msg_id, h.packet_total, (h.serial - h.packet_index + 1) & 0xFFFF)
        entry = self._pending.get(key)
        if entry is None:
            dropped = None
            if len(self._pending) >= self.max_pending:
                oldest = min(self._pending, key=lambda k: self._pending[k].started)
                dropped = self._pending.pop(oldest)
                self._release(dropped)
            entry = self._pending[key] = _PendingMessage(h, {}, now)
            if dropped is not None:
                self._store(key, entry, h, frame.body)
                raise Jt808DecodeError(RejectionReason.SPLIT_OVERFLOW,
                                       f"too many unfinished split messages; dropped 0x{dropped.first.msg_id:04x} "
                                       f"with {len(dropped.parts)}/{dropped.first.packet_total} packets", h)
        self._store(key, entry, h, frame.body)
        if h.packet_index == 1:
            entry.first = h
        if len(entry.parts) < h.packet_total:
            return None
        del self._pending[key]
        self._release(entry)
        body = b"".join(entry.parts[i] for i in range(1, h.packet_total + 1))
        return Jt808Frame(replace(entry.first, body_length=len(body)), body, reassembled=True)

    def expire(self, now: float) -> list[Jt808Header]:
        """Drop messages older than the timeout; return the first header of each."""
        old = [k for k, e in self._pending.items() if now - e.started > self.timeout_s]
        expired = [self._pending.pop(k) for k in old]
        for entry in expired:
            self._release(entry)
        return [e.first for e in expired]


class _Budget(Protocol):
    def take(self, n: int) -> bool: ...

    def give(self, n: int) -> None: ...
