"""The Modbus tag map: which registers of which device hold which metric of which Vigil device.

A tag map is one YAML file (see docs/safety.md)::

    gateway: park-1                 # gateway name (broker identity, status topic)
    site: chem-park                 # default site of the assets
    devices:                        # Modbus devices (controllers, PLCs, gauges, SIS gateways)
      - name: gds-a
        host: 127.0.0.1
        port: 502
        unit: 1
        poll_interval_s: 1.0
        timeout_s: 1.0
        tags:
          - {asset: gd-101, name: gas_lel_pct, register: input, address: 0, type: uint16, scale: 0.1, unit: "%LEL"}
          - {asset: gd-101, name: detector_state, register: input, address: 1, enum: {0: normal, 1: fault}}

Everything here is pure: loading and validation, grouping tags into block reads, and decoding
a block's registers (or bits) into values. The poller (``edge.modbus.poller``) does the I/O.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml

from broker.contracts import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from edge.errors import EdgeError

RegisterType = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "float64", "bool"]
WordOrder = Literal["big", "little"]

REGISTER_WIDTH: Final[dict[str, int]] = {"int16": 1, "uint16": 1, "bool": 1, "int32": 2, "uint32": 2,
                                         "float32": 2, "int64": 4, "float64": 4}
_STRUCT: Final[dict[str, str]] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
                                  "int64": ">q", "float64": ">d"}
MAX_REGISTERS_PER_READ: Final = 125
"""Modbus limit for function codes 0x03/0x04."""
MAX_BITS_PER_READ: Final = 2000
"""Modbus limit for function codes 0x01/0x02."""
_ID_RE: Final = re.compile(DEVICE_ID_PATTERN)
_METRIC_RE: Final = re.compile(METRIC_NAME_PATTERN)


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Alarm limits of a tag in engineering units; ``deadband`` must be left before a limit ends."""

    hihi: float | None = None
    hi: float | None = None
    lo: float | None = None
    lolo: float | None = None
    deadband: float = 0.0


