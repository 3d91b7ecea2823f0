"""JT/T 808 alarm bits as Vigil events, and positions as telemetry metrics.

The tracker is pure; with an ``AlarmStore`` (``SqliteAlarmStore`` under the gateway's
``--data-dir``) it also records each open alarm, written on start/end transitions only, so a
restarted gateway can end the alarms that cleared while it was down under their original ids.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, Protocol

from broker.contracts import DeviceEvent, MetricValue, Severity
from edge.jt808.commands import DriverIdentity
from edge.jt808.messages import LocationReport

log = logging.getLogger(__name__)

ALARMS_FILE: Final = "jt808-alarms.sqlite3"
"""File name of the open-alarm store inside ``--data-dir``."""
RECONCILED_REASON: Final = "cleared while the gateway was down"
"""``data.reason`` of an end event for an alarm that cleared while no gateway was watching."""


@dataclass(frozen=True, slots=True)
class AlarmKind:
    """How one alarm bit is named and rated in Vigil's events."""

    type: str
    severity: Severity
    label_zh: str


ALARM_BITS: Final[dict[int, AlarmKind]] = {
    0: AlarmKind("emergency", Severity.CRITICAL, "紧急报警"),
    1: AlarmKind("overspeed", Severity.MAJOR, "超速报警"),
    2: AlarmKind("fatigue_driving", Severity.MAJOR, "疲劳驾驶"),
    3: AlarmKind("danger_warning", Severity.MAJOR, "危险预警"),
    4: AlarmKind("gnss_module_fault", Severity.WARNING, "GNSS模块故障"),
    5: AlarmKind("gnss_antenna_disconnected", Severity.WARNING, "GNSS天线未接或被剪断"),
    6: AlarmKind("gnss_antenna_short_circuit", Severity.WARNING, "GNSS天线短路"),
    7: AlarmKind("main_power_low", Severity.WARNING, "终端主电源欠压"),
    8: AlarmKind("main_power_lost", Severity.MAJOR, "终端主电源掉电"),
    9: AlarmKind("display_fault", Severity.INFO, "终端显示器故障"),
    10: AlarmKind("tts_fault", Severity.INFO, "TTS模块故障"),
    11: AlarmKind("camera_fault", Severity.WARNING, "摄像头故障"),
    12: AlarmKind("ic_card_fault", Severity.INFO, "IC卡模块故障"),
    13: AlarmKind("overspeed_warning", Severity.WARNING, "超速预警"),
    14: AlarmKind("fatigue_warning", Severity.WARNING, "疲劳驾驶预警"),
    18: AlarmKind("daily_driving_time_exceeded", Severity.MAJOR, "当天累计驾驶超时"),
    19: AlarmKind("parking_timeout", Severity.WARNING, "超时停车"),
    20: AlarmKind("area_entry_exit", Severity.MAJOR, "进出区域"),
    21: AlarmKind("route_entry_exit", Severity.WARNING, "进出路线"),
    22: AlarmKind("route_section_time_abnormal", Severity.WARNING, "路段行驶时间不足/过长"),
    23: AlarmKind("route_deviation", Severity.MAJOR, "路线偏离报警"),
    24: AlarmKind("vss_fault", Severity.WARNING, "车辆VSS故障"),
    25: AlarmKind("fuel_abnormal", Severity.WARNING, "车辆油量异常"),
    26: AlarmKind("vehicle_stolen", Severity.CRITICAL, "车辆被盗"),
    27: AlarmKind("illegal_ignition", Severity.MAJOR, "车辆非法点火"),
    28: AlarmKind("illegal_displacement", Severity.MAJOR, "车辆非法位移"),
    29: AlarmKind("collision_warning", Severity.CRITICAL, "碰撞预警"),
    30: AlarmKind("rollover_warning", Severity.CRITICAL, "侧翻预警"),
    31: AlarmKind("illegal_door_open", Severity.MAJOR, "非法开门报警"),
}
"""Alarm bits of the 0x0200 alarm DWORD (JT/T 808-2013 table 24); other bits use ``alarm_bit_N``."""


def alarm_kind(bit: int) -> AlarmKind:
    """The event naming of one alarm bit."""
    return ALARM_BITS.get(bit) or AlarmKind(f"alarm_bit_{bit}", Severity.WARNING, f"报警位{bit}")


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    """An alarm that started and has not ended: what a restarted gateway needs to end it."""

    device_id: str
    bit: int
    event_id: str
    type: str
    started_at: datetime


