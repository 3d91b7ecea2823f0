"""HJ 212-2017 (and HJ/T 212-2005) codec: framing, CRC, data segment, replies (reassembly: ``reassembly``).

Pure: no I/O, no clock of its own. A frame on the wire is
``##`` + 4-digit decimal length of the data segment + data segment + 4 hex-digit CRC + CRLF,
the CRC being Appendix A's "ANSI CRC16" over the data segment only. The data segment is
``QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&..&&``.

Everything a device can send ends either as a typed result (``Hj212Frame``, ``Hj212Packet``)
or as an ``Hj212Rejection`` carrying an ``Hj212Reject`` reason; nothing raises out of
``Hj212FrameReader.feed`` and ``parse_packet`` only raises ``Hj212Error``.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from broker.contracts import DEVICE_ID_PATTERN
from edge.errors import EdgeError

MAX_DATA_LENGTH: Final = 1024
"""Largest data segment the standard allows (Table 2)."""
REJECTED_RAW_LIMIT: Final = 4096
"""Bytes of a refused frame kept in its rejection (for logs and dead letters)."""

FLAG_ACK: Final = 0x01
FLAG_SPLIT: Final = 0x02
VERSION_2005: Final = 0
VERSION_2017: Final = 1
VERSION_2025: Final = 2
"""HJ 212-2025 marks its frames with version bits 000010 (``Flag=9`` = 2025 + ack); the frame and
data segment layout is that of 2017. Its optional SM4 encryption of CP is not supported."""
SUPPORTED_VERSIONS: Final = frozenset({VERSION_2005, VERSION_2017, VERSION_2025})


class Hj212Reject(enum.StrEnum):
    """Why a frame or packet was refused."""

    BAD_HEADER = "bad_header"
    """Bytes outside a frame: no ``##`` where a frame should start."""
    BAD_LENGTH = "bad_length"
    """Length field not 4 digits, or the declared length does not end at CRLF."""
    OVERSIZED = "oversized"
    """Declared data segment longer than the configured limit (1024 by the standard)."""
    BAD_CRC = "bad_crc"
    NOT_UTF8 = "not_utf8"
    SYNTAX = "syntax"
    """Data segment structure: missing ``CP=&&``/``&&``, a field without ``=``, duplicates."""
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    """A header field (QN, ST, CN, PW, MN, Flag, PNUM, PNO) with an invalid value."""
    BAD_VALUE = "bad_value"
    """A data value (number, DataTime, ...) that does not parse."""
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_COMMAND = "unknown_command"
    SPLIT_INCOMPLETE = "split_incomplete"
    """A split packet sequence that never completed (timeout, eviction, restart)."""
    UNKNOWN_DEVICE = "unknown_device"
    BAD_PASSWORD = "bad_password"


class QnRtn(enum.IntEnum):
    """Request reply codes (Table 7), sent in 9011."""

    READY = 1
    REFUSED = 2
    PW_ERROR = 3
    MN_ERROR = 4
    ST_ERROR = 5
    FLAG_ERROR = 6
    QN_ERROR = 7
    CN_ERROR = 8
    CRC_ERROR = 9
    UNKNOWN_ERROR = 100


class ExeRtn(enum.IntEnum):
    """Execution result codes (Table 6), sent in 9012."""

    SUCCESS = 1
    FAILED = 2
    BAD_CONDITION = 3
    TIMEOUT = 4
    BUSY = 5
    SYSTEM_FAULT = 6
    NO_DATA = 100


