"""Device adapter, part 4: Modbus devices read through the real ``vigil edge modbus`` code on a scripted clock.

The scenario gives a tag map (the ``--tags`` file format, inline or a path) and what the
Modbus devices hold over time: tag values in engineering units (encoded to raw registers by
the tag's own inverse: offset, scale, enum, bit, word and byte order), raw register or bit
overrides, and read failures (exception responses, timeouts, a device gone from the network).

What runs for real, per poll of each Modbus device at its ``poll_interval_s``:

- ``edge.modbus.tagmap``: loading/validation, ``plan_blocks`` (the reads a poll makes) and
  ``decode_tag`` on the raw block contents;
- ``edge.modbus.poller.DevicePoller``: ``complete`` (quality marking: a block not read makes
  its tags ``bad`` with the reason, never a stale value; failures in a row, the last failure,
  the re-plan after an illegal address) and the reconnect backoff (``may_connect``,
  ``connect_failed``, ``connected_ok``);
- ``edge.modbus.gateway.ModbusGateway.publish``: per-asset telemetry with quality and
  ``tags_bad``, retained status online/offline after ``offline_after`` failed polls,
  ``tag_limit`` events with deadband; the exact payload bytes and topics it hands its sink.

What is modelled instead of run: the TCP connection and pymodbus (``_ensure_connected``'s
socket, ``_read``'s request and its mapping of client errors to reasons). The adapter hands
``complete`` what ``_read`` returns: the block's registers, or ``(None, reason)`` with the
reason ``_read`` gives for that failure, and drops the "connection" after a fatal one as
``poll_once`` does. The gateway's store-and-forward link is the runner's ``Transport``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from broker.registry import DeviceRegistry
from scenario.devices import DeviceFeed, Transport
from scenario.spec import COMMON_DEVICE_KEYS, ScenarioError, ValueGen, gens, offset

if TYPE_CHECKING:
    from edge.modbus.poller import BlockRead, DevicePoller
    from edge.modbus.tagmap import Block, ResolvedTag, TagMap

_KEYS: Final = frozenset({"tags", "from", "until", "values", "registers", "failures"})
FATAL_REASONS: Final = frozenset({"timeout", "connection_lost", "no_response", "wrong_transaction", "bad_frame",
                                  "wrong_length", "client_error"})
"""Read failures after which ``poll_once`` drops the connection (``_read`` returns fatal)."""
FAILURE_KINDS: Final = FATAL_REASONS | {"exception", "unreachable"}
_INT_RANGE: Final = {"int16": (-0x8000, 0x7FFF), "uint16": (0, 0xFFFF), "int32": (-0x80000000, 0x7FFFFFFF),
                     "uint32": (0, 0xFFFFFFFF), "int64": (-(2 ** 63), 2 ** 63 - 1)}


@dataclass(frozen=True, slots=True)
class _Segment:
    start: float
    end: float
    values: dict[tuple[str, str], ValueGen]


@dataclass(frozen=True, slots=True)
class _Override:
    start: float
    end: float
    device: str
    register: str
    address: int
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Failure:
    start: float
    end: float
    device: str | None
    kind: str
    code: int
    register: str | None
    first: int
    last: int

    def hits(self, block: Block) -> bool:
        """Whether a read of ``block`` is affected (no register given: every read)."""
        if self.register is None:
            return True
        return block.register == self.register and block.start <= self.last and self.first < block.start + block.count


def _window(item: dict[str, Any], where: str, end_default: float) -> tuple[float, float]:
    start = offset(item.get("from", item.get("at", 0)), f"{where}.from")
    end = offset(item["until"], f"{where}.until") if "until" in item else end_default
    if end <= start:
        raise ScenarioError(f"{where}: until must be after from")
    return start, end


def _load_tagmap(raw: Any, base: Path, where: str) -> TagMap:
    from edge.modbus.tagmap import TagMap, TagMapError

    try:
        if isinstance(raw, dict):
            return TagMap.from_data(raw, f"{where}.tags")
        if isinstance(raw, str):
            return TagMap.load(base / raw)
    except TagMapError as exc:
        raise ScenarioError(f"{where}.tags: {exc}") from None
    raise ScenarioError(f"{where}.tags: the tag map (inline mapping, `vigil edge modbus --tags` format) or its path")


def encode_tag(tag: ResolvedTag, value: Any, where: str) -> list[int]:
    """Raw registers (or one bit as 0/1) holding ``value`` (engineering units, enum text) for ``tag``."""
    from edge.modbus.tagmap import encode_value

    if tag.register in ("coil", "discrete") or tag.bit is not None:
        if not isinstance(value, bool | int) or (isinstance(value, int) and value not in (0, 1)):
            raise ScenarioError(f"{where}: {tag.asset}.{tag.name} is a bit: true or false, got {value!r}")
        return [int(value)]
    if tag.enum is not None and isinstance(value, str):
        codes = {text: code for code, text in tag.enum.items()}
        if value not in codes:
            raise ScenarioError(f"{where}: {value!r} is not in the enum of {tag.asset}.{tag.name} {sorted(codes)}")
        raw: float = codes[value]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # The inverse of decode_tag's engineering conversion (value = raw * scale + offset).
        raw = (float(value) - tag.offset) / tag.scale
    else:
        raise ScenarioError(f"{where}: {tag.asset}.{tag.name} needs a number, got {value!r}")
    if tag.type in _INT_RANGE:
        lo, hi = _INT_RANGE[tag.type]
        if not math.isfinite(raw) or not lo <= round(raw) <= hi:
            raise ScenarioError(f"{where}: {value!r} does not fit {tag.asset}.{tag.name} ({tag.type}, scale "
                                f"{tag.scale:g}, offset {tag.offset:g}); clamp the generator with min/max")
    return encode_value(tag.type, raw, tag.word_order, tag.byte_order)


class _Image:
    """What one Modbus device holds: registers and bits by register type and address (0 until written)."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[int, int]] = {"holding": {}, "input": {}, "coil": {}, "discrete": {}}

    def write_tag(self, tag: ResolvedTag, words: list[int]) -> None:
        cells = self.cells[tag.register]
        if tag.bit is not None:
            old = cells.get(tag.address, 0)
            cells[tag.address] = (old | (1 << tag.bit)) if words[0] else (old & ~(1 << tag.bit))
            return
        for i, w in enumerate(words):
            cells[tag.address + i] = w

    def read(self, block: Block) -> list[int] | list[bool]:
        cells = self.cells[block.register]
        if block.register in ("coil", "discrete"):
            padded = (block.count + 7) // 8 * 8  # a bit read answers whole bytes, as pymodbus hands them over
            return [bool(cells.get(block.start + i, 0)) for i in range(padded)]
        return [cells.get(block.start + i, 0) & 0xFFFF for i in range(block.count)]


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (the gateway's publish into an in-memory sink) without a loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the gateway's publish suspended: the scenario sink must not wait")


@contextlib.contextmanager
def _quiet_poller_log() -> Iterator[None]:
    # The poller logs each device's first failure and its recovery (useful in a gateway's journal);
    # in a scenario run they are scripted and the run's notes summarise them instead.
    logger = logging.getLogger("edge.modbus.poller")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def modbus_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random, registry: DeviceRegistry,
                base: Path) -> DeviceFeed:
    """A Modbus gateway run: scripted device contents and failures -> the real decode, poller state and publish."""
    from edge.modbus.gateway import ModbusGateway
    from edge.modbus.poller import BlockRead

    feed = DeviceFeed(spec["id"])
    unknown = set(spec) - _KEYS - COMMON_DEVICE_KEYS
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)} (modbus: {sorted(_KEYS)})")
    if "tags" not in spec or "until" not in spec:
        raise ScenarioError(f"{where}: a modbus device needs tags (the tag map) and until (the last poll)")
    tagmap = _load_tagmap(spec["tags"], base, where)
    by_key = {(t.asset, t.name): t for tags in tagmap.tags.values() for t in tags}
    device_of = {(t.asset, t.name): name for name, tags in tagmap.tags.items() for t in tags}
    for asset in tagmap.assets():
        if registry.device(asset) is None:
            raise ScenarioError(f"{where}.tags: asset {asset!r} is not in the scenario's registry")
    first_poll = offset(spec.get("from", 0), f"{where}.from")
    last = offset(spec["until"], f"{where}.until")
    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    transport = Transport(spec, where, rng, feed, edge_outages=True)

    segments: list[_Segment] = []
    for i, seg in enumerate(spec.get("values") or []):
        sw = f"{where}.values[{i}]"
        if not isinstance(seg, dict) or set(seg) - {"from", "until", "at", "set"} or not isinstance(seg.get("set"), dict):
            raise ScenarioError(f"{sw}: {{from, until, set: {{asset: {{metric: value}}}}}}")
        start, end = _window(seg, sw, last)
        values: dict[tuple[str, str], ValueGen] = {}
        for asset, metrics in seg["set"].items():
            for metric, gen in gens(metrics, f"{sw}.set.{asset}").items():
                if (str(asset), metric) not in by_key:
                    raise ScenarioError(f"{sw}.set.{asset}.{metric}: no such tag in the tag map")
                values[(str(asset), metric)] = gen
        segments.append(_Segment(start, end, values))

    devices = {d.name: d for d in tagmap.devices}
    overrides: list[_Override] = []
    for i, o in enumerate(spec.get("registers") or []):
        ow = f"{where}.registers[{i}]"
        if not isinstance(o, dict) or set(o) - {"from", "at", "until", "device", "register", "address", "values"} \
                or o.get("device") not in devices or o.get("register") not in ("holding", "input", "coil", "discrete"):
            raise ScenarioError(f"{ow}: {{from, until, device: <tag map device>, register: holding|input|coil|"
                                f"discrete, address, values: [...]}} (devices: {sorted(devices)})")
        start, end = _window(o, ow, last)
        raw: Any = o.get("values")
        try:
            words = tuple(int(v) for v in (raw if isinstance(raw, list) else [raw]))
            address = int(o.get("address", 0))
        except (TypeError, ValueError):
            raise ScenarioError(f"{ow}.values: register values (0-65535) or bits (0/1)") from None
        if not all(0 <= w <= 0xFFFF for w in words):
            raise ScenarioError(f"{ow}.values: a register holds 0-65535 (0x0000-0xFFFF)")
        overrides.append(_Override(start, end, str(o["device"]), str(o["register"]), address, words))

    failures: list[_Failure] = []
    for i, f in enumerate(spec.get("failures") or []):
        fw = f"{where}.failures[{i}]"
        if not isinstance(f, dict) or set(f) - {"from", "at", "until", "device", "kind", "code", "register",
                                                "address", "count"}:
            raise ScenarioError(f"{fw}: {{from, until, device, kind, code, register, address, count}}")
        kind = str(f.get("kind", ""))
        if kind not in FAILURE_KINDS:
            raise ScenarioError(f"{fw}.kind: one of {sorted(FAILURE_KINDS)}")
        if f.get("register") not in (None, "holding", "input", "coil", "discrete"):
            raise ScenarioError(f"{fw}.register: holding, input, coil or discrete (omitted: every read)")
        if f.get("device") is not None and f["device"] not in devices:
            raise ScenarioError(f"{fw}.device: {f['device']!r} is not a device of the tag map {sorted(devices)}")
        start, end = _window(f, fw, last)
        try:
            address = int(f.get("address", 0))
            count = max(1, int(f.get("count", 1)))
            code = int(f.get("code", 4))
        except (TypeError, ValueError):
            raise ScenarioError(f"{fw}: address, count and code are integers") from None
        failures.append(_Failure(start, end, f.get("device"), kind, code, f.get("register"), address,
                                 address + count - 1))

    clock = [0.0]
    out: list[tuple[str, bytes, bool]] = []

    async def sink(topic: str, payload: bytes, *, retain: bool = False) -> None:
        out.append((topic, payload, retain))

    gateway = ModbusGateway(tagmap, sink, clock=lambda: clock[0], rng=random.Random(rng.random()))
    images = {name: _Image() for name in devices}
    connected = dict.fromkeys(devices, False)
    seg_index: Counter[tuple[int, str]] = Counter()
    polls = sorted((first_poll + k * d.poll_interval_s, n, d.name) for n, d in enumerate(tagmap.devices)
                   for k in range(int((last - first_poll) / d.poll_interval_s - 1e-9) + 1))
    with _quiet_poller_log():
        for t, _, name in polls:
            if t >= last:
                continue
            image = images[name]
            for s_i, seg in enumerate(segments):
                if not seg.start <= t < seg.end:
                    continue
                k = seg_index[(s_i, name)]
                fraction = (t - seg.start) / (seg.end - seg.start)
                touched = False
                for key, gen in seg.values.items():
                    if device_of[key] == name:
                        tag = by_key[key]
                        image.write_tag(tag, encode_tag(tag, gen.at(k, fraction, rng), f"{where}.values at {t:g}s"))
                        touched = True
                if touched:
                    seg_index[(s_i, name)] += 1
            poller = gateway.pollers[name]
            now = epoch + t + skew
            clock[0] = now
            failure = next((f for f in failures if f.start <= t < f.end and f.device in (None, name)), None)
            reads = _reads(poller, image, overrides, failure, name, t, now, connected, BlockRead)
            result = poller.complete(now, reads)
            out.clear()
            _drive(gateway.publish(result))
            for topic, payload, retain in out:
                transport.send(t, topic, payload, retain)
    stats = gateway.stats()
    for name, counters in stats["devices"].items():
        reasons = counters.get("reasons") or {}
        feed.notes.append(f"modbus {spec['id']}/{name}: {counters.get('polls', 0)} polls, "
                          f"{counters.get('failed_polls', 0)} failed"
                          + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(reasons.items()))})" if reasons else ""))
    return feed


