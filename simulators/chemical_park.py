"""A simulated chemical park behind real Modbus TCP servers: gas detectors, tanks, an SIS, a DCS, an explosives store.

``ChemicalPark`` is pure and deterministic from its seed: ``step(dt)`` advances simulated time
in fixed sub-steps and scripted faults act at their times (a leak spreading across detectors,
a tank overfilling or heating, a detector drifting, sticking, failing or in calibration, an
interlock bypass left on, an SIS trip, an alarm flood, the store's door, intrusion, crowding,
temperature, humidity and video). ``ParkServers`` publishes the state in the registers of four
pymodbus TCP servers (one per controller, as in a real park), so the real Modbus poller reads
it; ``comm_loss`` stops a controller's server for a while and ``exception`` makes it answer with
a Modbus exception. ``tag_map()`` writes the matching tag map and ``registry_devices()`` the
devices for a registry. Register layouts are in docs/safety.md.

    vigil sim chemical-park --scenario demo --write-tagmap park-tags.yaml [--base-port 15020]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml

from edge.modbus.tagmap import encode_value
from simulators.errors import SimulatorError

log = logging.getLogger(__name__)

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"
GasType = Literal["combustible", "h2s", "co", "cl2", "nh3"]
GAS_METRIC: Final = {"combustible": "gas_lel_pct", "h2s": "h2s_ppm", "co": "co_ppm", "cl2": "cl2_ppm",
                     "nh3": "nh3_ppm"}
DETECTOR_STATES: Final = {0: "normal", 1: "fault", 2: "calibrating"}
FaultKind = Literal["leak", "overfill", "overheat", "overpressure", "drift", "stuck", "detector_fault", "calibration",
                    "bypass", "sis_trip", "alarm_flood", "comm_loss", "exception", "store_temperature",
                    "store_humidity", "door_open", "intrusion", "overcrowd", "video_loss"]
CONTROLLERS: Final = ("gds", "tanks", "sis", "store")
SUBSTEP_S: Final = 0.5


class Detector(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gas detector channel on the gas detection controller."""

    id: str
    gas: GasType = "combustible"
    area: str = "tank-farm"
    x: float = 0.0
    y: float = 0.0


