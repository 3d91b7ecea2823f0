"""HJ 212 data-logger simulator: a fleet of stack CEMS loggers as TCP clients.

A scenario file (``simulators/scenarios/hj212_*.yaml``) says how many loggers, which
pollutants with which typical values, and which faults to inject (exceedances, flat lines,
M/C/D flags, gaps, corrupted frames). Everything is deterministic for a given seed: the same
scenario gives byte-identical frames. The pure ``LoggerModel`` produces the frames on a
simulated clock; ``run_fleet`` connects the loggers and sends them, in real time, scaled time
or as fast as possible; one process holds 10,000 loggers.

Run: ``python -m simulators.hj212_logger --scenario simulators/scenarios/hj212_demo.yaml
--host 127.0.0.1 --port 6000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from edge.hj212.codec import (
    FLAG_ACK,
    VERSION_2005,
    VERSION_2017,
    VERSION_2025,
    ExeRtn,
    Hj212Error,
    Hj212Frame,
    Hj212FrameReader,
    Hj212Packet,
    QnRtn,
    encode_packet,
    execution_reply,
    parse_packet,
    request_reply,
    split_packet,
)
from edge.hj212.codes import factor

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- scenario

class Pollutant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One measured factor of a logger."""

    code: str
    mean: float
    stddev: float = 0.0
    converted: bool = False
    """Also send ``-Zs*`` values, corrected to ``reference_o2`` percent O2."""
    emission: bool = False
    """Also send ``-Cou`` (emitted amount in kg over the interval, from the flue gas flow)."""
    decimals: int = 2


FaultType = Literal["exceedance", "flatline", "flag", "gap", "corrupt", "drop_hourly"]
"""``drop_hourly``: the 2061 records of the window are not sent (2011/2051 are); the logger keeps them
and re-sends them when the platform asks (2061 with BeginTime/EndTime)."""


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An injected fault; applies to ``devices`` (indexes) or a seeded ``fraction`` of loggers."""

    type: FaultType
    code: str | None = None
    start_s: float = 0.0
    duration_s: float = math.inf
    factor: float = 2.0
    """Exceedance: the value is multiplied by this."""
    flag: Literal["M", "C", "D", "F", "S", "T", "B"] = "M"
    probability: float = 0.0
    """Corrupt: share of frames with one byte changed."""
    devices: list[int] | None = None
    fraction: float | None = None


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A simulation: the loggers, their pollutants, timing and faults."""

    name: str
    seed: int = 1
    devices: int = 1
    mn_prefix: str = "5A12"
    password: str = "123456"
    st: str = "31"
    version: Literal[2005, 2017, 2025] = 2017
    time_calibration: bool = False
    """Send a 1013 time calibration request first (the platform answers 9013, then sets the time with 1012)."""
    ack: bool = True
    start: str = "2026-11-26T08:00:00"
    """Simulated start, loggers' local time (ISO 8601 without offset)."""
    duration_s: float = 3600.0
    speed: float = 0.0
    """Simulated seconds per wall second; 0 sends as fast as possible."""
    rtd_interval_s: int = 30
    minute_interval_min: int = 10
    realtime: bool = True
    minute: bool = True
    hourly: bool = True
    reference_o2: float = 6.0
    split_max_cp: int = 0
    """Split packets whose CP is longer than this (0: never)."""
    linger_s: float = 0.0
    """After the last reply, stay connected until the gateway has been silent this long (to answer its commands)."""
    pollutants: list[Pollutant] = msgspec.field(default_factory=list)
    faults: list[Fault] = msgspec.field(default_factory=list)

    def mn(self, index: int) -> str:
        """The MN of logger ``index``: the prefix, zero-padded to 24 characters."""
        return f"{self.mn_prefix}{index:0{max(1, 24 - len(self.mn_prefix))}d}"