class Hj212Error(EdgeError):
    """A refused packet: ``reason`` says why, ``detail`` says where."""

    def __init__(self, reason: Hj212Reject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Hj212Rejection:
    """A refused frame or packet, with the offending bytes (capped) and what is known of it."""

    reason: Hj212Reject
    detail: str
    raw: bytes = b""
    mn: str | None = None
    qn: str | None = None
    cn: str | None = None


@dataclass(frozen=True, slots=True)
class Hj212Frame:
    """One frame whose length, trailer and CRC checked out."""

    segment: str
    crc: int
    raw: bytes


CpField = tuple[str, str]
CpItem = tuple[CpField, ...]


@dataclass(frozen=True, slots=True)
class Hj212Packet:
    """A parsed data segment. ``cp`` keeps the items (``;``) and their fields (``,``) in order."""

    st: str
    cn: str
    mn: str
    flag: int = VERSION_2017 << 2
    qn: str | None = None
    pw: str = field(default="", repr=False)
    pnum: int | None = None
    pno: int | None = None
    cp: tuple[CpItem, ...] = ()

    @property
    def version(self) -> int:
        """Standard version from Flag bits V5..V0: 0 HJ/T 212-2005, 1 HJ 212-2017, 2 HJ 212-2025."""
        return self.flag >> 2

    @property
    def ack_requested(self) -> bool:
        """Flag bit A: the sender wants a reply."""
        return bool(self.flag & FLAG_ACK)

    @property
    def is_split(self) -> bool:
        """Flag bit D: this is one part of a split packet (PNUM/PNO present)."""
        return bool(self.flag & FLAG_SPLIT)

    def fields(self) -> Iterable[CpField]:
        """Every CP field in order, flattened over items."""
        for item in self.cp:
            yield from item

    def get(self, name: str) -> str | None:
        """The first CP field called ``name``, or None."""
        for key, value in self.fields():
            if key == name:
                return value
        return None


# ---------------------------------------------------------------------------- CRC

def _crc_tables() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    table = []
    for value in range(256):
        reg = value
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        table.append(reg)
    high = [t >> 8 for t in table]
    high2 = [high[high[h]] for h in range(256)]
    # Two bytes per step: the steps are linear over GF(2), so
    # H[H[h ^ b0] ^ b1] == H[H[h]] ^ H[H[b0]] ^ H[b1]; the last two terms are one 64 Ki table.
    pairs = [high2[i & 0xFF] ^ high[i >> 8] for i in range(65536)]
    return tuple(table), tuple(high), tuple(high2), tuple(pairs)


_CRC_TABLE, _CRC_HIGH, _CRC_HIGH2, _CRC_PAIRS = _crc_tables()


def crc16(data: bytes) -> int:
    """Appendix A "ANSI CRC16" of ``data`` (start 0xFFFF, reg = (reg >> 8) ^ byte, 8 x 0xA001).

    Each step XORs the byte into the register's high byte shifted down, so the register
    before the eight shifts is below 256: a step is one lookup of the 16-bit result, and only
    its high byte carries into the next step, which lets the loop take two bytes at a time.
    """
    if not data:
        return 0xFFFF
    h = 0xFF
    body = len(data) - 1
    even = body & ~1
    if even:
        high2, pairs = _CRC_HIGH2, _CRC_PAIRS
        for pair in memoryview(data)[:even].cast("H") if _LITTLE_ENDIAN else _pairs(data, even):
            h = high2[h] ^ pairs[pair]
    if body & 1:
        h = _CRC_HIGH[h ^ data[even]]
    return _CRC_TABLE[h ^ data[body]]


_LITTLE_ENDIAN: Final = sys.byteorder == "little"


def _pairs(data: bytes, end: int) -> Iterable[int]:
    return (data[i] | data[i + 1] << 8 for i in range(0, end, 2))


# ---------------------------------------------------------------------------- framing

def encode_frame(segment: str) -> bytes:
    """Wrap a data segment in ``##`` + length + segment + CRC + CRLF.

    Raises:
        ValueError: the segment is longer than the 4-digit length field can say.
    """
    data = segment.encode("utf-8")
    if len(data) > 9999:
        raise ValueError(f"data segment of {len(data)} bytes does not fit a 4-digit length")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16(data))


_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _check_crc(segment: bytes, crc_field: bytes, raw: bytes) -> Hj212Frame | Hj212Rejection:
    if len(crc_field) != 4 or not all(c in _HEX for c in crc_field):
        return Hj212Rejection(Hj212Reject.BAD_CRC, f"CRC field {crc_field!r} is not 4 hex digits",
                              raw[:REJECTED_RAW_LIMIT])
    sent = int(crc_field, 16)
    computed = crc16(segment)
    if sent != computed:
        return Hj212Rejection(Hj212Reject.BAD_CRC, f"CRC {sent:04X} sent, {computed:04X} computed",
                              raw[:REJECTED_RAW_LIMIT])
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Hj212Rejection(Hj212Reject.NOT_UTF8, f"invalid UTF-8 at byte {exc.start} of the data segment",
                              raw[:REJECTED_RAW_LIMIT])
    return Hj212Frame(text, sent, raw)