class Tank(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A storage tank of a major hazard installation read by the tank gauge system."""

    id: str
    area: str = "tank-farm"
    level_pct: float = 60.0
    temperature_c: float = 25.0
    pressure_kpa: float = 5.0
    word_order: Literal["big", "little"] = "big"


class Store(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An explosives / fireworks store's monitoring PLC."""

    id: str = "store-01"
    temperature_c: float = 18.0
    humidity_pct: float = 55.0


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scripted fault: what, where, when, for how long and how strong."""

    type: FaultKind
    at_s: float = 0.0
    duration_s: float = 1e9
    target: str = ""
    """A detector, tank, ``sis-01``, ``dcs-01``, the store, or a controller name (comm_loss, exception)."""
    gas: GasType = "combustible"
    x: float = 0.0
    y: float = 0.0
    rate: float = 1.0
    """Growth per second (leak: %LEL or ppm at the source; overfill: % level; drift: units per hour)."""
    value: float = 0.0
    """Level held (calibration test gas, store temperature/humidity, people count, exception code)."""
    spread_mps: float = 0.5
    """How fast a leak's plume front moves."""


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A park and its scripted faults (``simulators/scenarios/chemical_park_{name}.yaml``)."""

    name: str
    description: str = ""
    seed: int = 0
    duration_s: float = 600.0
    site: str = "lingang-chem"
    site_name: str = "临港化工园区"
    lat: float = 30.300
    lon: float = 120.350
    detectors: list[Detector] = []
    tanks: list[Tank] = []
    store: Store = Store()
    sis_loops: int = 8
    faults: list[Fault] = []
    expect_rules: list[str] = []
    """Rules of rules/packs/safety.yaml the scenario is meant to fire (checked by tests)."""


DEFAULT_DETECTORS: Final = [
    Detector(id="gd-101", gas="combustible", area="tank-farm", x=0, y=0),
    Detector(id="gd-102", gas="combustible", area="tank-farm", x=25, y=0),
    Detector(id="gd-103", gas="combustible", area="tank-farm", x=50, y=0),
    Detector(id="gd-104", gas="combustible", area="tank-farm", x=75, y=0),
    Detector(id="gd-201", gas="h2s", area="reaction", x=300, y=0),
    Detector(id="gd-202", gas="co", area="reaction", x=320, y=0),
    Detector(id="gd-203", gas="cl2", area="reaction", x=340, y=0),
    Detector(id="gd-204", gas="nh3", area="reaction", x=360, y=0),
]
DEFAULT_TANKS: Final = [Tank(id="tk-01", level_pct=62.0), Tank(id="tk-02", level_pct=48.0, word_order="little"),
                        Tank(id="tk-03", level_pct=35.0, temperature_c=22.0, pressure_kpa=8.0)]


class ScenarioError(SimulatorError, ValueError):
    """A scenario file is invalid (the message names the file and key)."""


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (``demo``, ``leak``, ...) or a YAML file.

    Raises:
        ScenarioError: unknown name, unreadable file or invalid content.
    """
    path = Path(name_or_path)
    if not path.exists():
        path = SCENARIO_DIR / f"chemical_park_{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return msgspec.convert(raw, Scenario)
    except FileNotFoundError:
        names = sorted(p.stem.removeprefix("chemical_park_") for p in SCENARIO_DIR.glob("chemical_park_*.yaml"))
        raise ScenarioError(f"no scenario {name_or_path!r} (bundled: {', '.join(names)})") from None
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None


class ChemicalPark:
    """The park's physical state, advanced in fixed sub-steps; same seed and scenario, same values."""

    def __init__(self, scenario: Scenario, *, seed: int | None = None) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed if seed is None else seed)
        self.detectors = list(scenario.detectors or DEFAULT_DETECTORS)
        self.tanks = list(scenario.tanks or DEFAULT_TANKS)
        self.t = 0.0
        self.gas: dict[str, float] = {d.id: 0.0 for d in self.detectors}
        self.det_state: dict[str, int] = {d.id: 0 for d in self.detectors}
        self._drift: dict[str, float] = {d.id: 0.0 for d in self.detectors}
        self._stuck: dict[str, float | None] = {d.id: None for d in self.detectors}
        self.tank: dict[str, dict[str, float]] = {
            t.id: {"level_pct": t.level_pct, "temperature_c": t.temperature_c, "pressure_kpa": t.pressure_kpa}
            for t in self.tanks}
        self.bypass = [False] * scenario.sis_loops
        self.sis_trip = False
        self.alarm_total = 0
        self._alarm_acc = 0.0
        st = scenario.store
        self.store: dict[str, Any] = {"temperature_c": st.temperature_c, "humidity_pct": st.humidity_pct,
                                      "door_open": False, "intrusion": False, "people_count": 0, "video_ok": True}
        self.down: set[str] = set()
        """Controllers whose server is stopped now (comm_loss)."""
        self.exceptions: dict[str, int] = {}
        """Controllers answering with a Modbus exception code now."""

    # ------------------------------------------------------------------ time

    def step(self, dt: float) -> None:
        """Advance ``dt`` simulated seconds in fixed sub-steps."""
        n = max(1, round(dt / SUBSTEP_S))
        for _ in range(n):
            self.t += SUBSTEP_S
            self._substep(SUBSTEP_S)

    def active(self, fault: Fault) -> bool:
        """Whether a fault acts at the current time."""
        return fault.at_s <= self.t < fault.at_s + fault.duration_s

    def _substep(self, dt: float) -> None:
        rng = self.rng
        faults = [f for f in self.scenario.faults if self.active(f)]
        by_type: dict[str, list[Fault]] = {}
        for f in faults:
            by_type.setdefault(f.type, []).append(f)
        self.down = {f.target for f in by_type.get("comm_loss", ())}
        self.exceptions = {f.target: int(f.value or 11) for f in by_type.get("exception", ())}
        self._gas(dt, by_type)
        self._tanks(dt, by_type)
        self.bypass = [False] * len(self.bypass)
        for i, f in enumerate(by_type.get("bypass", ())):
            self.bypass[int(f.value) % len(self.bypass) if f.value else i % len(self.bypass)] = True
        self.sis_trip = bool(by_type.get("sis_trip"))
        flood = sum(f.rate for f in by_type.get("alarm_flood", ()))
        # A normal plant raises an alarm every few minutes; a flood raises `rate` per second.
        self._alarm_acc += dt * (flood + (1 / 300.0 if rng.random() < 0.5 else 0.0))
        while self._alarm_acc >= 1.0:
            self._alarm_acc -= 1.0
            self.alarm_total = (self.alarm_total + 1) & 0xFFFFFFFF
        st = self.scenario.store
        s = self.store
        s["temperature_c"] = _held(by_type, "store_temperature", st.temperature_c + rng.gauss(0, 0.1))
        s["humidity_pct"] = _held(by_type, "store_humidity", st.humidity_pct + rng.gauss(0, 0.3))
        s["door_open"] = bool(by_type.get("door_open")) or bool(by_type.get("intrusion"))
        s["intrusion"] = bool(by_type.get("intrusion"))
        s["people_count"] = int(_held(by_type, "overcrowd", 2.0 if s["door_open"] else 0.0))
        s["video_ok"] = not by_type.get("video_loss")

    def _gas(self, dt: float, by_type: dict[str, list[Fault]]) -> None:
        for d in self.detectors:
            # Clean air: a little noise around zero (toxic channels read in 0.1 ppm steps, below every OEL).
            base = max(0.0, self.rng.gauss(0.4, 0.15) if d.gas == "combustible" else self.rng.gauss(0.0, 0.02))
            leak = 0.0
            for f in by_type.get("leak", ()):
                if f.gas != d.gas:
                    continue
                dist = math.hypot(d.x - f.x, d.y - f.y)
                elapsed = self.t - f.at_s - dist / max(f.spread_mps, 1e-3)
                if elapsed > 0:
                    # Concentration grows at the source and falls off with distance (10 m scale).
                    leak += f.rate * elapsed * math.exp(-dist / 40.0)
            top = 100.0 if d.gas == "combustible" else 500.0
            for f in by_type.get("drift", ()):
                if f.target == d.id:
                    self._drift[d.id] += f.rate / 3600.0 * dt
            value = min(top, base + leak + self._drift[d.id])
            state = 0
            if any(f.target == d.id for f in by_type.get("detector_fault", ())):
                state, value = 1, 0.0
            cal = [f for f in by_type.get("calibration", ()) if f.target == d.id]
            if cal:
                state, value = 2, cal[0].value
            stuck = [f for f in by_type.get("stuck", ()) if f.target == d.id]
            if stuck:
                held = self._stuck[d.id]
                if held is None:
                    held = self._stuck[d.id] = round(self.gas[d.id], 1)
                value = held
            else:
                self._stuck[d.id] = None
            self.gas[d.id] = value
            self.det_state[d.id] = state

    def _tanks(self, dt: float, by_type: dict[str, list[Fault]]) -> None:
        for t in self.tanks:
            v = self.tank[t.id]
            v["level_pct"] += self.rng.gauss(0, 0.002)
            for f in by_type.get("overfill", ()):
                if f.target == t.id:
                    v["level_pct"] += f.rate * dt
            v["level_pct"] = min(100.0, max(0.0, v["level_pct"]))
            heat = sum(f.rate * dt for f in by_type.get("overheat", ()) if f.target == t.id)
            v["temperature_c"] += heat + (t.temperature_c - v["temperature_c"]) * 0.01 * dt + self.rng.gauss(0, 0.003)
            press = sum(f.rate * dt for f in by_type.get("overpressure", ()) if f.target == t.id)
            v["pressure_kpa"] += press + (t.pressure_kpa - v["pressure_kpa"]) * 0.01 * dt + self.rng.gauss(0, 0.003)

    # ------------------------------------------------------------------ registers

    def registers(self) -> dict[str, dict[str, list[int] | list[bool]]]:
        """Register images per controller: ``{controller: {"input"|"holding"|"discrete": values}}``."""
        gds: list[int] = []
        for d in self.detectors:
            raw = round(self.gas[d.id] * 10)  # 0.1 %LEL or 0.1 ppm
            gds += [max(0, min(0xFFFF, raw)), self.det_state[d.id], 0, 0]
        tanks: list[int] = []
        for t in self.tanks:
            v = self.tank[t.id]
            for key in ("level_pct", "temperature_c", "pressure_kpa"):
                tanks += encode_value("float32", v[key], t.word_order)
            tanks += [0, 0]
        s = self.store
        store_regs = [encode_value("int16", s["temperature_c"] * 10)[0], round(s["humidity_pct"] * 10),
                      int(s["people_count"])]
        sis_bits = [*self.bypass, self.sis_trip]
        sis_regs = [*encode_value("uint32", self.alarm_total), sum(self.bypass)]
        return {
            "gds": {"input": gds},
            "tanks": {"holding": tanks},
            "sis": {"discrete": sis_bits, "holding": sis_regs},
            "store": {"input": store_regs, "discrete": [bool(s["door_open"]), bool(s["intrusion"]),
                                                        bool(s["video_ok"])]},
        }

    # ------------------------------------------------------------------ descriptions

    def tag_map(self, host: str = "127.0.0.1", ports: dict[str, int] | None = None, *, gateway: str = "park-modbus",
                poll_interval_s: float = 1.0, timeout_s: float = 1.0) -> dict[str, Any]:
        """The tag map (as data) that reads this park's controllers."""
        ports = ports or {c: 15020 + i for i, c in enumerate(CONTROLLERS)}
        common = {"host": host, "unit": 1, "poll_interval_s": poll_interval_s, "timeout_s": timeout_s,
                  "connect_timeout_s": timeout_s, "backoff_min_s": 0.5, "backoff_max_s": 5.0, "offline_after": 3}
        gds_tags = []
        for i, d in enumerate(self.detectors):
            gds_tags.append({"asset": d.id, "name": GAS_METRIC[d.gas], "register": "input", "address": i * 4,
                             "type": "uint16", "scale": 0.1, "unit": "%LEL" if d.gas == "combustible" else "ppm",
                             "valid_range": [0, 100 if d.gas == "combustible" else 500]})
            gds_tags.append({"asset": d.id, "name": "detector_state", "register": "input", "address": i * 4 + 1,
                             "enum": dict(DETECTOR_STATES)})
        tank_tags = []
        for i, t in enumerate(self.tanks):
            for j, (key, unit) in enumerate((("level_pct", "%"), ("temperature_c", "°C"), ("pressure_kpa", "kPa"))):
                tank_tags.append({"asset": t.id, "name": f"tank_{key}", "register": "holding", "address": i * 8 + j * 2,
                                  "type": "float32", "word_order": t.word_order, "unit": unit})
        sis_tags: list[dict[str, Any]] = [
            {"asset": "sis-01", "name": f"bypass_loop_{k + 1}", "register": "discrete", "address": k}
            for k in range(len(self.bypass))]
        sis_tags += [{"asset": "sis-01", "name": "sis_trip", "register": "discrete", "address": len(self.bypass)},
                     {"asset": "sis-01", "name": "bypass_count", "register": "holding", "address": 2},
                     {"asset": "dcs-01", "name": "alarm_total", "register": "holding", "address": 0, "type": "uint32"}]
        sid = self.scenario.store.id
        store_tags = [
            {"asset": sid, "name": "store_temperature_c", "register": "input", "address": 0, "type": "int16",
             "scale": 0.1, "unit": "°C"},
            {"asset": sid, "name": "store_humidity_pct", "register": "input", "address": 1, "scale": 0.1, "unit": "%"},
            {"asset": sid, "name": "people_count", "register": "input", "address": 2},
            {"asset": sid, "name": "door_open", "register": "discrete", "address": 0},
            {"asset": sid, "name": "intrusion", "register": "discrete", "address": 1},
            {"asset": sid, "name": "video_ok", "register": "discrete", "address": 2},
        ]
        tags = {"gds": gds_tags, "tanks": tank_tags, "sis": sis_tags, "store": store_tags}
        return {"gateway": gateway, "site": self.scenario.site,
                "devices": [{"name": f"park-{c}", "port": ports[c], **common, "tags": tags[c]} for c in CONTROLLERS]}

    def registry_devices(self) -> list[dict[str, Any]]:
        """Registry entries (kind ``sensor``) with positions, areas and what each asset is."""
        sc = self.scenario
        out: list[dict[str, Any]] = []

        def pos(x: float, y: float) -> dict[str, float]:
            return {"lat": round(sc.lat + y / 111_000.0, 6), "lon": round(sc.lon + x / 96_000.0, 6)}

        areas = {"tank-farm": "罐区", "reaction": "反应区"}
        gases = {"combustible": "可燃气体", "h2s": "硫化氢", "co": "一氧化碳", "cl2": "氯气", "nh3": "氨气"}
        for d in self.detectors:
            out.append({"id": d.id, "kind": "sensor", "site": sc.site,
                        "name": f"{areas.get(d.area, d.area)}{gases[d.gas]}探测器 {d.id.upper()}",
                        "labels": {"area": d.area},
                        "attributes": {"sensor_type": "gas_detector", "gas": d.gas, "area": d.area, **pos(d.x, d.y)}})
        for i, t in enumerate(self.tanks):
            out.append({"id": t.id, "kind": "sensor", "site": sc.site, "name": f"储罐 {t.id}",
                        "labels": {"area": t.area},
                        "attributes": {"sensor_type": "tank", "area": t.area, **pos(10.0 + 25 * i, -30.0)}})
        out.append({"id": "sis-01", "kind": "sensor", "site": sc.site, "name": "安全仪表系统 SIS-01",
                    "attributes": {"sensor_type": "sis", "area": "reaction", **pos(330.0, 40.0)}})
        out.append({"id": "dcs-01", "kind": "sensor", "site": sc.site, "name": "DCS 报警服务器",
                    "attributes": {"sensor_type": "dcs", "area": "control-room", **pos(150.0, 60.0)}})
        out.append({"id": sc.store.id, "kind": "sensor", "site": sc.site, "name": "民爆物品仓库",
                    "attributes": {"sensor_type": "explosives_store", "max_people": 3, **pos(600.0, 200.0)}})
        return out


