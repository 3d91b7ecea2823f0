"""JT/T 808 terminal simulator: vehicles driving routes, speaking JT/T 808 over TCP.

A scenario file (``simulators/scenarios/jt808_*.yaml``) names routes (WGS-84 points), forbidden
zones and fleets with behaviours (speeding, rests, signal loss, emergency button). ``drive``
turns one terminal's plan into its reports on a simulated clock: a pure function of the
scenario and the seed, so runs repeat exactly. ``run_scenario`` plays the plans against a
gateway in real time divided by ``time_scale``; thousands of terminals share one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from edge.jt808.codec import FrameSplitter, Jt808DecodeError, Jt808Frame, ProtocolVersion, decode_frame, encode_frame
from edge.jt808.commands import build_params_reply
from edge.jt808.messages import (
    AuthRequest,
    BatchKind,
    LocationReport,
    MsgId,
    RegisterRequest,
    build_auth,
    build_batch_location,
    build_location,
    build_register,
    dword,
    parse_general_reply,
    parse_register_reply,
    word,
)
from simulators.errors import SimulatorError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- scenario files

Point = tuple[float, float]


class Behaviour(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Something a fleet does at a time: ``at_min`` minutes after its start, for ``duration_min``."""

    type: Literal["speeding", "rest", "signal_loss", "emergency"]
    at_min: float
    duration_min: float
    speed_kmh: float | None = None
    """Speeding: the speed driven."""
    backfill: bool = True
    """Signal loss: upload the positions stored meanwhile as a blind-area batch (0x0704)."""


class Fleet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A group of vehicles with the same route and habits."""

    name: str
    count: int
    route: str
    cruise_kmh: float = 60.0
    jitter_kmh: float = 4.0
    overspeed_kmh: float = 100.0
    """The terminal's own overspeed alarm threshold (alarm bit 1)."""
    fatigue_h: float = 4.0
    """Continuous driving after which the terminal raises fatigue (bit 2; warning bit 14 15 min before)."""
    rest_reset_min: float = 20.0
    protocol: Literal[2013, 2019] = 2013
    plate_prefix: str = "浙A"
    behaviours: list[Behaviour] = []


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A polyline of ``[lat, lon]`` WGS-84 points; driven out and back when not closed."""

    points: list[Point]


class Zone(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A forbidden zone (polygon); terminals raise area alarm bit 20 while inside."""

    name: str
    area_id: int
    polygon: list[Point]


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One scenario file."""

    name: str
    seed: int
    start: datetime
    """Simulated start time, with its UTC offset (terminals report UTC+8)."""
    duration_min: float
    routes: dict[str, Route]
    fleets: list[Fleet]
    zones: list[Zone] = []
    report_interval_s: float = 30.0
    heartbeat_s: float = 60.0
    time_scale: float = 1.0
    """Simulated seconds per wall second."""
    phone_prefix: str = "1390"
    """First digits of the terminals' 11-digit phone numbers."""
    ramp_per_s: float = 500.0
    """New connections per wall second (avoid a SYN flood of thousands at once)."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario file is invalid; the message names the file and the key."""