def _reads(poller: DevicePoller, image: _Image, overrides: list[_Override], failure: _Failure | None, name: str,
           t: float, now: float, connected: dict[str, bool], block_read: type[BlockRead]) -> list[BlockRead]:
    """What ``poll_once`` would hand ``complete`` for this poll: block contents or failure reasons."""
    blocks = list(poller.blocks)
    if failure is not None and failure.kind == "unreachable":
        # The device closed its connection or left the network: the client sees the connection closed
        # and the poll starts with a connect attempt (a silent power-off is `timeout`, then `unreachable`).
        connected[name] = False
    if not connected[name]:
        # _ensure_connected: a connect attempt unless the backoff forbids it.
        if not poller.may_connect(now):
            return [block_read(b, None, "backoff") for b in blocks]
        if failure is not None and failure.kind == "unreachable":
            reason = poller.connect_failed(now)
            return [block_read(b, None, reason) for b in blocks]
        poller.connected_ok()
        connected[name] = True
    reads = []
    lost: str | None = None
    for block in blocks:
        if lost is not None:
            reads.append(block_read(block, None, lost))
            continue
        if failure is not None and failure.hits(block):
            if failure.kind == "exception":
                reads.append(block_read(block, None, f"modbus_exception_{failure.code}"))
                continue
            reads.append(block_read(block, None, failure.kind))
            lost, connected[name] = "connection_lost", False
            continue
        values = image.read(block)
        for o in overrides:
            if o.device == name and o.register == block.register and o.start <= t < o.end:
                for i, v in enumerate(o.values):
                    pos = o.address + i - block.start
                    if 0 <= pos < block.count:
                        values[pos] = bool(v) if block.register in ("coil", "discrete") else v  # type: ignore[call-overload]
        reads.append(block_read(block, values, ""))
    return reads
