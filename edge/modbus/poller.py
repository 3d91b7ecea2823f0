"""Polling one Modbus TCP device: connect, read its blocks, decode, reconnect with backoff.

``DevicePoller.poll_once`` never raises for anything the device or the network does: each
block that could not be read marks its tags ``bad`` with a reason (``timeout``,
``connection_lost``, ``unreachable``, ``modbus_exception_N``, ``wrong_length``,
``client_error``), so a value that was not read is never published as a stale good one.
A failed connection is closed and retried after an exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from edge.modbus.tagmap import Block, DeviceSpec, Quality, ResolvedTag, decode_tag, plan_blocks

log = logging.getLogger(__name__)

_READERS = {"holding": "read_holding_registers", "input": "read_input_registers", "coil": "read_coils",
            "discrete": "read_discrete_inputs"}
ILLEGAL_ADDRESS = 2


@dataclass(slots=True)
class TagReading:
    """One tag's outcome of one poll."""

    tag: ResolvedTag
    value: Any
    quality: Quality
    reason: str = ""


@dataclass(slots=True)
class BlockRead:
    """One block's outcome within a poll: its registers (or bits), or why it could not be read."""

    block: Block
    values: Sequence[int] | Sequence[bool] | None
    reason: str = ""


@dataclass(slots=True)
class PollResult:
    """Everything one poll of one device produced."""

    device: str
    ts: float
    """Epoch seconds when the poll started (the measurement time)."""
    readings: list[TagReading]
    ok: bool
    """Whether every block was read."""
    reasons: Counter[str] = field(default_factory=Counter)


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of an RTU frame (poly 0xA001 reflected, start 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


PROTOCOL_ERRORS: Counter[str] = Counter()
"""Undecodable frames pymodbus raised on inside its transport callback (counted by the loop guard)."""


def install_loop_guard(loop: asyncio.AbstractEventLoop) -> None:
    """Count and log in one line a device's undecodable frame instead of asyncio's fatal-error traceback.

    pymodbus decodes inside ``data_received``; a malformed frame makes it raise there, and
    asyncio then logs "Fatal error: protocol.data_received() call failed" with a traceback and
    drops the connection. The poller already marks the read bad and reconnects, so the event is
    a counted device fault, not a crash. Other loop errors go to the previous handler.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_vigil_modbus_guard", False):
        return

    def guard(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        proto = context.get("protocol")
        exc = context.get("exception")
        if proto is not None and type(proto).__module__.startswith("pymodbus") and isinstance(exc, Exception):
            PROTOCOL_ERRORS[type(exc).__name__] += 1
            log.warning("modbus: undecodable frame from a device, connection dropped: %s", exc)
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    guard._vigil_modbus_guard = True  # type: ignore[attr-defined]
    loop.set_exception_handler(guard)


class DevicePoller:
    """Reads one Modbus device's tags in planned blocks over one TCP connection."""

    def __init__(self, spec: DeviceSpec, tags: Sequence[ResolvedTag], *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self.tags = tuple(tags)
        self.blocks = plan_blocks(self.tags, spec.max_block, spec.max_gap)
        self._clock = clock
        self._rng = rng or random.Random()
        self._client: AsyncModbusTcpClient | None = None
        self._next_connect = 0.0
        self._attempts = 0
        self._sent_tid = -1
        self._sent_fc = -1
        self._tid_mismatch = False
        self._rx = b""
        self.failures_in_row = 0
        self.last_failure = ""
        """The latest real failure reason (not ``backoff``), for status messages."""
        self.counters: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    @property
    def connected(self) -> bool:
        """Whether a TCP connection to the device is open now."""
        return self._client is not None and bool(self._client.connected)

    async def close(self) -> None:
        """Close the connection (the next poll reconnects)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def _ensure_connected(self) -> str | None:
        """Connect if needed; returns a failure reason, or None when connected."""
        if self.connected:
            return None
        now = self._clock()  # the poller's clock (wall time; simulated time in accelerated tests)
        if not self.may_connect(now):
            return "backoff"
        await self.close()
        install_loop_guard(asyncio.get_running_loop())
        framer = FramerType.RTU if self.spec.framer == "rtu" else FramerType.SOCKET
        client = AsyncModbusTcpClient(self.spec.host, port=self.spec.port, framer=framer, timeout=self.spec.timeout_s,
                                      retries=0,
                                      reconnect_delay=0, reconnect_delay_max=0, trace_pdu=self._trace_pdu,
                                      trace_packet=self._trace_packet)
        ok = False
        try:
            ok = bool(await asyncio.wait_for(client.connect(), self.spec.connect_timeout_s))
        except (TimeoutError, OSError, ModbusException):
            ok = False
        except Exception as exc:  # a client bug must not stop the poller
            log.warning("modbus %s: connect failed: %r", self.spec.name, exc)
        if not ok or not client.connected:
            with contextlib.suppress(Exception):
                client.close()
            return self.connect_failed(now)
        self._client = client
        self.connected_ok()
        return None

    def may_connect(self, now: float) -> bool:
        """Whether the backoff after failed connects allows a new attempt at ``now``."""
        return now >= self._next_connect

    def connect_failed(self, now: float) -> str:
        """Record a failed connect: schedule the next attempt (exponential backoff, jitter); the poll reason."""
        self._attempts += 1
        delay = min(self.spec.backoff_max_s, self.spec.backoff_min_s * 2 ** min(self._attempts - 1, 16))
        self._next_connect = now + delay * self._rng.uniform(0.5, 1.0)
        self.counters["connect_failures"] += 1
        return "unreachable"

    def connected_ok(self) -> None:
        """Record a successful connect (the backoff starts over)."""
        self._attempts = 0
        self.counters["connects"] += 1

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        # pymodbus accepts an answer carrying transaction id 0 for any request; a device that answers
        # another request (or garbage that parses) must not pass for this one, so match ids here.
        tid = int(getattr(pdu, "transaction_id", 0) or 0)
        fc = int(getattr(pdu, "function_code", 0) or 0)
        if sending:
            self._sent_tid, self._sent_fc = tid, fc
        elif tid != self._sent_tid or fc & 0x7F != self._sent_fc:
            # Another request's answer, or an answer to a different function (input vs holding registers).
            self._tid_mismatch = True
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands its whole unconsumed receive buffer here before decoding it: keep it so the
        # answer's framing can be checked (pymodbus ignores a bit read's byte count).
        self._rx = b"" if sending else bytes(data[:512])
        return data

    def _frame_ok(self, block: Block) -> bool:
        """Whether the raw answer is one well-formed frame for this read (ids, function, byte count, length)."""
        rx = self._rx
        bits = block.register in ("coil", "discrete")
        expected = (block.count + 7) // 8 if bits else 2 * block.count
        if self.spec.framer == "rtu":
            # unit, function, byte count, data, CRC-16/MODBUS (low byte first)
            return (len(rx) == 5 + expected and rx[0] == self.spec.unit and rx[1] == self._sent_fc
                    and rx[2] == expected and crc16_modbus(rx[:-2]) == int.from_bytes(rx[-2:], "little"))
        if len(rx) < 9:
            return False
        tid, pid, length, _unit = struct.unpack(">HHHB", rx[:7])
        pdu = rx[7:6 + length]
        return (tid == self._sent_tid and pid == 0 and len(pdu) == length - 1 == 2 + expected
                and pdu[0] == self._sent_fc and pdu[1] == expected)

    async def poll_once(self) -> PollResult:
        """Read every block once; tags of blocks that failed come back ``bad`` with the reason."""
        ts = self._clock()
        failure = await self._ensure_connected()
        reads: list[BlockRead] = []
        for block in self.blocks:
            if failure is not None:
                reads.append(BlockRead(block, None, failure))
                continue
            values, reason, fatal = await self._read(block)
            reads.append(BlockRead(block, values, reason))
            if values is None and fatal:
                # The connection is gone or out of step: the rest of this poll cannot be trusted.
                await self.close()
                failure = "connection_lost"
        return self.complete(ts, reads)

    def complete(self, ts: float, reads: Sequence[BlockRead]) -> PollResult:
        """Decode one poll's block reads into tag readings and keep the poller's state (pure: no I/O).

        A block that was not read marks its tags ``bad`` with the reason; failures in a row,
        counters, the last failure and the block plan (an illegal address splits its block) are
        updated. ``poll_once`` calls it after the reads; the scenario runner calls it directly.
        """
        readings: list[TagReading] = []
        reasons: Counter[str] = Counter()
        illegal: list[int] = []
        for read in reads:
            block = read.block
            if read.values is None:
                readings.extend(TagReading(t, None, "bad", read.reason) for t in block.tags)
                reasons[read.reason] += 1
                if read.reason == f"modbus_exception_{ILLEGAL_ADDRESS}" and len(block.tags) > 1 \
                        and block in self.blocks:
                    illegal.append(self.blocks.index(block))
                continue
            for tag in block.tags:
                value, quality = decode_tag(tag, read.values, block.start)
                readings.append(TagReading(tag, value, quality, "" if quality != "bad" else "undecodable"))
        if illegal:
            # One bad address inside a merged block would keep every neighbour bad: read its tags one by one.
            self.blocks = self._split(illegal)
            self.counters["replans"] += 1
        ok = not reasons
        if not ok and self.failures_in_row == 0:
            log.warning("modbus %s (%s:%d unit %d): poll failed: %s", self.spec.name, self.spec.host, self.spec.port,
                        self.spec.unit, ", ".join(f"{k} x{v}" for k, v in reasons.items()))
        elif ok and self.failures_in_row > 0:
            log.info("modbus %s: answering again after %d failed polls", self.spec.name, self.failures_in_row)
        self.failures_in_row = 0 if ok else self.failures_in_row + 1
        self.counters["polls"] += 1
        self.counters["tags_read"] += len(readings)
        if not ok:
            self.counters["failed_polls"] += 1
            self.reasons.update(reasons)
            real = [r for r in reasons if r != "backoff"]
            if real:
                self.last_failure = real[0]
        return PollResult(self.spec.name, ts, readings, ok, reasons)

    def _split(self, indices: list[int]) -> list[Block]:
        out: list[Block] = []
        for i, block in enumerate(self.blocks):
            if i in indices:
                out.extend(Block(block.register, t.address, t.width, (t,)) for t in block.tags)
            else:
                out.append(block)
        return out

    async def _read(self, block: Block) -> tuple[Sequence[int] | Sequence[bool] | None, str, bool]:
        """(values, failure reason, whether the connection must be dropped)."""
        client = self._client
        if client is None:
            return None, "connection_lost", True
        reader = getattr(client, _READERS[block.register])
        self._tid_mismatch = False
        try:
            # pymodbus applies its own timeout per request; the outer one guards against a hung transaction.
            rsp = await asyncio.wait_for(reader(block.start, count=block.count, device_id=self.spec.unit),
                                         self.spec.timeout_s * 2 + 0.5)
        except TimeoutError:
            return None, "timeout", True
        except ModbusException as exc:
            text = str(exc).lower()
            return None, ("timeout" if "timeout" in text or "no response" in text else "connection_lost"), True
        except (OSError, ConnectionError):
            return None, "connection_lost", True
        except Exception as exc:  # a malformed answer may surface as anything inside the client
            self.counters["client_errors"] += 1
            log.warning("modbus %s: read failed: %r", self.spec.name, exc)
            return None, "client_error", True
        if rsp is None:
            return None, "no_response", True
        if self._tid_mismatch:
            return None, "wrong_transaction", True
        if not rsp.isError() and not self._frame_ok(block):
            return None, "bad_frame", True
        if rsp.isError():
            code = int(getattr(rsp, "exception_code", 0) or 0)
            return None, f"modbus_exception_{code}", False
        values: Sequence[int] | Sequence[bool]
        if block.register in ("coil", "discrete"):
            values = rsp.bits  # padded to whole bytes
            if values is None or len(values) < block.count or len(values) >= block.count + 8:
                return None, "wrong_length", True
        else:
            values = rsp.registers
            if values is None or len(values) != block.count:
                return None, "wrong_length", True
        return values, "", False