def load_scenario(path: str | Path, **overrides: object) -> Scenario:
    """Load and check a scenario file; ``overrides`` replace top-level keys.

    Raises:
        ScenarioError: naming the file and the offending key.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        scenario = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if scenario.start.tzinfo is None:
        raise ScenarioError(f"{path}: start: give a UTC offset, e.g. 2026-11-26T21:30:00+08:00")
    for i, fleet in enumerate(scenario.fleets):
        if fleet.route not in scenario.routes:
            raise ScenarioError(f"{path}: fleets[{i}].route: unknown route {fleet.route!r}")
        if fleet.count < 0:
            raise ScenarioError(f"{path}: fleets[{i}].count: must not be negative")
    if not scenario.phone_prefix.isdigit() or len(scenario.phone_prefix) > 9:
        raise ScenarioError(f"{path}: phone_prefix: 1 to 9 digits, got {scenario.phone_prefix!r}")
    if sum(f.count for f in scenario.fleets) >= 10 ** (11 - len(scenario.phone_prefix)):
        raise ScenarioError(f"{path}: phone_prefix: too long for {sum(f.count for f in scenario.fleets)} terminals")
    for name, route in scenario.routes.items():
        if len(route.points) < 2:
            raise ScenarioError(f"{path}: routes.{name}.points: need at least two points")
    return scenario


# ---------------------------------------------------------------------------- geometry

EARTH_RADIUS_M = 6_371_000.0


def distance_m(a: Point, b: Point) -> float:
    """Great-circle distance (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def bearing_deg(a: Point, b: Point) -> int:
    """Initial bearing from a to b, 0-359 degrees clockwise from north."""
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    y = math.sin(lo2 - lo1) * math.cos(la2)
    x = math.cos(la1) * math.sin(la2) - math.sin(la1) * math.cos(la2) * math.cos(lo2 - lo1)
    return int(math.degrees(math.atan2(y, x)) % 360)


def inside(point: Point, polygon: Sequence[Point]) -> bool:
    """Point in polygon (ray casting on lat/lon, fine at city scale)."""
    lat, lon = point
    hit = False
    j = len(polygon) - 1
    for i, (la_i, lo_i) in enumerate(polygon):
        la_j, lo_j = polygon[j]
        if (lo_i > lon) != (lo_j > lon) and lat < (la_j - la_i) * (lon - lo_i) / (lo_j - lo_i) + la_i:
            hit = not hit
        j = i
    return hit


@dataclass(frozen=True)
class RouteGeometry:
    """A route as a closed circuit with cumulative distances."""

    points: tuple[Point, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, route: Route) -> RouteGeometry:
        """Close the route: back to the start directly if it is a loop, else out and back."""
        pts: list[Point] = [(float(p[0]), float(p[1])) for p in route.points]
        closed = distance_m(pts[0], pts[-1]) < 50
        circuit = pts if closed else pts + pts[-2::-1]
        cum = [0.0]
        for a, b in itertools.pairwise(circuit):
            cum.append(cum[-1] + distance_m(a, b))
        return cls(tuple(circuit), tuple(cum))

    @property
    def length_m(self) -> float:
        """Length of one circuit."""
        return self.cumulative[-1]

    def at(self, d: float) -> tuple[Point, int]:
        """Position and heading at distance ``d`` along the circuit (wrapping)."""
        d %= self.length_m
        lo, hi = 0, len(self.cumulative) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cumulative[mid] <= d:
                lo = mid
            else:
                hi = mid
        a, b = self.points[lo], self.points[hi]
        seg = self.cumulative[hi] - self.cumulative[lo]
        f = (d - self.cumulative[lo]) / seg if seg else 0.0
        return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f), bearing_deg(a, b)


# ---------------------------------------------------------------------------- the pure model

OVERSPEED, FATIGUE, EMERGENCY, AREA, FATIGUE_WARNING = 1 << 1, 1 << 2, 1 << 0, 1 << 20, 1 << 14


@dataclass(frozen=True, slots=True)
class TerminalPlan:
    """One simulated terminal: identity, fleet and start offset."""

    phone: str
    index: int
    fleet: Fleet
    version: ProtocolVersion
    offset_s: float
    """Simulated seconds after the scenario start at which it starts driving."""
    start_distance_m: float

    @property
    def device_id(self) -> str:
        """The id the gateway will publish under."""
        return self.phone.lstrip("0")

    @property
    def registration(self) -> RegisterRequest:
        """The 0x0100 fields this terminal sends (the device registry must hold the same, see ``registry_entry``)."""
        return RegisterRequest(33, 100, "VIGIL", "SIM-808", f"T{self.index:06d}"[-7:], 2,
                               f"{self.fleet.plate_prefix}{self.index:05d}")

    def registry_entry(self) -> dict[str, object]:
        """This terminal as a device-registry entry (``devices:`` item) with its ``jt808`` identity."""
        r = self.registration
        return {"id": self.device_id, "kind": "vehicle", "name": r.plate,
                "jt808": {"manufacturer": r.manufacturer, "model": r.model, "terminal_id": r.terminal_id,
                          "plate_colour": r.plate_color, "plate": r.plate}}