class Hj212FrameReader:
    """Cuts a TCP byte stream into frames; resynchronises on ``##`` after any bad frame.

    The buffer never holds more than one maximal frame (plus one read), so a device cannot
    make it grow without bound.
    """

    def __init__(self, max_data_length: int = MAX_DATA_LENGTH) -> None:
        if not 0 < max_data_length <= 9999:
            raise ValueError("max_data_length must be in 1..9999")
        self._max = max_data_length
        self._buf = bytearray()
        # After a refused header the bytes up to the next '##' belong to that refused frame.
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes waiting for the rest of their frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Hj212Frame | Hj212Rejection]:
        """Add received bytes; return the frames and rejections they complete, in order."""
        buf = self._buf
        buf += data
        out: list[Hj212Frame | Hj212Rejection] = []
        while buf:
            start = buf.find(b"##")
            if start < 0:
                # Keep a trailing '#' that may be the first half of the next header.
                keep = 1 if buf.endswith(b"#") else 0
                self._discard(len(buf) - keep, out)
                break
            if start:
                self._discard(start, out)
            self._skipping = False
            if len(buf) < 6:
                break
            length_field = bytes(buf[2:6])
            if not length_field.isdigit():
                out.append(Hj212Rejection(Hj212Reject.BAD_LENGTH,
                                          f"length field {length_field!r} is not 4 decimal digits", bytes(buf[:6])))
                del buf[:2]
                self._skipping = True
                continue
            length = int(length_field)
            if length > self._max:
                out.append(Hj212Rejection(Hj212Reject.OVERSIZED,
                                          f"data segment of {length} exceeds the limit of {self._max}",
                                          bytes(buf[:6])))
                del buf[:2]
                self._skipping = True
                continue
            total = 6 + length + 6
            if len(buf) < total:
                break
            if buf[total - 2:total] == b"\r\n":
                raw = bytes(buf[:total])
                del buf[:total]
                out.append(_check_crc(raw[6:6 + length], raw[6 + length:total - 2], raw))
                continue
            end = self._char_counted_end(length)
            if end == 0:
                break  # non-ASCII frame whose byte length may still be arriving
            if end > 0:
                raw = bytes(buf[:end])
                del buf[:end]
                out.append(_check_crc(raw[6:end - 6], raw[end - 6:end - 2], raw))
                continue
            out.append(Hj212Rejection(Hj212Reject.BAD_LENGTH,
                                      f"declared length {length} does not end at CRLF",
                                      bytes(buf[:min(total, REJECTED_RAW_LIMIT)])))
            del buf[:2]
            self._skipping = True
        return out

    def _char_counted_end(self, length: int) -> int:
        """Frame end for loggers that count UTF-8 characters, not bytes; 0 = wait, -1 = no.

        Table 2 says "ASCII characters"; with Chinese text some loggers count characters.
        Accept such a frame only when the segment up to CRLF has exactly ``length`` characters.
        """
        buf = self._buf
        body = bytes(buf[6:6 + length])
        if body.isascii():
            return -1
        limit = 6 + 4 * length + 6
        crlf = buf.find(b"\r\n", 6 + length, limit)
        if crlf < 0:
            return 0 if len(buf) < limit else -1
        segment = bytes(buf[6:crlf - 4])
        try:
            chars = len(segment.decode("utf-8"))
        except UnicodeDecodeError:
            return -1
        return crlf + 2 if chars == length else -1

    def _discard(self, count: int, out: list[Hj212Frame | Hj212Rejection]) -> None:
        junk = bytes(self._buf[:count])
        del self._buf[:count]
        # Stray line ends between frames are common and harmless; anything else is noted.
        if junk.strip(b"\r\n \t\x00") and not self._skipping:
            out.append(Hj212Rejection(Hj212Reject.BAD_HEADER, f"{len(junk)} bytes outside a frame",
                                      junk[:REJECTED_RAW_LIMIT]))


def decode_frame(raw: bytes, max_data_length: int = MAX_DATA_LENGTH) -> Hj212Frame:
    """Decode exactly one complete frame.

    Raises:
        Hj212Error: the bytes are not exactly one valid frame.
    """
    reader = Hj212FrameReader(max_data_length)
    results = reader.feed(raw)
    if reader.buffered:
        results.append(Hj212Rejection(Hj212Reject.BAD_LENGTH, f"{reader.buffered} bytes of an incomplete frame"))
    if len(results) != 1:
        first = next((r for r in results if isinstance(r, Hj212Rejection)), None)
        if first is not None:
            raise Hj212Error(first.reason, first.detail)
        raise Hj212Error(Hj212Reject.BAD_HEADER, "no frame" if not results else "more than one frame")
    result = results[0]
    if isinstance(result, Hj212Rejection):
        raise Hj212Error(result.reason, result.detail)
    return result


# ---------------------------------------------------------------------------- data segment

