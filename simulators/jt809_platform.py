"""JT/T 809 lower-platform simulator: an enterprise platform forwarding its vehicles to Vigil.

``drive`` plans, from a seed, what N vehicles report on a simulated clock (positions every
``interval_s``, an emergency button, an overspeed episode, an outage of the main link) -- a pure
function, so the same spec gives byte-identical messages. ``run`` plays the plan against a
gateway over TCP: main-link login (0x1001) with a down-link address where the simulator listens
for the sub link (0x9001 checked against the verify code), 0x1202 positions, 0x1005 heartbeats,
the link dropped during the outage and the positions stored meanwhile re-sent as 0x1203 batches
after the new login, 0x1402 alarms, and 0x1003 logout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import yaml

from edge.jt809.codec import Jt809DecodeError, Jt809Keys, Jt809StreamSplitter, decode_frame, encode_frame
from edge.jt809.directory import plate_key
from edge.jt809.messages import (
    CHINA,
    DataType,
    GnssData,
    LoginRequest,
    MsgId,
    WarnInfo,
    build_envelope,
    build_gnss,
    build_history,
    build_login,
    build_logout,
    build_warn,
    parse_login_reply,
    parse_verify_code,
)
from simulators.errors import SimulatorError

log = logging.getLogger(__name__)

EMERGENCY_BIT = 1 << 0
OVERSPEED_BIT = 1 << 1
_ACC_FIXED = 0b11


@dataclass(frozen=True, slots=True)
class LowerPlatformSim:
    """What the simulated lower platform is and does (times in simulated seconds from ``start``)."""

    access_code: int = 20261203
    user_id: int = 1001
    password: str = "pw809sim"
    vehicles: int = 5
    interval_s: float = 30.0
    duration_s: float = 1800.0
    seed: int = 0
    start: datetime = datetime(2026, 12, 3, 8, 0, tzinfo=CHINA)
    plate_prefix: str = "浙A8"
    colour: int = 2
    id_prefix: str = "veh809-"
    outage_at_s: float | None = 600.0
    outage_s: float = 300.0
    emergency_at_s: float | None = 300.0
    emergency_s: float = 120.0
    overspeed_at_s: float | None = 900.0
    overspeed_s: float = 180.0
    heartbeat_s: float = 60.0
    time_scale: float = 0.0
    """Simulated seconds per wall second; 0 sends as fast as the gateway takes it."""
    keys: Jt809Keys | None = None
    """Encrypt every body with these (ENCRYPT_FLAG 1)."""
    unknown_vehicles: int = 0
    """Extra vehicles whose plates the registry does not list."""
    sublink: bool = True
    """Listen for the superior's sub link and give its address in the login."""

    def plate(self, i: int) -> str:
        """Plate of vehicle ``i`` (indices from ``vehicles`` on are the unknown ones)."""
        return f"{self.plate_prefix}{i:04d}" if i < self.vehicles else f"{self.plate_prefix}X{i:03d}"

    def device_id(self, i: int) -> str:
        """Registry id of vehicle ``i``."""
        return f"{self.id_prefix}{i:04d}"

    def registry_entries(self) -> list[dict[str, Any]]:
        """The known vehicles as device-registry entries (plate and colour in ``attributes``)."""
        return [{"id": self.device_id(i), "kind": "vehicle", "name": self.plate(i),
                 "attributes": {"plate": self.plate(i), "plate_colour": self.colour}} for i in range(self.vehicles)]

    def platforms_entry(self) -> dict[str, Any]:
        """This platform as an entry of the gateway's platforms file."""
        entry: dict[str, Any] = {"access_code": self.access_code, "name": "simulated lower platform",
                                 "user_id": self.user_id, "password": self.password}
        if self.keys is not None:
            entry["keys"] = {"m1": self.keys.m1, "ia1": self.keys.ia1, "ic1": self.keys.ic1}
        return entry


@dataclass(frozen=True, slots=True)
class Report:
    """One planned position of one vehicle."""

    t: float
    vehicle: int
    gnss: GnssData
    live: bool
    """False inside the outage: stored, then re-sent as 0x1203."""