@dataclass(frozen=True, slots=True)
class Tick:
    """One report interval of one terminal."""

    t: float
    """Simulated seconds after the scenario start."""
    report: LocationReport
    online: bool
    backfill: bool
    """When offline: whether this position is stored for a blind-area upload."""


def plan(scenario: Scenario) -> list[TerminalPlan]:
    """The terminals of a scenario, deterministic from its seed."""
    plans: list[TerminalPlan] = []
    index = 0
    for fleet in scenario.fleets:
        geometry = RouteGeometry.of(scenario.routes[fleet.route])
        for _ in range(fleet.count):
            rng = random.Random(f"{scenario.seed}:{fleet.name}:{index}")
            # Terminals start at random places on the route and report out of phase with each other.
            offset = rng.uniform(0, scenario.report_interval_s)
            # An 11-digit mobile number: the prefix, then the terminal's number.
            phone = scenario.phone_prefix + str(index + 1).rjust(11 - len(scenario.phone_prefix), "0")
            plans.append(TerminalPlan(phone, index, fleet, ProtocolVersion(fleet.protocol), offset,
                                      rng.uniform(0, geometry.length_m)))
            index += 1
    return plans


def _active(behaviours: Sequence[Behaviour], minute: float, kind: str) -> Behaviour | None:
    for b in behaviours:
        if b.type == kind and b.at_min <= minute < b.at_min + b.duration_min:
            return b
    return None


def drive(scenario: Scenario, terminal: TerminalPlan) -> Iterator[Tick]:
    """The reports of one terminal over the scenario, one per report interval (pure)."""
    fleet = terminal.fleet
    geometry = RouteGeometry.of(scenario.routes[fleet.route])
    rng = random.Random(f"{scenario.seed}:drive:{terminal.index}")
    dt = scenario.report_interval_s
    distance = terminal.start_distance_m
    speed = 0.0
    driving_s = resting_s = 0.0
    mileage_m = rng.uniform(10_000, 300_000) * 1000
    fuel_l = rng.uniform(150, 350)
    zones_in: set[int] = set()
    t = terminal.offset_s
    end = scenario.duration_min * 60
    while t <= end:
        minute = (t - terminal.offset_s) / 60
        rest = _active(fleet.behaviours, minute, "rest")
        speeding = _active(fleet.behaviours, minute, "speeding")
        if rest is not None:
            target = 0.0
        elif speeding is not None:
            target = speeding.speed_kmh if speeding.speed_kmh is not None else fleet.overspeed_kmh + 15
        else:
            # Ordinary driving stays under the terminal's threshold: speeding is what behaviours are for.
            target = min(fleet.overspeed_kmh - 1, max(0.0, fleet.cruise_kmh + rng.gauss(0, fleet.jitter_kmh)))
        # Vehicles do not jump between speeds: at most ~1 m/s^2 over an interval, capped at 40 km/h.
        step = min(40.0, 3.6 * dt)
        speed = min(target, speed + step) if target > speed else max(target, speed - step)
        travelled = speed / 3.6 * dt
        distance += travelled
        mileage_m += travelled
        fuel_l = max(0.0, fuel_l - travelled / 1000 * 0.3)
        if speed > 1:
            driving_s += dt
            resting_s = 0.0
        else:
            resting_s += dt
            if resting_s >= fleet.rest_reset_min * 60:
                driving_s = 0.0
        (lat, lon), heading = geometry.at(distance)
        alarm = 0
        if speed > fleet.overspeed_kmh:
            alarm |= OVERSPEED
        if driving_s >= fleet.fatigue_h * 3600:
            alarm |= FATIGUE
        elif driving_s >= fleet.fatigue_h * 3600 - 15 * 60:
            alarm |= FATIGUE_WARNING
        if _active(fleet.behaviours, minute, "emergency") is not None:
            alarm |= EMERGENCY
        extras = {0x01: dword(int(mileage_m / 100)), 0x02: word(int(fuel_l * 10)), 0x30: bytes((rng.randint(12, 31),)),
                  0x31: bytes((rng.randint(7, 16),))}
        now_in = {z.area_id for z in scenario.zones if inside((lat, lon), z.polygon)}
        if now_in:
            alarm |= AREA
        changed = now_in ^ zones_in
        if changed:
            area = min(changed)
            # 0x12: area type 3 (polygon), area id, direction 0 in / 1 out.
            extras[0x12] = bytes((3,)) + dword(area) + bytes((0 if area in now_in else 1,))
        zones_in = now_in
        ignition = rest is None or speed > 0
        status = (1 if ignition else 0) | 2
        ts = scenario.start + timedelta(seconds=t)
        report = LocationReport(alarm, status, round(lat, 6), round(lon, 6), 10 + rng.randint(0, 30),
                                round(speed, 1), heading, ts.replace(microsecond=0), extras)
        loss = _active(fleet.behaviours, minute, "signal_loss")
        yield Tick(t, report, loss is None, loss is not None and loss.backfill)
        t += dt