def load_scenario(path: str | Path, **overrides: object) -> Scenario:
    """Load and validate a scenario file; ``overrides`` replace top-level keys.

    Raises:
        ValueError: naming the file and the offending key.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        scenario = msgspec.convert(raw, Scenario)
    except (OSError, yaml.YAMLError, msgspec.ValidationError, AttributeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    step, minute_s = scenario.rtd_interval_s, scenario.minute_interval_min * 60
    if step <= 0 or minute_s % step or 3600 % minute_s:
        raise ValueError(f"{path}: rtd_interval_s must divide minute_interval_min, which must divide an hour")
    for i, pollutant in enumerate(scenario.pollutants):
        if factor(pollutant.code) is None:
            raise ValueError(f"{path}: pollutants[{i}].code: {pollutant.code!r} is not in HJ 212 Appendix B")
    return scenario


# ---------------------------------------------------------------------------- pure model

@dataclass(frozen=True, slots=True)
class TimedFrame:
    """A frame to send at a simulated second after the scenario start."""

    at_s: float
    cn: str
    data: bytes
    corrupted: bool = False


@dataclass
class _Window:
    samples: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def add(self, code: str, value: float, flag: str) -> None:
        self.samples.setdefault(code, []).append((value, flag))


class LoggerModel:
    """One simulated logger: yields its frames in time order on the simulated clock. Pure."""

    def __init__(self, scenario: Scenario, index: int) -> None:
        self.scenario = scenario
        self.index = index
        self.mn = scenario.mn(index)
        self._rng = random.Random(f"{scenario.seed}:{index}")
        self._faults = [f for f in scenario.faults if self._applies(f)]
        self._start = datetime.fromisoformat(scenario.start)
        self._level = {p.code: p.mean * (0.9 + 0.2 * self._rng.random()) for p in scenario.pollutants}
        self._noise = dict.fromkeys(self._level, 0.0)
        self._last: dict[str, float] = {}
        self._qn_ms = 0
        self._sent_s = 0.0
        self.hourly: dict[str, list[tuple[str, str]]] = {}
        """Hourly records by DataTime (local ``YYYYMMDDhhmmss``), kept even when not sent (gap, drop_hourly)."""
        self.clock_set: list[str] = []
        """SystemTime values the platform set with 1012."""

    def _applies(self, fault: Fault) -> bool:
        if fault.devices is not None:
            return self.index in fault.devices
        if fault.fraction is not None:
            draw = random.Random(f"{self.scenario.seed}:{fault.type}:{fault.code}:{self.index}").random()
            return draw < fault.fraction
        return True

    def _active(self, kind: FaultType, t: float, code: str | None = None) -> Fault | None:
        for fault in self._faults:
            if fault.type == kind and fault.start_s <= t < fault.start_s + fault.duration_s and (
                    code is None or fault.code in (None, code)):
                return fault
        return None

    def frames(self) -> Iterator[TimedFrame]:
        """Every frame of the scenario for this logger, in time order."""
        sc = self.scenario
        step = sc.rtd_interval_s
        minute_s = sc.minute_interval_min * 60
        minute, hour = _Window(), _Window()
        # Loggers do not all tick on the same second: offset each one inside its interval.
        offset = self._rng.uniform(0, step)
        t = 0.0
        if sc.time_calibration:
            yield self._frame(0.0, "1013", 0.0, [], with_time=False)
        while t < sc.duration_s:
            sample = self._sample(t)
            for code, (value, flag) in sample.items():
                minute.add(code, value, flag)
                hour.add(code, value, flag)
            silent = self._active("gap", t) is not None
            if sc.realtime and not silent:
                yield self._frame(t + offset, "2011", t, self._realtime_cp(sample))
            t += step
            if t % minute_s == 0:
                if sc.minute and not silent:
                    yield self._frame(t + offset, "2051", t - minute_s, self._aggregate_cp(minute, minute_s))
                minute = _Window()
            if t % 3600 == 0:
                fields = self._aggregate_cp(hour, 3600)
                self.hourly[self._local(t - 3600)] = fields
                if sc.hourly and not silent and self._active("drop_hourly", t - 1) is None:
                    yield self._frame(t + offset, "2061", t - 3600, fields)
                hour = _Window()

    def _sample(self, t: float) -> dict[str, tuple[float, str]]:
        out: dict[str, tuple[float, str]] = {}
        for p in self.scenario.pollutants:
            if self._active("flatline", t, p.code) and p.code in self._last:
                value = self._last[p.code]
            else:
                # AR(1) noise around a slow daily swing keeps consecutive values plausible.
                self._noise[p.code] = 0.8 * self._noise[p.code] + self._rng.gauss(0, p.stddev * 0.6)
                daily = 1 + 0.05 * math.sin(2 * math.pi * t / 86400)
                value = max(0.0, self._level[p.code] * daily + self._noise[p.code])
                exceed = self._active("exceedance", t, p.code)
                if exceed is not None:
                    value *= exceed.factor
                value = round(value, p.decimals)
            self._last[p.code] = value
            flagged = self._active("flag", t, p.code)
            out[p.code] = (value, flagged.flag if flagged is not None else "N")
        return out

    def _zs(self, value: float, sample_o2: float | None) -> float:
        if sample_o2 is None or sample_o2 >= 20.5:
            return value
        return value * (21 - self.scenario.reference_o2) / (21 - sample_o2)

    def _realtime_cp(self, sample: dict[str, tuple[float, str]]) -> list[tuple[str, str]]:
        o2 = sample.get("a19001", (None, ""))[0]
        fields: list[tuple[str, str]] = []
        for p in self.scenario.pollutants:
            value, flag = sample[p.code]
            fields.append((f"{p.code}-Rtd", f"{value:.{p.decimals}f}"))
            if p.converted:
                fields.append((f"{p.code}-ZsRtd", f"{self._zs(value, o2):.{p.decimals}f}"))
            fields.append((f"{p.code}-Flag", flag))
        return fields

    def _aggregate_cp(self, window: _Window, seconds: int) -> list[tuple[str, str]]:
        o2_samples = window.samples.get("a19001")
        o2 = sum(v for v, _ in o2_samples) / len(o2_samples) if o2_samples else None
        flow_samples = window.samples.get("a00000")
        flow = sum(v for v, _ in flow_samples) / len(flow_samples) if flow_samples else None
        fields: list[tuple[str, str]] = []
        for p in self.scenario.pollutants:
            samples = window.samples.get(p.code)
            if not samples:
                continue
            values = [v for v, _ in samples]
            avg = sum(values) / len(values)
            d = p.decimals
            fields += [(f"{p.code}-Min", f"{min(values):.{d}f}"), (f"{p.code}-Avg", f"{avg:.{d}f}"),
                       (f"{p.code}-Max", f"{max(values):.{d}f}")]
            if p.converted:
                fields += [(f"{p.code}-ZsMin", f"{self._zs(min(values), o2):.{d}f}"),
                           (f"{p.code}-ZsAvg", f"{self._zs(avg, o2):.{d}f}"),
                           (f"{p.code}-ZsMax", f"{self._zs(max(values), o2):.{d}f}")]
            if p.emission and flow is not None:
                # Flow: m3 of flue gas; pollutants: mg/m3 * m3/s * s -> kg.
                amount = avg * seconds if p.code == "a00000" else avg * flow * seconds / 1e6
                fields.append((f"{p.code}-Cou", f"{amount:.3f}"))
            # Table C.16's note: >= 75 % normal values make the period normal; else the
            # commonest abnormal flag (a logger in maintenance reports M, not D).
            flags = Counter(f for _, f in samples)
            normal = flags.get("N", 0) / len(samples) >= 0.75
            fields.append((f"{p.code}-Flag", "N" if normal else
                           max((f for f in flags if f != "N"), key=lambda f: flags[f])))
        return fields

    def _local(self, data_s: float) -> str:
        return (self._start + timedelta(seconds=data_s)).strftime("%Y%m%d%H%M%S")

    @property
    def version(self) -> int:
        """The Flag version bits this logger sends."""
        return {2005: VERSION_2005, 2017: VERSION_2017, 2025: VERSION_2025}[self.scenario.version]

    def _qn(self, at_s: float) -> str | None:
        sent = self._start + timedelta(seconds=at_s)
        self._qn_ms = (self._qn_ms + 1) % 1000
        self._sent_s = max(self._sent_s, at_s)
        return sent.strftime("%Y%m%d%H%M%S") + f"{self._qn_ms:03d}" if self.version != VERSION_2005 else None

    def _frame(self, at_s: float, cn: str, data_s: float, fields: list[tuple[str, str]],
               with_time: bool = True) -> TimedFrame:
        sc = self.scenario
        version = self.version
        qn = self._qn(at_s)
        # One item per pollutant, as the standard's examples group them.
        items: list[tuple[tuple[str, str], ...]] = [(("DataTime", self._local(data_s)),)] if with_time else []
        items += _items(fields)
        flag = (version << 2) | (FLAG_ACK if sc.ack else 0)
        packet = Hj212Packet(st=sc.st, cn=cn, mn=self.mn, flag=flag, qn=qn, pw=sc.password, cp=tuple(items))
        parts = split_packet(packet, sc.split_max_cp) if sc.split_max_cp else [packet]
        data = b"".join(encode_packet(part) for part in parts)
        corrupt = self._active("corrupt", at_s)
        if corrupt is not None and self._rng.random() < corrupt.probability:
            pos = self._rng.randrange(6, len(data) - 6)
            data = data[:pos] + bytes([data[pos] ^ 0x20 or 0x41]) + data[pos + 1:]
            return TimedFrame(at_s, cn, data, corrupted=True)
        return TimedFrame(at_s, cn, data)

    def answer(self, command: Hj212Packet) -> list[bytes]:
        """The logger's frames in answer to a platform command (Appendix C tables C.3 and C.21).

        1012 sets the clock (9011, 9012); 2061 with BeginTime/EndTime re-sends the kept hourly
        records of that range (9011, one 2061 per hour without Flag bit A, 9012 - ExeRtn 100 when
        none is kept); any other request gets 9011 QnRtn=8 (CN error); a wrong PW gets QnRtn=3.
        """
        if command.pw != self.scenario.password:
            return [request_reply(command, QnRtn.PW_ERROR)]
        if command.cn == "1012":
            system_time = command.get("SystemTime")
            if system_time is None:
                return [request_reply(command, QnRtn.REFUSED)]
            self.clock_set.append(system_time)
            return [request_reply(command, QnRtn.READY), execution_reply(command, ExeRtn.SUCCESS)]
        if command.cn == "2061":
            begin, end = command.get("BeginTime"), command.get("EndTime")
            if begin is None or end is None:
                return [request_reply(command, QnRtn.REFUSED)]
            hours = [t for t in sorted(self.hourly) if begin <= t <= end]
            frames = [request_reply(command, QnRtn.READY)]
            for data_time in hours:
                items = [(("DataTime", data_time),), *_items(self.hourly[data_time])]
                packet = Hj212Packet(st=self.scenario.st, cn="2061", mn=self.mn, flag=self.version << 2,
                                     qn=self._qn(self._sent_s), pw=self.scenario.password, cp=tuple(items))
                frames.append(encode_packet(packet))
            frames.append(execution_reply(command, ExeRtn.SUCCESS if hours else ExeRtn.NO_DATA))
            return frames
        return [request_reply(command, QnRtn.CN_ERROR)]


def _items(fields: list[tuple[str, str]]) -> list[tuple[tuple[str, str], ...]]:
    """Fields grouped into one CP item per pollutant code."""
    items: list[tuple[tuple[str, str], ...]] = []
    current: list[tuple[str, str]] = []
    for name, value in fields:
        if current and current[0][0].split("-")[0] != name.split("-")[0]:
            items.append(tuple(current))
            current = []
        current.append((name, value))
    if current:
        items.append(tuple(current))
    return items


# ---------------------------------------------------------------------------- TCP runner

@dataclass
class FleetStats:
    """What the fleet sent and heard back."""

    connected: int = 0
    connect_failures: int = 0
    frames_sent: int = 0
    corrupted_sent: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    platform_commands: Counter[str] = field(default_factory=Counter)
    """Requests the platform sent (1012, 2061, ...), answered by the loggers."""
    answers: Counter[str] = field(default_factory=Counter)
    """Frames sent in answer to them, by CN (9011, 9012, re-sent 2061)."""


async def _read_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, model: LoggerModel,
                        stats: FleetStats, heard: list[float]) -> None:
    frames = Hj212FrameReader()
    while data := await reader.read(4096):
        for result in frames.feed(data):
            if not isinstance(result, Hj212Frame):
                continue
            try:
                packet = parse_packet(result.segment)
            except Hj212Error:
                continue
            heard[1] = time.monotonic()
            if packet.cn.startswith("9"):
                stats.replies[packet.cn] += 1
                heard[0] += 1
                continue
            # A platform request: answer it as a logger does (9011, data, 9012).
            stats.platform_commands[packet.cn] += 1
            for answer in model.answer(packet):
                stats.answers[parse_packet(answer[6:-6].decode()).cn] += 1
                writer.write(answer)
            await writer.drain()


async def _run_logger(model: LoggerModel, host: str, port: int, stats: FleetStats, wall_start: float,
                      connect_gate: asyncio.Semaphore, hold: asyncio.Event | None) -> None:
    speed = model.scenario.speed
    writer: asyncio.StreamWriter | None = None
    for attempt in range(8):
        try:
            async with connect_gate:
                reader, writer = await asyncio.open_connection(host, port)
            break
        except OSError:
            await asyncio.sleep(min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))
    if writer is None:
        stats.connect_failures += 1
        return
    stats.connected += 1
    heard = [0, time.monotonic()]  # replies heard, when the gateway last sent anything
    expected = 0
    replies = asyncio.create_task(_read_replies(reader, writer, model, stats, heard))
    try:
        for frame in model.frames():
            if speed > 0:
                delay = wall_start + frame.at_s / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            writer.write(frame.data)
            stats.frames_sent += 1
            stats.corrupted_sent += frame.corrupted
            stats.by_command[frame.cn] += 1
            if model.scenario.ack and not frame.corrupted:
                expected += frame.data.count(b"\r\n##") + 1
            await writer.drain()
        # Wait for the gateway's answers (bounded: stop once it has been quiet for 5 s).
        last, quiet_since = -1.0, time.monotonic()
        while heard[0] < expected and time.monotonic() - quiet_since < 5.0:
            if heard[0] != last:
                last, quiet_since = heard[0], time.monotonic()
            await asyncio.sleep(0.05)
        while time.monotonic() - heard[1] < model.scenario.linger_s:
            await asyncio.sleep(0.05)
        if hold is not None:
            await hold.wait()
    except (ConnectionError, OSError):
        stats.disconnects += 1
    finally:
        replies.cancel()
        with contextlib.suppress(BaseException):
            await replies
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run_fleet(scenario: Scenario, host: str, port: int, *, hold: asyncio.Event | None = None,
                    max_connecting: int = 256) -> FleetStats:
    """Connect every logger of the scenario and send its frames; returns what happened.

    With ``hold`` the loggers stay connected after their last frame until it is set (used to
    measure how many connections a gateway holds).
    """
    stats = FleetStats()
    gate = asyncio.Semaphore(max_connecting)
    wall_start = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        for index in range(scenario.devices):
            tasks.create_task(_run_logger(LoggerModel(scenario, index), host, port, stats, wall_start, gate, hold),
                              name=f"hj212-logger-{index}")
    return stats


async def _run_and_hold(scenario: Scenario, host: str, port: int, hold_s: float) -> FleetStats:
    hold = asyncio.Event() if hold_s > 0 else None
    if hold is not None:
        asyncio.get_running_loop().call_later(hold_s, hold.set)
    return await run_fleet(scenario, host, port, hold=hold)


def main(argv: list[str] | None = None) -> int:
    """Command line: run a scenario against a gateway and print what was sent."""
    parser = argparse.ArgumentParser(prog="hj212-logger", description="Simulated HJ 212 data loggers")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6000)
    parser.add_argument("--devices", type=int, help="override the scenario's number of loggers")
    parser.add_argument("--speed", type=float, help="simulated seconds per second (0: as fast as possible)")
    parser.add_argument("--duration", type=float, dest="duration_s", help="simulated seconds")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--hold", type=float, default=0.0,
                        help="keep every connection open until this many seconds after the start")
    parser.add_argument("--dump", action="store_true", help="print logger 0's frames instead of connecting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scenario = load_scenario(args.scenario, devices=args.devices, speed=args.speed,
                                 duration_s=args.duration_s, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dump:
        for frame in LoggerModel(scenario, 0).frames():
            sys.stdout.write(frame.data.decode("utf-8", "replace"))
        return 0
    stats = asyncio.run(_run_and_hold(scenario, args.host, args.port, args.hold))
    print(f"connected {stats.connected}, connect failures {stats.connect_failures}, frames {stats.frames_sent} "
          f"(corrupted {stats.corrupted_sent}), by command {dict(stats.by_command)}, replies {dict(stats.replies)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
