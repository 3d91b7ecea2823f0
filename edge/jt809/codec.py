"""JT/T 809 framing: stream splitting, escaping, CRC, the 2011 header, the body cipher.

Pure functions and small state machines; no I/O. Everything a lower platform can send is
either decoded into typed values or refused with a ``RejectionReason`` (``Jt809DecodeError``),
never with any other exception. The reasons are the JT/T 808 gateway's (``edge.jt808.codec``)
so both gateways count, log and dead-letter refusals the same way.

Wire format (JT/T 809-2011 section 4)::

    0x5B | header (22 bytes) | body | CRC (2 bytes) | 0x5D

Header: MSG_LENGTH (uint32, the whole frame including both flags, before escaping), MSG_SN
(uint32), MSG_ID (uint16), MSG_GNSSCENTERID (uint32, the lower platform's access code),
VERSION_FLAG (3 bytes), ENCRYPT_FLAG (byte, 1 = body encrypted), ENCRYPT_KEY (uint32).
Between the flags 0x5B is sent as ``5A 01``, 0x5A as ``5A 02``, 0x5D as ``5E 01`` and 0x5E as
``5E 02``. The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final
xor; check value 0x29B1 for ``b"123456789"``) over header and body before escaping, sent
big-endian.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass
from typing import Final

from edge.errors import EdgeError
from edge.jt808.codec import RejectionReason, StreamNoise

__all__ = ["HEADER_LENGTH", "Jt809DecodeError", "Jt809Frame", "Jt809Header", "Jt809Keys", "Jt809StreamSplitter",
           "RejectionReason", "StreamNoise", "crc16", "crypt", "decode_frame", "encode_frame", "escape", "unescape"]

HEAD_FLAG: Final = 0x5B
TAIL_FLAG: Final = 0x5D
HEADER_LENGTH: Final = 22
OVERHEAD: Final = 1 + HEADER_LENGTH + 2 + 1
"""Bytes of a frame besides its body: flags, header, CRC."""
DEFAULT_MAX_FRAME: Final = 16 * 1024
"""Longest frame (unescaped) the gateway accepts; the biggest message it reads (0x1203, 5 positions) is ~250 bytes."""
VERSION_2011: Final = (1, 0, 0)

_HEAD = struct.Struct(">IIHI3sBI")



class Jt809DecodeError(EdgeError):
    """Bytes that are not a valid JT/T 809 frame or body.

    ``header`` is set when the header could be read.
    """

    def __init__(self, reason: RejectionReason, detail: str, header: Jt809Header | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = header


@dataclass(frozen=True, slots=True)
class Jt809Header:
    """A decoded message header."""

    length: int
    """MSG_LENGTH: the whole frame, flags included, unescaped."""
    serial: int
    msg_id: int
    access_code: int
    """MSG_GNSSCENTERID: the lower platform's access code."""
    version: tuple[int, int, int]
    encrypted: bool
    key: int
    """ENCRYPT_KEY: the cipher's starting key for this message."""


@dataclass(frozen=True, slots=True)
class Jt809Frame:
    """A decoded frame: header and body as sent (still encrypted when ``header.encrypted``)."""

    header: Jt809Header
    body: bytes