# ---------------------------------------------------------------------------- TCP terminals

@dataclass
class SimulatorStats:
    """What a run sent and got back."""

    connected: int = 0
    authenticated: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    bad_replies: int = 0
    open_connections: int = 0
    registration_refused: int = 0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly figures."""
        return {"connected": self.connected, "authenticated": self.authenticated,
                "connect_failures": self.connect_failures, "disconnects": self.disconnects,
                "sent": dict(self.sent), "replies": dict(self.replies), "bad_replies": self.bad_replies,
                "open_connections": self.open_connections, "registration_refused": self.registration_refused}


_COMMANDS = frozenset({0x8103, 0x8104, 0x8106, 0x8203, 0x8300})
"""Platform commands the simulated terminal answers."""
SIMULATED_PARAMS: dict[str, float | int] = {"heartbeat_interval_s": 30, "max_speed_kmh": 100, "overspeed_duration_s": 10,
                                            "continuous_driving_limit_s": 14_400, "daily_driving_limit_s": 28_800,
                                            "min_rest_s": 1_200}
"""What a simulated terminal reports for 0x8104 (a typical factory setting: 100 km/h, 4 h / 20 min)."""


class _TerminalProtocol(asyncio.Protocol):
    def __init__(self, stats: SimulatorStats) -> None:
        self.stats = stats
        self.splitter = FrameSplitter()
        self.waiters: dict[int, asyncio.Future[bytes]] = {}
        """Reply message id -> future of its body (register and authenticate wait on replies)."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_command: Callable[[Jt808Frame], None] | None = None

    def data_received(self, data: bytes) -> None:
        for item in self.splitter.feed(data):
            if not isinstance(item, bytes):
                self.stats.bad_replies += 1
                continue
            try:
                frame = decode_frame(item)
            except Jt808DecodeError:
                self.stats.bad_replies += 1
                continue
            msg_id = frame.header.msg_id
            if msg_id == MsgId.PLATFORM_GENERAL_REPLY:
                try:
                    reply = parse_general_reply(frame.body)
                except Jt808DecodeError:
                    self.stats.bad_replies += 1
                    continue
                self.stats.replies[f"0x{reply.reply_id:04x}:{reply.result}"] += 1
                key = 0x10000 | reply.reply_id
            else:
                self.stats.replies[f"0x{msg_id:04x}"] += 1
                key = msg_id
                if msg_id in _COMMANDS and self.on_command is not None:
                    self.on_command(frame)  # the platform's command: answer it as a terminal does
            waiter = self.waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame.body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection lost"))


