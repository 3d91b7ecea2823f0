"""Pure detectors for elevator faults; each takes a reading and the time and says start or end.

Thresholds follow common practice for monitoring boxes under GB/T 24476 and the safety
figures of GB/T 7588 (overspeed governor trips at no less than 115 % of rated speed); every
figure is a setting (``DetectorThresholds``) because buildings and boxes differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from broker.contracts import Severity
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals


class DetectorThresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Timings and limits of the detectors (seconds, metres, m/s)."""

    stopped_speed_mps: float = 0.05
    trapped_between_floors_s: float = 10.0
    """Car stopped outside the door zone with people inside this long: trapped."""
    trapped_at_floor_s: float = 30.0
    """Car arrived level with people inside and the door stayed shut this long: trapped."""
    door_open_timeout_s: float = 10.0
    """Door has not opened this long after the car arrived level with people inside."""
    door_close_timeout_s: float = 60.0
    """Door not closed this long while the car stands: it fails to close."""
    door_reopen_limit: int = 5
    """Closing attempts interrupted by reopening before the door counts as failing to close."""
    stopped_outside_zone_s: float = 5.0
    moving_speed_mps: float = 0.1
    releveling_speed_mps: float = 0.3
    """In the door zone the door may open early (pre-opening, re-leveling) below this speed."""
    moving_with_door_open_s: float = 0.3
    overspeed_ratio: float = 1.15
    overspeed_clear_ratio: float = 1.05
    overspeed_s: float = 0.2
    overtravel_margin_m: float = 0.15
    safety_circuit_s: float = 0.5
    floor_lost_s: float = 2.0
    power_lost_s: float = 0.0
    alarm_button_s: float = 0.5
    """The alarm button held this long is a call for help (a brush against it is not)."""
    alarm_button_off_s: float = 10.0
    ucm_distance_m: float = 0.3
    """Car movement away from where its door opened beyond this is unintended movement (UCM; the
    unlocking zone of GB/T 7588.1 is at most ±0.35 m around a landing)."""
    door_lock_bypass_s: float = 2.0
    """Door reported open while the safety circuit (with the door locks in it) reads closed this long."""


@dataclass(frozen=True, slots=True)
class EventChange:
    """A detector's decision: an event starts or ends at ``at``."""

    type: str
    state: Literal["start", "end"]
    at: float
    severity: Severity
    message: str
    measure: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


class _Hold:
    """A condition that must hold ``on_s`` seconds to start and fail ``off_s`` seconds to end."""

    __slots__ = ("active", "off_s", "on_s", "since")

    def __init__(self, on_s: float, off_s: float = 0.0) -> None:
        self.on_s, self.off_s = on_s, off_s
        self.active = False
        self.since: float | None = None

    def update(self, condition: bool, now: float) -> Literal["start", "end"] | None:
        if condition != self.active:
            if self.since is None:
                self.since = now
            wait = self.on_s if condition else self.off_s
            if now - self.since >= wait - 1e-6:  # readings come at a period; don't lose one to rounding
                self.active = condition
                self.since = None
                return "start" if condition else "end"
        else:
            self.since = None
        return None

    def reset(self) -> bool:
        was = self.active
        self.active, self.since = False, None
        return was


class Detector:
    """Base of all detectors: ``update`` each reading, ``suppress`` when the service mode excludes it."""

    event_types: tuple[str, ...] = ()
    suppressed_in: frozenset[str] = frozenset()
    """Service modes in which the fault is expected behaviour (inspection, firefighters)."""

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        """Feed one reading; returns the events that start or end."""
        raise NotImplementedError

    def suppress(self, now: float) -> list[EventChange]:
        """End any active event (mode change) and forget partial timings."""
        return []

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        """Take over an event a previous agent process left open (its start's ``data``): it ends by this
        detector's own end logic. False: this detector cannot (the monitor then ends it at once)."""
        return False


_NOT_NORMAL = frozenset({"inspection", "out_of_service"})


class _Simple(Detector):
    """A single-condition detector built on ``_Hold``."""

    severity = Severity.MAJOR

    def __init__(self, on_s: float, off_s: float = 0.0) -> None:
        self._hold = _Hold(on_s, off_s)

    def condition(self, s: ElevatorSignals) -> bool:
        raise NotImplementedError

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return self.event_types[0].replace("_", " "), None, {}

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        change = self._hold.update(self.condition(s), now)
        if change is None:
            return []
        message, measure, data = self.describe(s)
        return [EventChange(self.event_types[0], change, now, self.severity, message, measure, data)]

    def suppress(self, now: float) -> list[EventChange]:
        if self._hold.reset():
            return [EventChange(self.event_types[0], "end", now, self.severity, "suppressed by service mode",
                                None, {"reason": "mode"})]
        return []

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        self._hold.active = True
        return True