class AlarmStore(Protocol):
    """Where open alarms survive a gateway restart (``MemoryAlarmStore``, ``SqliteAlarmStore``)."""

    def load(self) -> list[OpenAlarm]:
        """Every open alarm recorded."""
        ...

    def opened(self, alarm: OpenAlarm) -> None:
        """Record an alarm that started."""
        ...

    def closed(self, device_id: str, bit: int) -> None:
        """Forget an alarm that ended."""
        ...


class MemoryAlarmStore:
    """Open alarms in memory (tests, scenario runs: a "restart" that hands the same object on)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], OpenAlarm] = {}

    def load(self) -> list[OpenAlarm]:
        """Every open alarm recorded."""
        return list(self._open.values())

    def opened(self, alarm: OpenAlarm) -> None:
        """Record an alarm that started."""
        self._open[(alarm.device_id, alarm.bit)] = alarm

    def closed(self, device_id: str, bit: int) -> None:
        """Forget an alarm that ended."""
        self._open.pop((device_id, bit), None)


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS open_alarms (
    device_id TEXT NOT NULL,
    bit INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    started_at TEXT NOT NULL,
    PRIMARY KEY (device_id, bit)
);
"""


class SqliteAlarmStore:
    """Open alarms in a SQLite file of the gateway's data folder (one gateway per folder).

    WAL with ``synchronous=NORMAL``: a commit is one append to the log, no fsync, and survives the
    process being killed (not a power cut, after which at worst an alarm stays open as before).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=2.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteAlarmStore({str(self.path)!r})"

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def load(self) -> list[OpenAlarm]:
        """Every open alarm recorded (rows that do not parse are skipped: they cannot be ended anyway)."""
        out = []
        for device_id, bit, event_id, kind, started in self._db.execute(
                "SELECT device_id, bit, event_id, type, started_at FROM open_alarms ORDER BY device_id, bit"):
            try:
                out.append(OpenAlarm(str(device_id), int(bit), str(event_id), str(kind),
                                     datetime.fromisoformat(str(started))))
            except ValueError:
                log.warning("jt808: open alarm %s/%s in %s unreadable; skipped", device_id, bit, self.path)
        return out

    def opened(self, alarm: OpenAlarm) -> None:
        """Record an alarm that started."""
        self._db.execute("INSERT OR REPLACE INTO open_alarms VALUES (?, ?, ?, ?, ?)",
                         (alarm.device_id, alarm.bit, alarm.event_id, alarm.type, alarm.started_at.isoformat()))

    def closed(self, device_id: str, bit: int) -> None:
        """Forget an alarm that ended."""
        self._db.execute("DELETE FROM open_alarms WHERE device_id = ? AND bit = ?", (device_id, bit))


@dataclass(slots=True)
class _AlarmState:
    flags: int
    ts: datetime
    open: dict[int, str]
    restored: int = 0
    """Bits taken over from before a restart, not yet seen in a live report."""


class AlarmTracker:
    """Turns alarm bits into start/end events, per terminal.

    With a ``store`` the open alarms of the previous gateway process are taken over: on a
    terminal's first live report, a recorded alarm whose bit is now clear ends under its original
    event id (``data.reason`` says it cleared while the gateway was down); one still set goes on
    under that id, without a second start.
    """

    def __init__(self, store: AlarmStore | None = None) -> None:
        self._state: dict[str, _AlarmState] = {}
        self.store = store
        self.store_failures = 0
        self._restored: dict[str, dict[int, OpenAlarm]] = {}
        if store is not None:
            for alarm in store.load():
                self._restored.setdefault(alarm.device_id, {})[alarm.bit] = alarm

    @property
    def restored(self) -> int:
        """Open alarms taken over from before a restart whose terminal has not reported yet."""
        return sum(len(v) for v in self._restored.values())

    def last_time(self, device_id: str) -> datetime | None:
        """Time of the newest live position of a terminal."""
        st = self._state.get(device_id)
        return st.ts if st is not None else None

    def active(self, device_id: str) -> int:
        """The alarm flags last seen for a terminal."""
        st = self._state.get(device_id)
        return st.flags if st is not None else 0

    def _new_state(self, device_id: str, ts: datetime) -> _AlarmState:
        taken = self._restored.pop(device_id, None)
        if not taken:
            return _AlarmState(0, ts, {})
        mask = 0
        for bit in taken:
            mask |= 1 << bit
        return _AlarmState(mask, ts, {bit: a.event_id for bit, a in taken.items()}, mask)

    def _record(self, device_id: str, bit: int, alarm: OpenAlarm | None) -> None:
        if self.store is None:
            return
        try:
            if alarm is None:
                self.store.closed(device_id, bit)
            else:
                self.store.opened(alarm)
        except (sqlite3.Error, OSError) as exc:
            # The event still goes out; only its survival of a restart is lost (counted, logged).
            self.store_failures += 1
            if self.store_failures in (1, 10, 100) or self.store_failures % 1000 == 0:
                log.warning("jt808: open alarm not recorded (%d so far): %s", self.store_failures, exc)

    def update(self, device_id: str, report: LocationReport) -> list[DeviceEvent]:
        """Feed one report; return an event per alarm bit that rose or fell.

        A report older than the one that last moved the state is history (e.g. a blind-area
        upload) and produces no edges, so replayed positions cannot reopen closed alarms.
        """
        st = self._state.get(device_id)
        if st is None:
            st = self._state[device_id] = self._new_state(device_id, report.time)
        elif report.time < st.ts:
            return []
        st.ts = report.time
        restored, st.restored = st.restored, 0
        changed = st.flags ^ report.alarm_flags
        if not changed:
            return []
        events: list[DeviceEvent] = []
        position: dict[str, float | int | str] = {"lat": report.latitude, "lon": report.longitude,
                                                  "speed_kmh": report.speed_kmh, "heading_deg": report.heading_deg}
        area = report.extras.get(0x12)
        if area is not None and len(area) == 6:
            # Enter/leave area item: type, area id, direction (0 in, 1 out).
            position["area_id"] = int.from_bytes(area[1:5], "big")
            position["area_direction"] = "out" if area[5] else "in"
        for bit in range(32):
            mask = 1 << bit
            if not changed & mask:
                continue
            kind = alarm_kind(bit)
            state: Literal["start", "end"]
            data: dict[str, float | int | str] = {**position, "alarm_bit": bit}
            if report.alarm_flags & mask:
                event_id = f"{device_id}-{kind.type}-{report.time:%Y%m%dT%H%M%SZ}"
                st.open[bit] = event_id
                state = "start"
                self._record(device_id, bit, OpenAlarm(device_id, bit, event_id, kind.type, report.time))
            else:
                event_id = st.open.pop(bit, f"{device_id}-{kind.type}")
                state = "end"
                if restored & mask:
                    data["reason"] = RECONCILED_REASON
                self._record(device_id, bit, None)
            events.append(DeviceEvent(
                ts=report.time, type=kind.type, state=state, event_id=event_id,
                severity=kind.severity, message=kind.label_zh, data=data,
            ))
        st.flags = report.alarm_flags
        return events


def location_metrics(report: LocationReport) -> dict[str, MetricValue]:
    """The telemetry metrics of one position."""
    metrics: dict[str, MetricValue] = {
        "lat": report.latitude, "lon": report.longitude, "speed_kmh": report.speed_kmh,
        "heading_deg": report.heading_deg, "altitude_m": report.altitude_m, "ignition": report.ignition,
        "gnss_fixed": report.gnss_fixed, "alarm_flags": report.alarm_flags, "status_flags": report.status_flags,
    }
    if report.extras:
        metrics.update(report.extra_metrics())
    return metrics


def driver_metrics(ident: DriverIdentity) -> dict[str, MetricValue]:
    """Telemetry of a driver report: who drives (sign-out keeps the last driver's id: rules decide)."""
    if not ident.signed_in:
        return {"driver_signed_in": False}
    return {"driver_signed_in": True, "driver_id": ident.certificate, "driver_name": ident.name}


def driver_event(device_id: str, ident: DriverIdentity, ts: datetime) -> DeviceEvent:
    """The event of a driver report: ``driver_sign_in``, ``driver_sign_out`` or ``driver_card_error``."""
    if not ident.signed_in:
        return DeviceEvent(ts=ts, type="driver_sign_out", event_id=f"{device_id}-driver-{ts:%Y%m%dT%H%M%SZ}",
                           message="驾驶员签退", data={"card_time": ident.time.isoformat()})
    if not ident.read_ok:
        return DeviceEvent(ts=ts, type="driver_card_error", severity=Severity.WARNING,
                           event_id=f"{device_id}-driver-{ts:%Y%m%dT%H%M%SZ}", message="IC卡读卡失败",
                           data={"card_result": ident.card_result, "card_time": ident.time.isoformat()})
    return DeviceEvent(ts=ts, type="driver_sign_in", event_id=f"{device_id}-driver-{ts:%Y%m%dT%H%M%SZ}",
                       message=f"驾驶员签到: {ident.name}",
                       data={"driver_id": ident.certificate, "driver_name": ident.name, "authority": ident.authority,
                             "valid_until": ident.valid_until, "id_number_set": bool(ident.id_number),
                             "card_time": ident.time.isoformat()})
