"""What an elevator monitoring box reports, and the installation it is fitted to."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import msgspec

DOOR_STATES: Final = frozenset({"closed", "opening", "open", "closing"})
DIRECTIONS: Final = frozenset({"up", "down", "stopped"})
POWER_SOURCES: Final = frozenset({"mains", "battery", "lost"})
SERVICE_MODES: Final = frozenset({"normal", "inspection", "fire", "out_of_service"})


class ElevatorGeometry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The installation (registry attributes ``floors``, ``floor_height_m``, ``rated_speed_mps``).

    ``door_locks_in_safety_circuit``: the box's safety-circuit signal includes the landing and car
    door lock contacts (the usual wiring). Only then does a door reported open while the circuit
    reads closed mean the lock contacts are bridged (door-lock bypass, 短接门锁).
    """

    floors: int = 12
    floor_height_m: float = 3.0
    rated_speed_mps: float = 1.75
    door_locks_in_safety_circuit: bool = False

    @property
    def top_m(self) -> float:
        """Height of the top landing above the bottom landing."""
        return (self.floors - 1) * self.floor_height_m


@dataclass(frozen=True, slots=True)
class ElevatorSignals:
    """One reading of the box's raw signals (a driver's output)."""

    position_m: float
    """Car height above the bottom landing."""
    speed_mps: float
    """Speed, never negative."""
    direction: str
    door: str
    door_zone: bool
    """The car is within the leveling zone of a landing."""
    floor: int | None
    """Floor the box believes the car is at; None when it lost its position."""
    occupancy: int
    load_kg: float
    power: str
    mode: str
    safety_circuit_ok: bool
    acceleration_mps2: float | None = None
    alarm_button: bool = False
    """The car's alarm (emergency call) button is pressed."""

    @property
    def moving(self) -> bool:
        """Whether the car moves (direction reported or measurable speed)."""
        return self.direction != "stopped" or self.speed_mps > 0.05

    def metrics(self) -> dict[str, float | int | bool | str]:
        """The contract's elevator telemetry metrics."""
        out: dict[str, float | int | bool | str] = {
            "speed_mps": round(self.speed_mps, 3),
            "position_m": round(self.position_m, 3),
            "direction": self.direction,
            "door": self.door,
            "door_zone": self.door_zone,
            "occupancy": self.occupancy,
            "load_kg": round(self.load_kg, 1),
            "power": self.power,
            "mode": self.mode,
            "safety_circuit_ok": self.safety_circuit_ok,
            "alarm_button": self.alarm_button,
        }
        if self.floor is not None:
            out["floor"] = self.floor
        return out


def signal_problem(s: ElevatorSignals) -> str | None:
    """Why a reading cannot be trusted (``None`` when it is plausible); such readings are counted and skipped."""
    if s.door not in DOOR_STATES:
        return "bad_door_state"
    if s.direction not in DIRECTIONS:
        return "bad_direction"
    if s.power not in POWER_SOURCES:
        return "bad_power_source"
    if s.mode not in SERVICE_MODES:
        return "bad_mode"
    for value in (s.position_m, s.speed_mps, s.load_kg):
        if not math.isfinite(value):
            return "not_finite"
    if s.speed_mps < 0:
        return "negative_speed"
    if s.occupancy < 0 or s.load_kg < 0:
        return "negative_load"
    return None