class TrappedPassengerDetector(Detector):
    """People inside a car that stands between floors, or level at a floor with the door shut after a run."""

    event_types = ("trapped_passenger",)
    suppressed_in = _NOT_NORMAL

    def __init__(self, t: DetectorThresholds) -> None:
        self._t = t
        self._active = False
        self._stopped_since: float | None = None
        self._after_run = False
        self._door_opened = False
        self._where = ""
        self._resumed = False
        """Taken over after an agent restart, no reading yet: a car found running was released meanwhile."""

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        stopped = s.speed_mps < self._t.stopped_speed_mps and s.direction == "stopped"
        if not stopped:
            self._stopped_since = None
            self._after_run = True
            self._door_opened = False
        elif self._stopped_since is None:
            self._stopped_since = now
        if s.door != "closed":
            self._door_opened = True
        if self._active:
            # Only the first reading after a takeover judges by movement: from then on the car is watched
            # live, and a car moved with its passengers still shut in is not a release.
            found_running, self._resumed = self._resumed and not stopped, False
            if s.occupancy == 0 or s.door in ("opening", "open") or found_running:
                self._active = False
                return [EventChange("trapped_passenger", "end", now, Severity.CRITICAL, "passengers released",
                                    None, {"where": self._where})]
            return []
        if self._stopped_since is None or s.occupancy <= 0 or s.door != "closed":
            return []
        waited = now - self._stopped_since
        if not s.door_zone and waited >= self._t.trapped_between_floors_s - 1e-6:
            self._where = "between_floors"
        elif (s.door_zone and self._after_run and not self._door_opened
              and waited >= self._t.trapped_at_floor_s - 1e-6):
            self._where = "at_floor"
        else:
            return []
        self._active = True
        return [EventChange("trapped_passenger", "start", now, Severity.CRITICAL,
                            f"{s.occupancy} passenger(s) trapped {self._where.replace('_', ' ')}", float(s.occupancy),
                            {"where": self._where, "floor": s.floor, "position_m": round(s.position_m, 3),
                             "occupancy": s.occupancy})]

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        # Ends as it would have (the car empties or its door opens), or when the car is found running.
        self._active, self._where, self._resumed = True, str(data.get("where", "")), True
        return True

    def suppress(self, now: float) -> list[EventChange]:
        self._stopped_since, self._after_run, self._door_opened = None, False, False
        if self._active:
            self._active = self._resumed = False
            return [EventChange("trapped_passenger", "end", now, Severity.CRITICAL, "suppressed by service mode",
                                None, {"reason": "mode", "where": self._where})]
        return []


class DoorFaultDetector(Detector):
    """The door fails to open after the car arrived occupied, or fails to close (timeout or repeated reopening)."""

    event_types = ("door_fail_open", "door_fail_close")
    suppressed_in = _NOT_NORMAL | {"fire"}

    def __init__(self, t: DetectorThresholds) -> None:
        self._t = t
        self._open_hold = _Hold(t.door_open_timeout_s)
        self._close_hold = _Hold(t.door_close_timeout_s)
        self._after_run = False
        self._door_opened = False
        self._reopens = 0
        self._prev_door = "closed"
        self._close_active = False

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        out: list[EventChange] = []
        stopped = s.speed_mps < self._t.stopped_speed_mps and s.direction == "stopped"
        if not stopped:
            self._after_run, self._door_opened = True, False
        if s.door != "closed":
            self._door_opened = True
        fail_open = (stopped and s.door_zone and self._after_run and not self._door_opened
                     and s.occupancy > 0)
        change = self._open_hold.update(fail_open, now)
        if change is not None:
            out.append(EventChange("door_fail_open", change, now, Severity.MAJOR,
                                   "door did not open after arrival" if change == "start" else "door opened",
                                   None, {"floor": s.floor}))
        if self._prev_door == "closing" and s.door == "opening":
            self._reopens += 1
        if s.door == "closed":
            self._reopens = 0
        self._prev_door = s.door
        self._close_hold.update(stopped and s.door != "closed", now)
        failing = self._close_hold.active or self._reopens >= self._t.door_reopen_limit
        if failing and not self._close_active:
            self._close_active = True
            why = "timeout" if self._close_hold.active else "reopening"
            out.append(EventChange("door_fail_close", "start", now, Severity.WARNING, "door fails to close",
                                   float(self._reopens), {"floor": s.floor, "cause": why, "reopens": self._reopens}))
        elif self._close_active and s.door == "closed":
            self._close_active = False
            self._close_hold.reset()
            out.append(EventChange("door_fail_close", "end", now, Severity.WARNING, "door closed", None,
                                   {"floor": s.floor}))
        return out

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        if event_type == "door_fail_open":
            # The run before the arrival was seen by the previous process: the door still owes it an opening.
            self._open_hold.active, self._after_run = True, True
        else:
            self._close_active = True
        return True

    def suppress(self, now: float) -> list[EventChange]:
        out = []
        if self._open_hold.reset():
            out.append(EventChange("door_fail_open", "end", now, Severity.MAJOR, "suppressed by service mode",
                                   None, {"reason": "mode"}))
        self._close_hold.reset()
        if self._close_active:
            self._close_active = False
            out.append(EventChange("door_fail_close", "end", now, Severity.WARNING, "suppressed by service mode",
                                   None, {"reason": "mode"}))
        self._after_run, self._door_opened, self._reopens = False, False, 0
        return out


