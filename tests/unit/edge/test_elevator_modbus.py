"""Modbus register decoding and framing (pure): reference layout, custom maps, malformed frames."""

from __future__ import annotations

import struct

import pytest

from edge.elevator.driver import DriverError
from edge.elevator.modbus import ModbusRegisterMap, decode_registers, parse_response, read_request

REF = ModbusRegisterMap()


def block(position_mm: int = 4500, speed: int = 1500, direction: int = 1, door: int = 0, flags: int = 0b110,
          floor: int = 2, occupancy: int = 3, load: int = 210, power: int = 0, mode: int = 0) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i", position_mm))
    floor_u = struct.unpack(">H", struct.pack(">h", floor))[0]
    return [hi, lo, speed, direction, door, flags, floor_u, occupancy, load, power, mode]


def test_reference_layout_decodes_every_signal() -> None:
    s = decode_registers(block(), REF)
    assert (s.position_m, s.speed_mps, s.direction, s.door, s.door_zone, s.safety_circuit_ok, s.floor) == (
        4.5, 1.5, "up", "closed", False, True, 2)
    assert (s.occupancy, s.load_kg, s.power, s.mode) == (3, 210.0, "mains", "normal")


@pytest.mark.parametrize(("kw", "field", "expected"), [
    ({"position_mm": -350}, "position_m", -0.35),  # below the bottom landing (overtravel)
    ({"floor": -2}, "floor", -2),  # basement floors
    ({"flags": 0b011}, "floor", None),  # floor-valid bit clear: position lost
    ({"flags": 0b101}, "safety_circuit_ok", False),
    ({"flags": 0b101}, "door_zone", True),
    ({"direction": 2}, "direction", "down"),
    ({"door": 3}, "door", "closing"),
    ({"power": 1}, "power", "battery"),
    ({"mode": 3}, "mode", "out_of_service"),
])
def test_field_encodings(kw: dict[str, int], field: str, expected: object) -> None:
    assert getattr(decode_registers(block(**kw), REF), field) == expected


@pytest.mark.parametrize("kw", [{"direction": 3}, {"door": 9}, {"power": 3}, {"mode": 4}])
def test_unknown_codes_are_bad_frames(kw: dict[str, int]) -> None:
    with pytest.raises(DriverError) as info:
        decode_registers(block(**kw), REF)
    assert info.value.reason == "bad_frame"


def test_short_block_is_a_bad_frame() -> None:
    with pytest.raises(DriverError, match="need 11"):
        decode_registers(block()[:5], REF)


def test_a_vendor_map_moves_signals() -> None:
    vendor = ModbusRegisterMap(unit_id=7, start=100, door=11, mode=4)
    regs = block()
    regs.append(2)  # offset 11: door open
    regs[4] = 1  # offset 4: mode inspection
    s = decode_registers(regs, vendor)
    assert s.door == "open" and s.mode == "inspection" and vendor.count == 12


def test_request_and_response_framing() -> None:
    req = read_request(0x1234, REF)
    assert req == bytes.fromhex("1234 0000 0006 01 03 0000 000b")
    regs = block()
    resp = struct.pack(">HHHBBB", 0x1234, 0, 3 + 22, 1, 3, 22) + struct.pack(">11H", *regs)
    assert parse_response(resp, 0x1234, REF) == regs
    exception = struct.pack(">HHHBBB", 0x1234, 0, 3, 1, 0x83, 2)
    with pytest.raises(DriverError) as info:
        parse_response(exception, 0x1234, REF)
    assert info.value.reason == "modbus_exception"
    for bad in (resp[:8], resp.replace(b"\x12\x34", b"\x00\x01", 1), resp[:-2]):
        with pytest.raises(DriverError) as info:
            parse_response(bad, 0x1234, REF)
        assert info.value.reason == "bad_frame"