class SimulatedTerminal:
    """One terminal's TCP conversation: register, authenticate, report, reconnect."""

    def __init__(self, terminal: TerminalPlan, host: str, port: int, stats: SimulatorStats,
                 auth_codes: dict[str, str] | None = None) -> None:
        self.plan, self.host, self.port, self.stats = terminal, host, port, stats
        self.serial = 0
        # A real terminal keeps its auth code in flash: the platform refuses a second registration.
        self.auth_codes = auth_codes if auth_codes is not None else {}
        self.transport: asyncio.Transport | None = None
        self.protocol: _TerminalProtocol | None = None

    @property
    def auth_code(self) -> str | None:
        """The auth code the platform gave this terminal, if it registered."""
        return self.auth_codes.get(self.plan.phone)

    @auth_code.setter
    def auth_code(self, code: str | None) -> None:
        if code is None:
            self.auth_codes.pop(self.plan.phone, None)
        else:
            self.auth_codes[self.plan.phone] = code

    def send(self, msg_id: int, body: bytes = b"", name: str = "") -> None:
        """Send one message (dropped silently when not connected, as a terminal's modem would)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.serial = (self.serial + 1) & 0xFFFF
        self.transport.write(encode_frame(msg_id, self.plan.phone, self.serial, body, version=self.plan.version))
        self.stats.sent[name or f"0x{msg_id:04x}"] += 1

    def _answer_command(self, frame: Jt808Frame) -> None:
        """0x0104 with the terminal's parameters to a query; 0x0001 "done" to text, alarm confirmation, settings."""
        h = frame.header
        if h.msg_id in (0x8104, 0x8106):
            self.send(0x0104, build_params_reply(h.serial, SIMULATED_PARAMS), "params_reply")
        else:
            self.send(MsgId.TERMINAL_GENERAL_REPLY, h.serial.to_bytes(2, "big") + h.msg_id.to_bytes(2, "big") + b"\x00",
                      "command_reply")

    async def _request(self, msg_id: int, body: bytes, reply_key: int, timeout: float = 10.0) -> bytes:
        assert self.protocol is not None
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.protocol.waiters[reply_key] = waiter
        self.send(msg_id, body)
        async with asyncio.timeout(timeout):
            return await waiter

    async def connect(self, attempts: int = 8) -> bool:
        """Connect, register if needed, authenticate; retry with jittered backoff."""
        loop = asyncio.get_running_loop()
        rng = random.Random(self.plan.index)
        for attempt in range(attempts):
            try:
                transport, protocol = await loop.create_connection(lambda: _TerminalProtocol(self.stats),
                                                                   self.host, self.port)
                self.transport, self.protocol = transport, protocol
                protocol.on_command = self._answer_command
                self.stats.connected += 1
                self.stats.open_connections += 1
                code = self.auth_code
                if code is None:
                    reply = parse_register_reply(await self._request(
                        MsgId.REGISTER, build_register(self.plan.registration, self.plan.version), MsgId.REGISTER_REPLY))
                    if reply.result != 0:
                        log.warning("terminal %s: registration refused (%d)", self.plan.phone, reply.result)
                        self.stats.registration_refused += 1
                        self.close()
                        return False
                    self.auth_code = code = reply.auth_code
                auth = AuthRequest(code, f"86{self.plan.index:013d}", "sim-1.0")
                result = parse_general_reply(await self._request(
                    MsgId.AUTHENTICATE, build_auth(auth, self.plan.version), 0x10000 | MsgId.AUTHENTICATE))
                if result.result != 0:
                    self.auth_code = None
                    self.close()
                    continue
                self.stats.authenticated += 1
                return True
            except (OSError, TimeoutError, ConnectionError, Jt808DecodeError):
                self.stats.connect_failures += 1
                self.close()
                await asyncio.sleep(min(10.0, 0.2 * 2 ** attempt) * rng.uniform(0.5, 1.0))
        return False

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            self.stats.open_connections -= 1
            self.stats.disconnects += 1
        self.transport = None

    @property
    def connected(self) -> bool:
        """Whether the TCP connection is up."""
        return self.transport is not None and not self.transport.is_closing()