class MovingWithDoorOpenDetector(_Simple):
    """The car moves while its door is not closed (early opening while leveling in the door zone excepted)."""

    event_types = ("moving_with_door_open",)
    severity = Severity.CRITICAL

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.moving_with_door_open_s, 1.0)
        self._t = t

    def condition(self, s: ElevatorSignals) -> bool:
        if s.door == "closed" or s.speed_mps <= self._t.moving_speed_mps:
            return False
        return not (s.door_zone and s.speed_mps <= self._t.releveling_speed_mps)

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return "car moving with door open", s.speed_mps, {"door": s.door, "floor": s.floor}


class StoppedOutsideDoorZoneDetector(_Simple):
    """The car stands outside any leveling zone."""

    event_types = ("stopped_outside_door_zone",)
    suppressed_in = _NOT_NORMAL

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.stopped_outside_zone_s)
        self._t = t

    def condition(self, s: ElevatorSignals) -> bool:
        return s.speed_mps < self._t.stopped_speed_mps and s.direction == "stopped" and not s.door_zone

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return "car stopped outside the door zone", s.position_m, {"position_m": round(s.position_m, 3)}


class OverspeedDetector(Detector):
    """Speed above ``overspeed_ratio`` x rated speed; ends below ``overspeed_clear_ratio`` x rated."""

    event_types = ("overspeed",)

    def __init__(self, g: ElevatorGeometry, t: DetectorThresholds) -> None:
        self._rated = g.rated_speed_mps
        self._t = t
        self._hold = _Hold(t.overspeed_s)
        self._peak = 0.0

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        if self._hold.active:
            self._peak = max(self._peak, s.speed_mps)
            if s.speed_mps < self._rated * self._t.overspeed_clear_ratio:
                self._hold.reset()
                return [EventChange("overspeed", "end", now, Severity.CRITICAL, "speed back within limits",
                                    self._peak, {"peak_mps": round(self._peak, 3), "rated_mps": self._rated})]
            return []
        if self._hold.update(s.speed_mps > self._rated * self._t.overspeed_ratio, now) == "start":
            self._peak = s.speed_mps
            pct = 100 * s.speed_mps / self._rated
            return [EventChange("overspeed", "start", now, Severity.CRITICAL,
                                f"speed {s.speed_mps:.2f} m/s is {pct:.0f}% of rated", s.speed_mps,
                                {"speed_mps": round(s.speed_mps, 3), "rated_mps": self._rated})]
        return []

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        self._hold.active = True
        return True


class OvertravelDetector(Detector):
    """The car beyond the top landing (冲顶) or below the bottom landing (蹲底) by more than a margin."""

    event_types = ("overtravel_top", "overtravel_bottom")

    def __init__(self, g: ElevatorGeometry, t: DetectorThresholds) -> None:
        self._top = g.top_m + t.overtravel_margin_m
        self._bottom = -t.overtravel_margin_m
        self._active = {"overtravel_top": False, "overtravel_bottom": False}

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        out = []
        for kind, beyond, limit in (("overtravel_top", s.position_m > self._top, self._top),
                                    ("overtravel_bottom", s.position_m < self._bottom, self._bottom)):
            if beyond != self._active[kind]:
                self._active[kind] = beyond
                text = ("car beyond the terminal landing" if beyond else "car back within the shaft limits")
                out.append(EventChange(kind, "start" if beyond else "end", now, Severity.CRITICAL, text,
                                       s.position_m, {"position_m": round(s.position_m, 3), "limit_m": limit}))
        return out

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        self._active[event_type] = True
        return True


class PowerLossDetector(_Simple):
    """Main power lost (the box reports from its battery, or not at all)."""

    event_types = ("power_lost",)

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.power_lost_s)

    def condition(self, s: ElevatorSignals) -> bool:
        return s.power != "mains"

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return ("main power lost" if s.power != "mains" else "main power restored"), None, {"power": s.power}