class Tag(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One value: where it sits, how to decode it, and which Vigil device and metric it feeds."""

    asset: str
    """The Vigil device id the value belongs to (a detector, a tank, a store)."""
    name: str
    """The metric name in that device's telemetry."""
    register: RegisterType = "holding"
    address: int = 0
    type: DataType | None = None
    """Default ``uint16`` for registers, ``bool`` for coils and discrete inputs."""
    word_order: WordOrder | None = None
    """32/64-bit values: ``big`` = high word first (ABCD), ``little`` = low word first (CDAB)."""
    byte_order: WordOrder | None = None
    """Bytes inside each register: ``big`` (standard) or ``little`` (swapped, BADC)."""
    bit: int | None = None
    """Read one bit (0 = least significant) of a 16-bit register as a bool (status words)."""
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    enum: dict[int, str] | None = None
    """Map a raw integer code to a text value (an unknown code is published with quality ``uncertain``)."""
    valid_range: tuple[float, float] | None = None
    """Instrument range in engineering units; a value outside it has quality ``uncertain``."""
    limits: Limits | None = None


class DeviceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Modbus TCP device and how to poll it."""

    name: str
    host: str
    port: int = 502
    unit: int = 1
    poll_interval_s: float = 1.0
    timeout_s: float = 1.0
    connect_timeout_s: float = 2.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    offline_after: int = 3
    """Failed polls in a row before the device's assets are reported offline."""
    max_block: int = 120
    """Registers per read request (at most 125; bits: 16 x this, at most 2000)."""
    max_gap: int = 8
    """Unused registers allowed inside one block read (reading them is cheaper than another request)."""
    word_order: WordOrder = "big"
    byte_order: WordOrder = "big"
    kind: str = "sensor"
    site: str | None = None
    framer: Literal["socket", "rtu"] = "socket"
    """``socket``: Modbus TCP (MBAP header); ``rtu``: RTU frames (with CRC) over TCP, as a transparent
    serial-to-Ethernet converter in front of an RS-485 controller passes them."""
    tags: list[Tag] = []


class TagMapFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The tag map file's top level."""

    gateway: str = "modbus"
    site: str | None = None
    devices: list[DeviceSpec] = []


class TagMapError(EdgeError, ValueError):
    """The tag map is invalid; the message names the file and the offending key."""


@dataclass(frozen=True, slots=True)
class ResolvedTag:
    """A tag with every default applied: what the decoder needs."""

    asset: str
    name: str
    register: RegisterType
    address: int
    type: DataType
    width: int
    word_order: WordOrder
    byte_order: WordOrder
    bit: int | None
    scale: float
    offset: float
    unit: str
    enum: dict[int, str] | None
    valid_range: tuple[float, float] | None
    limits: Limits | None


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: a contiguous range of one register type covering some tags."""

    register: RegisterType
    start: int
    count: int
    tags: tuple[ResolvedTag, ...]


@dataclass(frozen=True, slots=True)
class TagMap:
    """A loaded, validated tag map."""

    gateway: str
    site: str | None
    devices: tuple[DeviceSpec, ...]
    tags: dict[str, tuple[ResolvedTag, ...]]
    """Resolved tags per device name."""
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> TagMap:
        """Load and validate a tag map file.

        Raises:
            TagMapError: naming the file and the offending key.
        """
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TagMapError(f"{path}: {exc}") from None
        return cls.from_data(raw, str(path))

    @classmethod
    def from_data(cls, raw: Any, source: str = "<memory>") -> TagMap:
        """Build a tag map from parsed YAML/JSON data.

        Raises:
            TagMapError: naming the source and the offending key.
        """
        try:
            parsed = msgspec.convert(raw, TagMapFile, strict=False)
        except msgspec.ValidationError as exc:
            raise TagMapError(f"{source}: {exc}") from None
        if not _ID_RE.match(parsed.gateway):
            raise TagMapError(f"{source}: gateway: {parsed.gateway!r} does not match {DEVICE_ID_PATTERN}")
        names: set[str] = set()
        owners: dict[tuple[str, str], str] = {}
        tags: dict[str, tuple[ResolvedTag, ...]] = {}
        for i, dev in enumerate(parsed.devices):
            where = f"{source}: devices[{i}]"
            _check_device(dev, where)
            if dev.name in names:
                raise TagMapError(f"{where}.name: duplicate device {dev.name!r}")
            names.add(dev.name)
            resolved = []
            for j, tag in enumerate(dev.tags):
                rt = _resolve(tag, dev, f"{where}.tags[{j}]")
                key = (rt.asset, rt.name)
                if key in owners:
                    raise TagMapError(f"{where}.tags[{j}]: metric {rt.name!r} of {rt.asset!r} is already read "
                                      f"by {owners[key]}")
                owners[key] = f"devices[{i}].tags[{j}]"
                resolved.append(rt)
            tags[dev.name] = tuple(resolved)
        return cls(parsed.gateway, parsed.site, tuple(parsed.devices), tags, source)

    def assets(self) -> dict[str, tuple[str, str | None]]:
        """Every asset id with its (kind, site)."""
        out: dict[str, tuple[str, str | None]] = {}
        for dev in self.devices:
            for tag in self.tags[dev.name]:
                out.setdefault(tag.asset, (dev.kind, dev.site or self.site))
        return out


def _check_device(dev: DeviceSpec, where: str) -> None:
    checks = [
        (bool(_ID_RE.match(dev.name)), "name", f"{dev.name!r} does not match {DEVICE_ID_PATTERN}"),
        (0 < dev.port < 65536, "port", "must be 1-65535"),
        (0 <= dev.unit <= 255, "unit", "must be 0-255"),
        (dev.poll_interval_s > 0, "poll_interval_s", "must be positive"),
        (dev.timeout_s > 0, "timeout_s", "must be positive"),
        (dev.connect_timeout_s > 0, "connect_timeout_s", "must be positive"),
        (0 < dev.backoff_min_s <= dev.backoff_max_s, "backoff_min_s", "must be positive and <= backoff_max_s"),
        (dev.offline_after >= 1, "offline_after", "must be at least 1"),
        (1 <= dev.max_block <= MAX_REGISTERS_PER_READ, "max_block", f"must be 1-{MAX_REGISTERS_PER_READ}"),
        (dev.max_gap >= 0, "max_gap", "must not be negative"),
        (dev.kind in ("sensor", "elevator", "emission", "vehicle", "camera"), "kind", "unknown device kind"),
    ]
    for ok, key, problem in checks:
        if not ok:
            raise TagMapError(f"{where}.{key}: {problem}")


def _resolve(tag: Tag, dev: DeviceSpec, where: str) -> ResolvedTag:
    if not _ID_RE.match(tag.asset):
        raise TagMapError(f"{where}.asset: {tag.asset!r} does not match {DEVICE_ID_PATTERN}")
    if not _METRIC_RE.match(tag.name) or tag.name == "tags_bad":
        raise TagMapError(f"{where}.name: {tag.name!r} is not a valid metric name (or is reserved)")
    if not 0 <= tag.address <= 65535:
        raise TagMapError(f"{where}.address: must be 0-65535")
    bits = tag.register in ("coil", "discrete")
    dtype: DataType = tag.type or ("bool" if bits or tag.bit is not None else "uint16")
    if bits and dtype != "bool":
        raise TagMapError(f"{where}.type: {tag.register} values are bits; type must be bool")
    if not bits and dtype == "bool" and tag.bit is None:
        raise TagMapError(f"{where}.bit: a bool in a register needs `bit` (0-15)")
    if tag.bit is not None and (bits or not 0 <= tag.bit <= 15 or dtype != "bool"):
        raise TagMapError(f"{where}.bit: only for register tags of type bool, 0-15")
    width = 1 if bits else REGISTER_WIDTH[dtype]
    if tag.address + width - 1 > 65535:
        raise TagMapError(f"{where}.address: value runs past register 65535")
    if tag.enum is not None and dtype in ("float32", "float64", "bool"):
        raise TagMapError(f"{where}.enum: only integer types map codes to text")
    if tag.scale == 0 or not math.isfinite(tag.scale) or not math.isfinite(tag.offset):
        raise TagMapError(f"{where}.scale: must be a finite, non-zero number")
    if tag.valid_range is not None and not tag.valid_range[0] < tag.valid_range[1]:
        raise TagMapError(f"{where}.valid_range: [min, max] with min < max")
    return ResolvedTag(
        asset=tag.asset, name=tag.name, register=tag.register, address=tag.address, type=dtype, width=width,
        word_order=tag.word_order or dev.word_order, byte_order=tag.byte_order or dev.byte_order, bit=tag.bit,
        scale=tag.scale, offset=tag.offset, unit=tag.unit, enum=tag.enum, valid_range=tag.valid_range,
        limits=tag.limits,
    )


def plan_blocks(tags: Sequence[ResolvedTag], max_block: int = 120, max_gap: int = 8) -> list[Block]:
    """Group tags into as few reads as possible: contiguous (gaps up to ``max_gap``) per register type.

    A tag never straddles two blocks; several tags may share registers (bits of one status word).
    """
    out: list[Block] = []
    for register in ("holding", "input", "coil", "discrete"):
        group = sorted((t for t in tags if t.register == register), key=lambda t: (t.address, t.name))
        if not group:
            continue
        limit = min(max_block * 16, MAX_BITS_PER_READ) if register in ("coil", "discrete") else max_block
        gap = max_gap * 16 if register in ("coil", "discrete") else max_gap
        current: list[ResolvedTag] = []
        start = end = 0
        for tag in group:
            t_end = tag.address + tag.width
            if current and tag.address - end <= gap and max(end, t_end) - start <= limit:
                current.append(tag)
                end = max(end, t_end)
                continue
            if current:
                out.append(Block(register, start, end - start, tuple(current)))
            current, start, end = [tag], tag.address, t_end
        out.append(Block(register, start, end - start, tuple(current)))
    return out


Quality = Literal["good", "bad", "uncertain"]


def decode_tag(tag: ResolvedTag, values: Sequence[int] | Sequence[bool], start: int) -> tuple[Any, Quality]:
    """A tag's engineering value and quality from a block's registers (or bits) read from ``start``.

    Never raises: a value that cannot be decoded comes back as ``(None, "bad")``.
    """
    off = tag.address - start
    if off < 0 or off + tag.width > len(values):
        return None, "bad"
    if tag.register in ("coil", "discrete"):
        return bool(values[off]), "good"
    words = values[off:off + tag.width]
    if any(not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 0xFFFF for w in words):
        return None, "bad"
    if tag.bit is not None:
        return bool((words[0] >> tag.bit) & 1), "good"
    raw = _words_to_number(tag, words)
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, "bad"
    if tag.enum is not None:
        text = tag.enum.get(int(raw))
        return (text, "good") if text is not None else (f"code_{int(raw)}", "uncertain")
    if tag.type == "float32":
        raw = float(f"{raw:.7g}")  # a float32 carries ~7 significant digits; the rest is conversion noise
    value = round(raw * tag.scale + tag.offset, 9) if (tag.scale != 1.0 or tag.offset != 0.0) else raw
    if tag.valid_range is not None and not tag.valid_range[0] <= value <= tag.valid_range[1]:
        return value, "uncertain"
    return value, "good"


def _words_to_number(tag: ResolvedTag, words: Sequence[int]) -> int | float:
    if tag.width == 1 and tag.byte_order == "big":
        w = words[0]
        return w - 0x10000 if tag.type == "int16" and w >= 0x8000 else w
    ordered = list(words) if tag.word_order == "big" else list(reversed(words))
    if tag.byte_order == "little":
        ordered = [((w & 0xFF) << 8) | (w >> 8) for w in ordered]
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    return struct.unpack(_STRUCT[tag.type], data)[0]  # type: ignore[no-any-return]


def encode_value(dtype: DataType, value: float, word_order: WordOrder = "big", byte_order: WordOrder = "big") -> list[int]:
    """Registers holding ``value`` (raw, before scaling) the way ``decode_tag`` reads them (simulators, tests)."""
    if dtype == "bool":
        return [1 if value else 0]
    fmt = _STRUCT[dtype]
    number: int | float = float(value) if dtype.startswith("float") else round(value)
    data = struct.pack(fmt, number)
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words if word_order == "big" else list(reversed(words))