def _held(by_type: dict[str, list[Fault]], kind: str, normal: float) -> float:
    faults = by_type.get(kind)
    return faults[0].value if faults else normal


class ParkServers:
    """One pymodbus TCP server per controller, refreshed from the park; ``comm_loss`` stops one."""

    def __init__(self, park: ChemicalPark, host: str = "127.0.0.1", ports: dict[str, int] | None = None) -> None:
        self.park = park
        self.host = host
        self.ports = ports or {c: 15020 + i for i, c in enumerate(CONTROLLERS)}
        self.servers: dict[str, Any] = {}
        self.updates = 0

    async def _action(self, controller: str, func_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> Any:
        from pymodbus.constants import ExcCodes

        code = self.park.exceptions.get(controller)
        if code is not None and set_values is None:
            return ExcCodes(code) if code in ExcCodes._value2member_map_ else ExcCodes.GATEWAY_NO_RESPONSE
        return None

    def _device(self, controller: str) -> Any:
        from pymodbus.simulator import SimData, SimDevice
        from pymodbus.simulator.simutils import DataType

        image = self.park.registers()[controller]

        def regs(key: str) -> list[SimData]:
            vals = image.get(key)
            return [SimData(0, count=max(len(vals), 1) if vals else 1, values=0, datatype=DataType.REGISTERS)]

        def bits(key: str) -> list[SimData]:
            vals = image.get(key)
            return [SimData(0, count=max(16, len(vals) if vals else 0), values=False, datatype=DataType.BITS)]

        return SimDevice(id=1, simdata=(bits("coil"), bits("discrete"), regs("holding"), regs("input")),
                         action=functools.partial(self._action, controller))

    async def start(self) -> None:
        """Start every controller's server and load the current registers."""
        for c in CONTROLLERS:
            await self._start_one(c)
        await self.refresh()

    async def _start_one(self, controller: str) -> None:
        from pymodbus.server import ModbusTcpServer

        server = ModbusTcpServer(self._device(controller), address=(self.host, self.ports[controller]))
        await server.serve_forever(background=True)
        self.servers[controller] = server

    async def _stop_one(self, controller: str) -> None:
        server = self.servers.pop(controller, None)
        if server is not None:
            await server.shutdown()

    async def stop(self) -> None:
        """Stop every server."""
        for c in list(self.servers):
            await self._stop_one(c)

    async def refresh(self) -> None:
        """Write the park's registers into the servers; stop or restart servers for comm_loss faults."""
        for c in CONTROLLERS:
            if c in self.park.down and c in self.servers:
                await self._stop_one(c)
            elif c not in self.park.down and c not in self.servers:
                await self._start_one(c)
        fcs = {"holding": 3, "input": 4, "discrete": 2, "coil": 1}
        for c, image in self.park.registers().items():
            server = self.servers.get(c)
            if server is None:
                continue
            for key, values in image.items():
                if values:
                    await server.async_setValues(1, fcs[key], 0, list(values))
        self.updates += 1


async def run_park(scenario: Scenario, *, host: str = "127.0.0.1", ports: dict[str, int] | None = None,
                   time_scale: float = 1.0, duration_s: float | None = None, loop: bool = False,
                   seed: int | None = None, ready: asyncio.Event | None = None) -> ChemicalPark:
    """Run the park behind its Modbus servers in (scaled) real time until cancelled or the duration passed."""
    park = ChemicalPark(scenario, seed=seed)
    servers = ParkServers(park, host, ports)
    await servers.start()
    if ready is not None:
        ready.set()
    started = time.monotonic()
    cycle = 0
    base_seed = scenario.seed if seed is None else seed
    try:
        while True:
            await asyncio.sleep(SUBSTEP_S / max(time_scale, 1e-3))
            due = (time.monotonic() - started) * time_scale
            if loop and park.t >= scenario.duration_s:
                # Each cycle replays the script with the next seed (same faults, fresh noise).
                cycle += 1
                park = servers.park = ChemicalPark(scenario, seed=base_seed + cycle)
                started = time.monotonic()
                continue
            if due > park.t:
                park.step(due - park.t)
            await servers.refresh()
            if duration_s is not None and park.t >= duration_s:
                break
    finally:
        await servers.stop()
    return park


def build_parser() -> argparse.ArgumentParser:
    """The simulator's options."""
    p = argparse.ArgumentParser(prog="vigil sim chemical-park", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="demo", help="bundled scenario name or YAML file (default demo)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=15020, help="gds, tanks, sis, store on this port and the next 3")
    p.add_argument("--ports", default=None, help="gds,tanks,sis,store ports (instead of --base-port)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--duration", type=float, default=None, help="stop after this many simulated seconds")
    p.add_argument("--loop", action="store_true", help="restart the scenario when it ends (demo)")
    p.add_argument("--write-tagmap", type=Path, default=None, help="write the matching tag map here and go on")
    p.add_argument("--poll-interval", type=float, default=1.0, help="poll interval written into the tag map")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vigil sim chemical-park``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"vigil sim chemical-park: {exc}", file=sys.stderr)
        return 2
    ports = {c: args.base_port + i for i, c in enumerate(CONTROLLERS)}
    if args.ports:
        given = [int(p) for p in args.ports.split(",") if p.strip().isdigit()]
        if len(given) != len(CONTROLLERS):
            print(f"vigil sim chemical-park: --ports wants {len(CONTROLLERS)} ports (gds,tanks,sis,store)",
                  file=sys.stderr)
            return 2
        ports = dict(zip(CONTROLLERS, given, strict=True))
    if args.write_tagmap is not None:
        data = ChemicalPark(scenario).tag_map(args.host, ports, poll_interval_s=args.poll_interval)
        args.write_tagmap.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        print(f"wrote {args.write_tagmap}", flush=True)
    print(f"chemical park {scenario.name!r} (seed {scenario.seed if args.seed is None else args.seed}): Modbus TCP "
          + ", ".join(f"{c} {args.host}:{p}" for c, p in ports.items()) + (" (looping)" if args.loop else ""),
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_park(scenario, host=args.host, ports=ports, time_scale=args.time_scale,
                             duration_s=args.duration, loop=args.loop, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