_QN_RE: Final = re.compile(r"\d{17}")
_ST_RE: Final = re.compile(r"[0-9A-Z]{2}")
_CN_RE: Final = re.compile(r"\d{4}")
_MN_RE: Final = re.compile(DEVICE_ID_PATTERN)
_NUM_RE: Final = re.compile(r"\d{1,4}")
_HEADER_SPLIT: Final = re.compile(r"[;,]")
MAX_PARTS: Final = 9999


def _show(value: str) -> str:
    return repr(value[:40])


def parse_packet(segment: str) -> Hj212Packet:
    """Parse a data segment into an ``Hj212Packet``.

    Header fields may be separated by ``;`` (the standard) or ``,`` (a slip the standard's
    own examples make); unknown header fields are tolerated. HJ/T 212-2005 packets may omit
    QN and Flag; 2017 and 2025 packets must carry QN.

    Raises:
        Hj212Error: with the reason and the offending field.
    """
    cp_at = segment.find("CP=&&")
    if cp_at < 0:
        raise Hj212Error(Hj212Reject.SYNTAX, "no 'CP=&&' in the data segment")
    if len(segment) < cp_at + 7 or not segment.endswith("&&"):
        raise Hj212Error(Hj212Reject.SYNTAX, "CP is not closed with '&&' at the end of the data segment")
    head = segment[:cp_at]
    if head and head[-1] not in ";,":
        raise Hj212Error(Hj212Reject.SYNTAX, "no ';' before 'CP='")
    header: dict[str, str] = {}
    for part in _HEADER_SPLIT.split(head):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise Hj212Error(Hj212Reject.SYNTAX, f"header field {_show(part)} has no '='")
        if name in header:
            raise Hj212Error(Hj212Reject.SYNTAX, f"header field {name[:20]!r} appears twice")
        header[name] = value
    cp_text = segment[cp_at + 5:-2]

    for required in ("ST", "CN", "MN"):
        if required not in header:
            raise Hj212Error(Hj212Reject.MISSING_FIELD, f"no {required}")
    st, cn, mn = header["ST"], header["CN"], header["MN"]
    if not _ST_RE.fullmatch(st):
        raise Hj212Error(Hj212Reject.BAD_FIELD, f"ST {_show(st)} is not 2 characters 0-9/A-Z")
    if not _CN_RE.fullmatch(cn):
        raise Hj212Error(Hj212Reject.BAD_FIELD, f"CN {_show(cn)} is not 4 digits")
    if not _MN_RE.match(mn) or "\n" in mn:
        raise Hj212Error(Hj212Reject.BAD_FIELD, f"MN {_show(mn)} is not a valid device id")
    flag_text = header.get("Flag")
    flag = 0
    if flag_text is not None:
        if not flag_text.isascii() or not flag_text.isdigit() or len(flag_text) > 3 or int(flag_text) > 255:
            raise Hj212Error(Hj212Reject.BAD_FIELD, f"Flag {_show(flag_text)} is not an integer 0-255")
        flag = int(flag_text)
    version = flag >> 2
    if version not in SUPPORTED_VERSIONS:
        raise Hj212Error(Hj212Reject.UNSUPPORTED_VERSION,
                         f"Flag version {version} (only 0 = 2005, 1 = 2017, 2 = 2025)")
    try:
        cp = parse_cp(cp_text)
    except Hj212Error:
        if version == VERSION_2025:
            # 2025 loggers may SM4-encrypt CP; ciphertext never parses as name=value pairs.
            raise Hj212Error(Hj212Reject.UNSUPPORTED_VERSION, "HJ 212-2025 CP is not name=value pairs: "
                             "encrypted (SM4) data segments are not supported") from None
        raise
    qn = header.get("QN")
    if qn is None:
        if version != VERSION_2005:
            raise Hj212Error(Hj212Reject.MISSING_FIELD, "no QN")
    elif not _QN_RE.fullmatch(qn):
        raise Hj212Error(Hj212Reject.BAD_FIELD, f"QN {_show(qn)} is not 17 digits (YYYYMMDDhhmmsszzz)")
    pw = header.get("PW", "")
    if len(pw) > 64:
        raise Hj212Error(Hj212Reject.BAD_FIELD, "PW longer than 64 characters")
    pnum = pno = None
    if flag & FLAG_SPLIT:
        pnum = _part_number(header, "PNUM")
        pno = _part_number(header, "PNO")
        if pno > pnum:
            raise Hj212Error(Hj212Reject.BAD_FIELD, f"PNO {pno} is beyond PNUM {pnum}")
    return Hj212Packet(st=st, cn=cn, mn=mn, flag=flag, qn=qn, pw=pw, pnum=pnum, pno=pno, cp=cp)