class SafetyCircuitDetector(_Simple):
    """The safety circuit is open (a contact in the chain is broken).

    Where the circuit carries the door locks, an open door opens it by design: only an open
    circuit with the door closed is a fault there.
    """

    event_types = ("safety_circuit_open",)

    def __init__(self, t: DetectorThresholds, door_locks_in_circuit: bool = False) -> None:
        super().__init__(t.safety_circuit_s)
        self._locks_in_circuit = door_locks_in_circuit

    def condition(self, s: ElevatorSignals) -> bool:
        if self._locks_in_circuit and s.door != "closed":
            return False
        return not s.safety_circuit_ok

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return "safety circuit open", None, {"floor": s.floor, "position_m": round(s.position_m, 3)}


class FloorPositionLostDetector(_Simple):
    """The box no longer knows which floor the car is at."""

    event_types = ("floor_position_lost",)
    severity = Severity.WARNING

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.floor_lost_s)

    def condition(self, s: ElevatorSignals) -> bool:
        return s.floor is None


class AlarmButtonDetector(_Simple):
    """Someone in the car holds the alarm (emergency call) button."""

    event_types = ("alarm_button",)
    suppressed_in = frozenset({"inspection"})  # technicians test the button during inspection

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.alarm_button_s, t.alarm_button_off_s)

    def condition(self, s: ElevatorSignals) -> bool:
        return s.alarm_button

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return "alarm button pressed", None, {"floor": s.floor, "occupancy": s.occupancy, "door_zone": s.door_zone}


class UnintendedMovementDetector(Detector):
    """Unintended car movement (UCM): the car moves away from the landing where its door opened, door not closed.

    Anchored on the position where the door left ``closed``, so slow creeping (a slipping brake)
    is caught as well as a fast run; releveling inside the unlocking zone stays below the distance.
    Never suppressed: it is the hazard the UCMP protection exists for.
    """

    event_types = ("unintended_movement",)

    def __init__(self, t: DetectorThresholds) -> None:
        self._t = t
        self._anchor: float | None = None
        self._active = False

    def update(self, s: ElevatorSignals, now: float) -> list[EventChange]:
        if s.door == "closed":
            self._anchor = None
            if self._active and s.speed_mps < self._t.stopped_speed_mps:
                self._active = False
                return [EventChange("unintended_movement", "end", now, Severity.CRITICAL,
                                    "door closed and car stopped", s.position_m,
                                    {"position_m": round(s.position_m, 3)})]
            return []
        if self._anchor is None:
            self._anchor = s.position_m
            return []
        moved = abs(s.position_m - self._anchor)
        if not self._active and moved > self._t.ucm_distance_m:
            self._active = True
            return [EventChange("unintended_movement", "start", now, Severity.CRITICAL,
                                f"car moved {moved:.2f} m with the door {s.door}", moved,
                                {"moved_m": round(moved, 3), "door": s.door, "floor": s.floor,
                                 "from_m": round(self._anchor, 3), "position_m": round(s.position_m, 3)})]
        return []

    def suppress(self, now: float) -> list[EventChange]:
        return []

    def resume(self, event_type: str, data: dict[str, Any]) -> bool:
        self._active = True  # ends when the door is closed and the car stopped
        return True


class DoorLockBypassDetector(_Simple):
    """Door reported open while the safety circuit, which carries the door locks, reads closed: bridged locks."""

    event_types = ("door_lock_bypass_suspected",)
    severity = Severity.CRITICAL
    suppressed_in = frozenset({"inspection"})  # maintenance may bridge contacts under its own procedure

    def __init__(self, t: DetectorThresholds) -> None:
        super().__init__(t.door_lock_bypass_s, 5.0)

    def condition(self, s: ElevatorSignals) -> bool:
        return s.door == "open" and s.safety_circuit_ok

    def describe(self, s: ElevatorSignals) -> tuple[str, float | None, dict[str, Any]]:
        return "door open while the safety circuit reads closed", None, {"floor": s.floor, "door": s.door}


def default_detectors(g: ElevatorGeometry, t: DetectorThresholds) -> list[Detector]:
    """One of each detector, in the order their events are reported.

    The door-lock bypass detector runs only where the box's safety circuit includes the door locks
    (``ElevatorGeometry.door_locks_in_safety_circuit``); elsewhere an open door with a closed
    circuit is normal wiring, not evidence.
    """
    detectors: list[Detector] = [
        TrappedPassengerDetector(t), MovingWithDoorOpenDetector(t), UnintendedMovementDetector(t),
        OverspeedDetector(g, t), OvertravelDetector(g, t), StoppedOutsideDoorZoneDetector(t), PowerLossDetector(t),
        SafetyCircuitDetector(t, g.door_locks_in_safety_circuit), DoorFaultDetector(t), FloorPositionLostDetector(t),
        AlarmButtonDetector(t),
    ]
    if g.door_locks_in_safety_circuit:
        detectors.append(DoorLockBypassDetector(t))
    return detectors