async def run_terminal(scenario: Scenario, terminal: TerminalPlan, host: str, port: int, stats: SimulatorStats,
                       wall_start: float, hold_s: float = 0.0, auth_codes: dict[str, str] | None = None) -> None:
    """Play one terminal's ticks in (scaled) real time; then hold the connection with heartbeats."""
    sim = SimulatedTerminal(terminal, host, port, stats, auth_codes)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, wall_start + terminal.index / scenario.ramp_per_s - loop.time()))
    if not await sim.connect():
        return
    backlog: deque[LocationReport] = deque(maxlen=2000)
    scale = scenario.time_scale
    last_sent = loop.time()
    try:
        for tick in drive(scenario, terminal):
            delay = wall_start + tick.t / scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not tick.online:
                if sim.connected:
                    sim.close()  # no signal: the modem loses its data link
                if tick.backfill:
                    backlog.append(tick.report)
                continue
            if not sim.connected and not await sim.connect():
                return
            while backlog:
                chunk = [backlog.popleft() for _ in range(min(len(backlog), 20))]
                sim.send(MsgId.BATCH_LOCATION, build_batch_location(chunk, BatchKind.BLIND_AREA), "batch_blind")
            sim.send(MsgId.LOCATION, build_location(tick.report), "location")
            last_sent = loop.time()
        end = loop.time() + hold_s
        while loop.time() < end and sim.connected:
            await asyncio.sleep(min(scenario.heartbeat_s, max(0.0, end - loop.time())))
            if loop.time() - last_sent >= scenario.heartbeat_s * 0.9:
                sim.send(MsgId.HEARTBEAT, b"", "heartbeat")
                last_sent = loop.time()
    finally:
        sim.close()


async def run_scenario(scenario: Scenario, host: str, port: int, *, hold_s: float = 0.0,
                       stats: SimulatorStats | None = None, auth_codes: dict[str, str] | None = None) -> SimulatorStats:
    """Play every terminal of a scenario against a gateway; return the figures.

    ``auth_codes`` (phone -> code) is the terminals' memory of their registrations: pass the same
    dict to a later run against the same gateway, which refuses to register a terminal twice.
    """
    stats = stats or SimulatorStats()
    codes = auth_codes if auth_codes is not None else {}
    wall_start = asyncio.get_running_loop().time() + 0.05
    async with asyncio.TaskGroup() as tg:
        for terminal in plan(scenario):
            tg.create_task(run_terminal(scenario, terminal, host, port, stats, wall_start, hold_s, codes),
                           name=f"jt808-terminal-{terminal.phone}")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil sim jt808``: run a scenario file against a gateway."""
    p = argparse.ArgumentParser(prog="vigil sim jt808", description=__doc__.splitlines()[0])
    p.add_argument("scenario", help="scenario YAML, e.g. simulators/scenarios/jt808_coach_night.yaml")
    p.add_argument("--gateway", default="127.0.0.1:7808", metavar="HOST:PORT")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--time-scale", type=float, help="simulated seconds per wall second")
    p.add_argument("--duration-min", type=float, help="override the simulated duration")
    p.add_argument("--hold", type=float, default=0.0, metavar="S", help="keep connections open S seconds at the end")
    p.add_argument("--auth-codes", metavar="FILE", help="JSON file keeping the terminals' auth codes between runs "
                   "(the gateway refuses to register a terminal twice)")
    p.add_argument("--print-registry", action="store_true",
                   help="print the scenario's terminals as device-registry YAML (with their jt808 identity) and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scenario = load_scenario(args.scenario, seed=args.seed, time_scale=args.time_scale,
                                 duration_min=args.duration_min)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.print_registry:
        print(yaml.safe_dump({"devices": [t.registry_entry() for t in plan(scenario)]}, allow_unicode=True,
                             sort_keys=False), end="")
        return 0
    host, _, port = args.gateway.rpartition(":")
    codes = _CodeFile(Path(args.auth_codes)) if args.auth_codes else {}
    started = time.monotonic()
    stats = asyncio.run(run_scenario(scenario, host or "127.0.0.1", int(port), hold_s=args.hold, auth_codes=codes))
    print(json.dumps({"scenario": scenario.name, "seconds": round(time.monotonic() - started, 1),
                      **stats.as_dict()}, ensure_ascii=False))
    return 0


class _CodeFile(dict[str, str]):
    """Auth codes (phone -> code) written through to a JSON file, so a killed simulator keeps them."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            super().update({str(k): str(v) for k, v in data.items()})

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self._save()

    def pop(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """Remove a code (the platform no longer accepts it) and save."""
        value = super().pop(key, default)
        self._save()
        return value

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)


if __name__ == "__main__":
    raise SystemExit(main())