def _part_number(header: dict[str, str], name: str) -> int:
    text = header.get(name)
    if text is None:
        raise Hj212Error(Hj212Reject.MISSING_FIELD, f"Flag says split packet but there is no {name}")
    if not _NUM_RE.fullmatch(text) or int(text) < 1:
        raise Hj212Error(Hj212Reject.BAD_FIELD, f"{name} {_show(text)} is not an integer 1-{MAX_PARTS}")
    return int(text)


def parse_cp(text: str) -> tuple[CpItem, ...]:
    """Parse the inside of ``CP=&&...&&``: items by ``;``, fields by ``,``, ``name=value``.

    Blank items are skipped (the standard's examples show ``CP=&& &&``).

    Raises:
        Hj212Error: a field without ``=`` or with an empty name.
    """
    items: list[CpItem] = []
    # Fields are rarely padded; strip only when the text has whitespace at all.
    padded = " " in text or "\t" in text
    for item_text in text.split(";"):
        if not item_text or (padded and not item_text.strip()):
            continue
        fields: list[CpField] = []
        for field_text in item_text.split(","):
            name, sep, value = field_text.partition("=")
            if padded:
                name, value = name.strip(), value.strip()
            if not sep or not name:
                raise Hj212Error(Hj212Reject.SYNTAX, f"CP field {_show(field_text)} is not name=value")
            fields.append((name, value))
        items.append(tuple(fields))
    return tuple(items)


def build_segment(packet: Hj212Packet) -> str:
    """The data segment text of a packet (header fields in the standard's order)."""
    parts = []
    if packet.qn is not None:
        parts.append(f"QN={packet.qn}")
    parts += [f"ST={packet.st}", f"CN={packet.cn}", f"PW={packet.pw}", f"MN={packet.mn}", f"Flag={packet.flag}"]
    if packet.pnum is not None and packet.pno is not None:
        parts += [f"PNUM={packet.pnum}", f"PNO={packet.pno}"]
    cp = ";".join(",".join(f"{k}={v}" for k, v in item) for item in packet.cp)
    return ";".join(parts) + f";CP=&&{cp}&&"


def encode_packet(packet: Hj212Packet) -> bytes:
    """A packet as a complete frame on the wire."""
    return encode_frame(build_segment(packet))


def split_packet(packet: Hj212Packet, max_cp_chars: int) -> list[Hj212Packet]:
    """Split a packet's CP items over several packets (Flag bit D, PNUM/PNO).

    Every part repeats the leading ``DataTime`` item, as the standard's examples do; QN of
    part n is the original QN plus n-1 milliseconds. A packet that fits is returned alone.
    """
    head: tuple[CpItem, ...] = ()
    body = packet.cp
    if body and body[0] and body[0][0][0] == "DataTime":
        head, body = body[:1], body[1:]
    groups: list[list[CpItem]] = [[]]
    size = 0
    for item in body:
        width = sum(len(k) + len(v) + 2 for k, v in item)
        if groups[-1] and size + width > max_cp_chars:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += width
    if len(groups) == 1:
        return [packet]
    parts = []
    for number, group in enumerate(groups, start=1):
        qn = None if packet.qn is None else f"{int(packet.qn) + number - 1:017d}"
        parts.append(replace(packet, qn=qn, flag=packet.flag | FLAG_SPLIT, pnum=len(groups), pno=number,
                             cp=head + tuple(group)))
    return parts


# ---------------------------------------------------------------------------- replies

def _reply(packet: Hj212Packet, cn: str, cp: tuple[CpItem, ...]) -> bytes:
    # Replies carry the request's QN/PW/MN, ST=91, and Flag without A or D (Flag=4 in 2017).
    flag = packet.version << 2
    return encode_packet(Hj212Packet(st="91", cn=cn, mn=packet.mn, flag=flag, qn=packet.qn, pw=packet.pw, cp=cp))


def data_reply(packet: Hj212Packet) -> bytes:
    """9014 data reply to an upload that asked for one."""
    return _reply(packet, "9014", ())


def notify_reply(packet: Hj212Packet) -> bytes:
    """9013 reply to a notify command."""
    return _reply(packet, "9013", ())


def request_reply(packet: Hj212Packet, code: QnRtn) -> bytes:
    """9011 request reply with ``QnRtn``."""
    return _reply(packet, "9011", ((("QnRtn", str(int(code))),),))


def execution_reply(packet: Hj212Packet, code: ExeRtn) -> bytes:
    """9012 execution result with ``ExeRtn``."""
    return _reply(packet, "9012", ((("ExeRtn", str(int(code))),),))
