"""A Modbus TCP box driver: read a block of holding registers, decode it into ``ElevatorSignals``.

Monitoring boxes expose their signals in vendor-specific register maps; no standard fixes
the layout. ``ModbusRegisterMap`` describes where each signal sits (offsets into one block
read with function 0x03) and defaults to Vigil's reference layout below, which a deployment
adapts per vendor in configuration. The decoder is a pure function so a vendor's map can be
tested against captured register dumps without a box.

Reference layout (offsets from ``start``; one register = 16 bits, big-endian):

| offset | signal | encoding |
|---|---|---|
| 0-1 | position | int32, millimetres above the bottom landing (high word first) |
| 2 | speed | uint16, mm/s |
| 3 | direction | 0 stopped, 1 up, 2 down |
| 4 | door | 0 closed, 1 opening, 2 open, 3 closing |
| 5 | flags | bit 0 door zone, bit 1 safety circuit closed, bit 2 floor valid, bit 3 alarm button pressed |
| 6 | floor | int16 |
| 7 | occupancy | uint16, persons |
| 8 | load | uint16, kg |
| 9 | power | 0 mains, 1 battery, 2 lost |
| 10 | mode | 0 normal, 1 inspection, 2 fire, 3 out of service |
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence

import msgspec

from edge.elevator.driver import DriverError
from edge.elevator.signals import ElevatorSignals

DIRECTION_CODES = ("stopped", "up", "down")
DOOR_CODES = ("closed", "opening", "open", "closing")
POWER_CODES = ("mains", "battery", "lost")
MODE_CODES = ("normal", "inspection", "fire", "out_of_service")


class ModbusRegisterMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the signals sit in the box's holding registers (offsets from ``start``)."""

    unit_id: int = 1
    start: int = 0
    position_mm: int = 0
    speed_mm_s: int = 2
    direction: int = 3
    door: int = 4
    flags: int = 5
    floor: int = 6
    occupancy: int = 7
    load_kg: int = 8
    power: int = 9
    mode: int = 10

    @property
    def count(self) -> int:
        """Registers to read in one request."""
        return max(self.position_mm + 2, self.speed_mm_s, self.direction, self.door, self.flags, self.floor,
                   self.occupancy, self.load_kg, self.power, self.mode) + 1


def _code(table: tuple[str, ...], value: int, what: str) -> str:
    if value >= len(table):
        raise DriverError("bad_frame", f"unknown {what} code {value}")
    return table[value]


def decode_registers(regs: Sequence[int], m: ModbusRegisterMap) -> ElevatorSignals:
    """Decode one register block.

    Raises:
        DriverError: ``bad_frame`` when the block is short or a code is unknown.
    """
    if len(regs) < m.count:
        raise DriverError("bad_frame", f"{len(regs)} registers, need {m.count}")
    position = struct.unpack(">i", struct.pack(">HH", regs[m.position_mm], regs[m.position_mm + 1]))[0]
    flags = regs[m.flags]
    floor = struct.unpack(">h", struct.pack(">H", regs[m.floor]))[0]
    speed = regs[m.speed_mm_s] / 1000.0
    return ElevatorSignals(
        position_m=position / 1000.0, speed_mps=speed,
        direction=_code(DIRECTION_CODES, regs[m.direction], "direction"),
        door=_code(DOOR_CODES, regs[m.door], "door"), door_zone=bool(flags & 1),
        floor=floor if flags & 4 else None, occupancy=regs[m.occupancy], load_kg=float(regs[m.load_kg]),
        power=_code(POWER_CODES, regs[m.power], "power"), mode=_code(MODE_CODES, regs[m.mode], "mode"),
        safety_circuit_ok=bool(flags & 2), alarm_button=bool(flags & 8),
    )


def read_request(transaction: int, m: ModbusRegisterMap) -> bytes:
    """A Modbus TCP "read holding registers" (0x03) request for the whole block."""
    return struct.pack(">HHHBBHH", transaction & 0xFFFF, 0, 6, m.unit_id, 0x03, m.start, m.count)


def parse_response(frame: bytes, transaction: int, m: ModbusRegisterMap) -> list[int]:
    """Registers from a response frame (MBAP header included).

    Raises:
        DriverError: ``modbus_exception`` for an exception response, ``bad_frame`` for anything malformed.
    """
    if len(frame) < 9:
        raise DriverError("bad_frame", f"response of {len(frame)} bytes")
    tid, proto, _length, unit, fc = struct.unpack(">HHHBB", frame[:8])
    if tid != transaction & 0xFFFF or proto != 0 or unit != m.unit_id:
        raise DriverError("bad_frame", f"unexpected header tid={tid} proto={proto} unit={unit}")
    if fc == 0x83:
        raise DriverError("modbus_exception", f"exception code {frame[8]}")
    if fc != 0x03 or frame[8] != 2 * m.count or len(frame) != 9 + 2 * m.count:
        raise DriverError("bad_frame", f"function {fc}, byte count {frame[8]}, length {len(frame)}")
    return list(struct.unpack(f">{m.count}H", frame[9:]))


class ModbusTcpBoxDriver:
    """Reads a box over Modbus TCP; reconnects on the next read after any failure."""

    def __init__(self, host: str, port: int = 502, register_map: ModbusRegisterMap | None = None,
                 timeout: float = 1.0) -> None:
        self.host, self.port = host, port
        self.map = register_map or ModbusRegisterMap()
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._transaction = 0

    async def open(self) -> None:
        """Connect to the box.

        Raises:
            DriverError: ``unreachable`` when the connection fails or times out.
        """
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise DriverError("unreachable", f"{self.host}:{self.port}: {exc}") from None

    async def read(self) -> ElevatorSignals:
        """One request/response round trip, decoded.

        Raises:
            DriverError: unreachable box, timeout, Modbus exception or malformed frame.
        """
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._transaction = (self._transaction + 1) & 0xFFFF
        try:
            async with asyncio.timeout(self.timeout):
                self._writer.write(read_request(self._transaction, self.map))
                await self._writer.drain()
                header = await self._reader.readexactly(6)
                length = struct.unpack(">H", header[4:6])[0]
                if not 2 <= length <= 256:
                    raise DriverError("bad_frame", f"MBAP length {length}")
                body = await self._reader.readexactly(length)
        except DriverError:
            await self.close()
            raise
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise DriverError("timeout" if isinstance(exc, TimeoutError) else "connection_lost", str(exc)) from None
        try:
            return decode_registers(parse_response(header + body, self._transaction, self.map), self.map)
        except DriverError:
            await self.close()  # resynchronise on a fresh connection
            raise

    async def close(self) -> None:
        """Drop the connection."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