@dataclass(frozen=True, slots=True)
class Jt809Keys:
    """The simple cipher's constants agreed with one lower platform (M1, IA1, IC1)."""

    m1: int
    ia1: int
    ic1: int


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (the JT/T 809 check code).

    ``binascii.crc_hqx`` is this CRC (poly 0x1021, MSB first, no final xor) given the 0xFFFF start;
    the tests check it against a bitwise computation and the catalogue check value.
    """
    return binascii.crc_hqx(data, crc)


def crypt(data: bytes, key: int, keys: Jt809Keys) -> bytes:
    """Encrypt or decrypt (the same operation) a body with the standard's key stream.

    For each byte: ``key = IA1 * (key % M1) + IC1`` (32-bit unsigned), then the byte is
    xor-ed with bits 20-27 of ``key``. A zero ``key`` or ``M1`` counts as 1.
    """
    key = key & 0xFFFFFFFF or 1
    m1 = keys.m1 & 0xFFFFFFFF or 1
    ia1, ic1 = keys.ia1 & 0xFFFFFFFF, keys.ic1 & 0xFFFFFFFF
    out = bytearray(data)
    for i in range(len(out)):
        key = (ia1 * (key % m1) + ic1) & 0xFFFFFFFF
        out[i] ^= (key >> 20) & 0xFF
    return bytes(out)


def escape(data: bytes) -> bytes:
    """Escape the bytes between the flags."""
    # The escape leads first, so the sequences added next are not escaped again.
    return (data.replace(b"\x5a", b"\x5a\x02").replace(b"\x5e", b"\x5e\x02")
            .replace(b"\x5b", b"\x5a\x01").replace(b"\x5d", b"\x5e\x01"))


_BAD_ESCAPE: Final = re.compile(rb"[\x5a\x5e](?![\x01\x02])")


def unescape(data: bytes) -> bytes:
    """Undo ``escape``.

    Raises:
        Jt809DecodeError: ``bad_escape`` for 0x5A/0x5E not followed by 0x01/0x02.
    """
    if b"\x5a" not in data and b"\x5e" not in data:
        return data
    bad = _BAD_ESCAPE.search(data)
    if bad is not None:
        i = bad.start()
        nxt = f"0x{data[i + 1]:02x}" if i + 1 < len(data) else "end of frame"
        raise Jt809DecodeError(RejectionReason.BAD_ESCAPE, f"0x{data[i]:02x} followed by {nxt} at offset {i}")
    # Every 0x5A/0x5E now leads an escape and 0x01/0x02 never do, so the x01 forms can go first:
    # the 0x5A/0x5E they leave behind (from x02 forms) are not followed by a lead's partner.
    return (data.replace(b"\x5a\x01", b"\x5b").replace(b"\x5e\x01", b"\x5d")
            .replace(b"\x5a\x02", b"\x5a").replace(b"\x5e\x02", b"\x5e"))


def decode_frame(content: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Jt809Frame:
    """Decode the escaped bytes between 0x5B and 0x5D (flags excluded).

    Raises:
        Jt809DecodeError: bad escape, too short, bad CRC, length field disagreeing with the frame.
    """
    raw = unescape(content)
    if len(raw) < HEADER_LENGTH + 2:
        raise Jt809DecodeError(RejectionReason.TOO_SHORT, f"{len(raw)} bytes, a header and CRC need "
                               f"{HEADER_LENGTH + 2}")
    length, serial, msg_id, access, version, enc, key = _HEAD.unpack_from(raw)
    header = Jt809Header(length, serial, msg_id, access, (version[0], version[1], version[2]), enc == 1, key)
    if length != len(raw) + 2:
        raise Jt809DecodeError(RejectionReason.LENGTH_MISMATCH, f"MSG_LENGTH {length}, frame is {len(raw) + 2} "
                               "bytes", header)
    if length > max_frame:
        raise Jt809DecodeError(RejectionReason.FRAME_TOO_LONG, f"{length} bytes (limit {max_frame})", header)
    expected = int.from_bytes(raw[-2:], "big")
    actual = crc16(raw[:-2])
    if expected != actual:
        raise Jt809DecodeError(RejectionReason.BAD_CHECKSUM, f"CRC 0x{expected:04x}, computed 0x{actual:04x}",
                               header)
    if enc not in (0, 1):
        raise Jt809DecodeError(RejectionReason.ENCRYPTED, f"ENCRYPT_FLAG {enc}", header)
    return Jt809Frame(header, raw[HEADER_LENGTH:-2])


def encode_frame(msg_id: int, serial: int, access_code: int, body: bytes, *, keys: Jt809Keys | None = None,
                 key: int = 0, version: tuple[int, int, int] = VERSION_2011) -> bytes:
    """A complete escaped frame, flags included; with ``keys`` the body is encrypted starting at ``key``.

    ``key`` goes into ENCRYPT_KEY either way (some platforms send one with ENCRYPT_FLAG 0).
    """
    if keys is not None:
        body = crypt(body, key, keys)
    head = _HEAD.pack(OVERHEAD + len(body), serial & 0xFFFFFFFF, msg_id, access_code & 0xFFFFFFFF,
                      bytes(version), 1 if keys is not None else 0, key & 0xFFFFFFFF)
    data = head + body
    return b"\x5b" + escape(data + crc16(data).to_bytes(2, "big")) + b"\x5d"


class Jt809StreamSplitter:
    """Cuts a TCP byte stream into the escaped contents of 0x5B ... 0x5D frames.

    Bounded: an unfinished frame longer than ``max_escaped`` is dropped (``frame_too_long``) and
    the splitter waits for the next 0x5B. Bytes outside frames are ``garbage``; a 0x5B inside an
    unfinished frame starts a new frame (the unfinished one is ``garbage``).
    """

    __slots__ = ("_buf", "_in_frame", "max_escaped")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self.max_escaped = 2 * max_frame
        """Escaping at most doubles a frame."""

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for a closing flag."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | StreamNoise]:
        """Add received bytes; return complete frame contents and discarded noise, in order."""
        out: list[bytes | StreamNoise] = []
        i, n = 0, len(data)
        while i < n:
            if not self._in_frame:
                j = data.find(b"\x5b", i)
                end = n if j < 0 else j
                if end > i:
                    out.append(StreamNoise(RejectionReason.GARBAGE, end - i, bytes(data[i:min(end, i + 64)])))
                if j < 0:
                    return out
                self._in_frame = True
                self._buf.clear()
                i = j + 1
                continue
            tail = data.find(b"\x5d", i)
            head = data.find(b"\x5b", i)
            if head >= 0 and (tail < 0 or head < tail):
                # A new frame starts before this one ended: this one is lost.
                self._buf += data[i:head]
                out.append(StreamNoise(RejectionReason.GARBAGE, len(self._buf) + 1, b"\x5b" + bytes(self._buf[:63])))
                self._buf.clear()
                i = head + 1
                continue
            stop = n if tail < 0 else tail
            self._buf += data[i:stop]
            if len(self._buf) > self.max_escaped:
                out.append(StreamNoise(RejectionReason.FRAME_TOO_LONG, len(self._buf) + 1,
                                       b"\x5b" + bytes(self._buf[:63])))
                self._buf.clear()
                self._in_frame = False
                if tail < 0:
                    return out
                i = tail + 1
                continue
            if tail < 0:
                return out
            out.append(bytes(self._buf))
            self._buf.clear()
            self._in_frame = False
            i = tail + 1
        return out