@dataclass(frozen=True, slots=True)
class Warn:
    """One planned 0x1402."""

    t: float
    vehicle: int
    info: WarnInfo


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the platform will send, in simulated time order."""

    reports: list[Report]
    warns: list[Warn]

    def by_plate(self, spec: LowerPlatformSim) -> dict[tuple[str, int], list[Report]]:
        """Reports per (normalised plate, colour)."""
        out: dict[tuple[str, int], list[Report]] = {}
        for r in self.reports:
            out.setdefault(plate_key(spec.plate(r.vehicle), spec.colour), []).append(r)
        return out


def _in(t: float, at: float | None, length: float) -> bool:
    return at is not None and at <= t < at + length


def drive(spec: LowerPlatformSim) -> Plan:
    """The platform's reports and alarms, a pure function of the spec (and its seed)."""
    rng = random.Random(spec.seed)
    total = spec.vehicles + spec.unknown_vehicles
    state = [{"lat": 30.25 + rng.uniform(-0.05, 0.05), "lon": 120.17 + rng.uniform(-0.05, 0.05),
              "heading": rng.uniform(0, 360), "speed": rng.uniform(40, 70), "km": rng.randint(1000, 90000)}
             for _ in range(total)]
    reports: list[Report] = []
    warns: list[Warn] = []
    steps = int(spec.duration_s // spec.interval_s)
    info_id = 1
    for k in range(steps):
        t = k * spec.interval_s
        when = spec.start + timedelta(seconds=t)
        live = not _in(t, spec.outage_at_s, spec.outage_s)
        for i, v in enumerate(state):
            v["heading"] = (v["heading"] + rng.uniform(-20, 20)) % 360
            v["speed"] = min(75.0, max(20.0, v["speed"] + rng.uniform(-8, 8)))
            speed = v["speed"]
            alarm = 0
            if i == 0 and _in(t, spec.emergency_at_s, spec.emergency_s):
                alarm |= EMERGENCY_BIT
            if i == 1 and _in(t, spec.overspeed_at_s, spec.overspeed_s):
                speed, alarm = 96.0, alarm | OVERSPEED_BIT
            km = speed * spec.interval_s / 3600
            v["km"] += km
            rad = math.radians(v["heading"])
            v["lat"] += km * math.cos(rad) / 111.0
            v["lon"] += km * math.sin(rad) / (111.0 * math.cos(math.radians(v["lat"])))
            g = GnssData(False, when, round(v["lon"] * 1e6), round(v["lat"] * 1e6), round(speed), round(speed),
                         int(v["km"]), round(v["heading"]) % 360, 20 + rng.randint(0, 30), _ACC_FIXED, alarm)
            reports.append(Report(t, i, g, live))
        for at, code, vehicle, text in ((spec.emergency_at_s, 0x0003, 0, "紧急按钮"),
                                        (spec.overspeed_at_s, 0x0001, 1, "超速 96 km/h")):
            if at is not None and at <= t < at + spec.interval_s and vehicle < total and live:
                warns.append(Warn(t, vehicle, WarnInfo(1, code, when, info_id, text)))
                info_id += 1
    return Plan(reports, warns)


@dataclass
class SimStats:
    """What a run sent and what the gateway answered."""

    logins: list[int] = field(default_factory=list)
    """0x1002 results, one per login."""
    sent: Counter[str] = field(default_factory=Counter)
    sublink_logins: list[bool] = field(default_factory=list)
    """Whether each 0x9001 carried the current verify code."""
    sublink_heartbeats: int = 0
    heartbeat_replies: int = 0
    logout_replies: int = 0

    def as_dict(self) -> dict[str, Any]:
        """For the JSON summary."""
        return {"logins": self.logins, "sent": dict(self.sent), "sublink_logins": self.sublink_logins,
                "sublink_heartbeats": self.sublink_heartbeats, "heartbeat_replies": self.heartbeat_replies,
                "logout_replies": self.logout_replies}


class LoginRefused(SimulatorError):
    """The gateway answered the login with a non-zero result."""

    def __init__(self, result: int) -> None:
        super().__init__(f"0x1002 result {result}")
        self.result = result


class _MainLink:
    """One main-link connection of the simulator."""

    def __init__(self, spec: LowerPlatformSim, stats: SimStats, verify: list[int]) -> None:
        self.spec, self.stats, self.verify = spec, stats, verify
        self.serial = 0
        self.login_reply: asyncio.Future[tuple[int, int]] | None = None
        self.logout_reply: asyncio.Event = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None

    def frame(self, msg_id: int, body: bytes) -> bytes:
        self.serial += 1
        keys = self.spec.keys
        return encode_frame(msg_id, self.serial, self.spec.access_code, body, keys=keys,
                            key=(self.serial * 2654435761) & 0xFFFFFFFF if keys else 0)

    async def open(self, host: str, port: int, downlink: tuple[str, int]) -> None:
        reader, self.writer = await asyncio.open_connection(host, port)
        self.login_reply = asyncio.get_running_loop().create_future()
        self.reader_task = asyncio.create_task(self._read(reader), name="jt809-sim-main-read")
        self.send(MsgId.UP_CONNECT_REQ, build_login(LoginRequest(self.spec.user_id, self.spec.password,
                                                                 downlink[0], downlink[1])))
        async with asyncio.timeout(10):
            result, code = await self.login_reply
        self.stats.logins.append(result)
        if result != 0:
            raise LoginRefused(result)
        self.verify.append(code)

    def send(self, msg_id: int, body: bytes) -> None:
        assert self.writer is not None
        self.writer.write(self.frame(msg_id, body))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        splitter = Jt809StreamSplitter()
        while data := await reader.read(4096):
            for item in splitter.feed(data):
                if not isinstance(item, bytes):
                    continue
                try:
                    frame = decode_frame(item)
                except Jt809DecodeError:
                    continue
                body = frame.body
                if frame.header.encrypted and self.spec.keys is not None:
                    from edge.jt809.codec import crypt

                    body = crypt(body, frame.header.key, self.spec.keys)
                if frame.header.msg_id == MsgId.UP_CONNECT_RSP and self.login_reply and not self.login_reply.done():
                    self.login_reply.set_result(parse_login_reply(body))
                elif frame.header.msg_id == MsgId.UP_LINKTEST_RSP:
                    self.stats.heartbeat_replies += 1
                elif frame.header.msg_id == MsgId.UP_DISCONNECT_RSP:
                    self.stats.logout_replies += 1
                    self.logout_reply.set()
        if self.login_reply is not None and not self.login_reply.done():
            self.login_reply.set_exception(ConnectionError("gateway closed the main link"))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await self.reader_task


async def _sublink_server(spec: LowerPlatformSim, stats: SimStats, verify: list[int],
                          handlers: set[asyncio.Task[Any]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        splitter = Jt809StreamSplitter()
        serial = 0

        def send(msg_id: int, body: bytes) -> None:
            nonlocal serial
            serial += 1
            writer.write(encode_frame(msg_id, serial, spec.access_code, body))

        try:
            while data := await reader.read(4096):
                for item in splitter.feed(data):
                    if not isinstance(item, bytes):
                        continue
                    try:
                        frame = decode_frame(item)
                    except Jt809DecodeError:
                        continue
                    body = frame.body
                    if frame.header.encrypted and spec.keys is not None:
                        from edge.jt809.codec import crypt

                        body = crypt(body, frame.header.key, spec.keys)
                    if frame.header.msg_id == MsgId.DOWN_CONNECT_REQ:
                        ok = bool(verify) and parse_verify_code(body) == verify[-1]
                        stats.sublink_logins.append(ok)
                        send(MsgId.DOWN_CONNECT_RSP, bytes((0 if ok else 1,)))
                    elif frame.header.msg_id == MsgId.DOWN_LINKTEST_REQ:
                        stats.sublink_heartbeats += 1
                        send(MsgId.DOWN_LINKTEST_RSP, b"")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Ending quietly: Python 3.11's start_server callback logs a cancelled handler as an error.
            pass
        finally:
            writer.close()
            if task is not None:
                handlers.discard(task)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def run(spec: LowerPlatformSim, host: str, port: int, *, hold_s: float = 0.0) -> SimStats:
    """Play ``drive(spec)`` against a gateway; return what was sent and answered.

    Raises:
        LoginRefused: the gateway refused the login.
    """
    stats = SimStats()
    verify: list[int] = []
    plan = drive(spec)
    handlers: set[asyncio.Task[Any]] = set()
    server = await _sublink_server(spec, stats, verify, handlers) if spec.sublink else None
    downlink = server.sockets[0].getsockname()[:2] if server is not None else ("0.0.0.0", 0)
    link = _MainLink(spec, stats, verify)
    try:
        await link.open(host, port, downlink)
        stored: dict[int, list[GnssData]] = {}
        warns = list(plan.warns)
        online = True
        started, last_hb = time.monotonic(), 0.0
        steps: dict[float, list[Report]] = {}
        for r in plan.reports:
            steps.setdefault(r.t, []).append(r)
        for t, reports in steps.items():
            if spec.time_scale > 0:
                await asyncio.sleep(max(0.0, started + t / spec.time_scale - time.monotonic()))
            live = reports[0].live
            if not live and online:
                await link.close()  # the outage: the main link drops
                online = False
                stats.sent["outages"] += 1
            elif live and not online:
                link = _MainLink(spec, stats, verify)
                await link.open(host, port, downlink)
                online = True
                for vehicle, items in stored.items():
                    items.sort(key=lambda g: g.time)
                    for i in range(0, len(items), 5):
                        link.send(MsgId.UP_EXG_MSG, build_envelope(spec.plate(vehicle), spec.colour,
                                                                   DataType.UP_EXG_MSG_HISTORY_LOCATION,
                                                                   build_history(items[i:i + 5])))
                        stats.sent["resent_batches"] += 1
                        stats.sent["resent_positions"] += len(items[i:i + 5])
                stored.clear()
            for r in reports:
                if not r.live:
                    stored.setdefault(r.vehicle, []).append(r.gnss)
                    continue
                link.send(MsgId.UP_EXG_MSG, build_envelope(spec.plate(r.vehicle), spec.colour,
                                                           DataType.UP_EXG_MSG_REAL_LOCATION, build_gnss(r.gnss)))
                stats.sent["positions" if r.vehicle < spec.vehicles else "unknown_positions"] += 1
            while warns and warns[0].t <= t and online:
                w = warns.pop(0)
                link.send(MsgId.UP_WARN_MSG, build_envelope(spec.plate(w.vehicle), spec.colour,
                                                            DataType.UP_WARN_MSG_ADPT_INFO, build_warn(w.info)))
                stats.sent["warns"] += 1
            if online and t - last_hb >= spec.heartbeat_s:
                last_hb = t
                link.send(MsgId.UP_LINKTEST_REQ, b"")
                stats.sent["heartbeats"] += 1
            if online and link.writer is not None:
                await link.writer.drain()
        if online:
            if hold_s > 0:
                await asyncio.sleep(hold_s)
            link.send(MsgId.UP_DISCONNECT_REQ, build_logout(spec.user_id, spec.password))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await link.logout_reply.wait()
    finally:
        await link.close()
        if server is not None:
            server.close()
            # The gateway closes its sub link after the logout; wait for that rather than leave
            # handlers to be cancelled when the loop ends.
            if handlers:
                await asyncio.wait(set(handlers), timeout=2.0)
            for task in set(handlers):
                task.cancel()
            with contextlib.suppress(OSError):
                await server.wait_closed()
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil sim jt809``."""
    d = LowerPlatformSim()
    p = argparse.ArgumentParser(prog="vigil sim jt809", description=__doc__.splitlines()[0])
    p.add_argument("--gateway", default="127.0.0.1:7809", metavar="HOST:PORT")
    p.add_argument("--access-code", type=int, default=d.access_code)
    p.add_argument("--user-id", type=int, default=d.user_id)
    p.add_argument("--password", default=d.password)
    p.add_argument("--vehicles", type=int, default=d.vehicles)
    p.add_argument("--unknown-vehicles", type=int, default=0, help="extra plates the registry does not list")
    p.add_argument("--interval", type=float, default=d.interval_s, metavar="S", help="simulated s between positions")
    p.add_argument("--duration", type=float, default=d.duration_s, metavar="S", help="simulated seconds")
    p.add_argument("--time-scale", type=float, default=60.0, help="simulated seconds per wall second (0: flat out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outage-at", type=float, default=d.outage_at_s, metavar="S", help="negative: no outage")
    p.add_argument("--outage", type=float, default=d.outage_s, metavar="S")
    p.add_argument("--keys", metavar="M1,IA1,IC1", help="encrypt bodies with these cipher constants")
    p.add_argument("--no-sublink", action="store_true", help="do not offer a down-link address")
    p.add_argument("--print-registry", action="store_true", help="print the vehicles as registry YAML and exit")
    p.add_argument("--print-platforms", action="store_true", help="print the platforms-file entry and exit")
    args = p.parse_args(argv)
    keys = Jt809Keys(*(int(x) for x in args.keys.split(","))) if args.keys else None
    spec = replace(d, access_code=args.access_code, user_id=args.user_id, password=args.password,
                   vehicles=args.vehicles, unknown_vehicles=args.unknown_vehicles, interval_s=args.interval,
                   duration_s=args.duration, time_scale=args.time_scale, seed=args.seed,
                   outage_at_s=args.outage_at if args.outage_at is not None and args.outage_at >= 0 else None,
                   outage_s=args.outage, keys=keys, sublink=not args.no_sublink)
    if args.print_registry:
        print(yaml.safe_dump({"devices": spec.registry_entries()}, allow_unicode=True, sort_keys=False), end="")
        return 0
    if args.print_platforms:
        print(yaml.safe_dump({"platforms": [spec.platforms_entry()]}, allow_unicode=True, sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.gateway.rpartition(":")
    started = time.monotonic()
    try:
        stats = asyncio.run(run(spec, host or "127.0.0.1", int(port)))
    except LoginRefused as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), **stats.as_dict()}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
