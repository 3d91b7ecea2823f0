"""Device adapters, part 2: protocol devices through the real gateway sessions.

``hj212_feed`` plays a data logger: it builds HJ 212 frames and feeds them, as TCP bytes, to
``edge.hj212.session.Hj212Session`` (with the production registry password lookup), and
publishes what the session returns, plus the retained status the TCP adapter adds.
``jt808_feed`` plays a vehicle terminal against ``edge.jt808.session.Jt808Session`` (with the
production registry lookup): register, authenticate, report, drop, re-authenticate, upload the
blind area. The gateways' replies are read back and checked like a terminal would.
"""

from __future__ import annotations

import itertools
import math
import random
import tempfile
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from broker.contracts import Channel, DeviceStatus, Kind, device_topic, encode
from broker.registry import DeviceRegistry
from scenario.devices import DeviceFeed, Transport, repeat_times
from scenario.spec import ScenarioError, ValueGen, duration, gens, offset

_PERIOD_COMMANDS = frozenset({"2051", "2061", "2031"})


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class _Wire:
    """TCP between a device and a gateway: ordered arrivals with latency and jitter."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.last = -math.inf

    def arrive(self, t: float) -> float:
        tr = self.transport
        a = t + tr.latency + (tr.rng.uniform(0.0, tr.jitter) if tr.jitter else 0.0)
        # TCP keeps a connection's bytes in order: a frame cannot overtake the one before it.
        self.last = max(self.last, a)
        return self.last


# ---------------------------------------------------------------------------- HJ 212

def hj212_frames(spec: dict[str, Any], where: str, epoch: float, rng: random.Random,
                 password: str) -> list[tuple[float, bytes]]:
    """The frames a data logger sends (send time offset, wire bytes), as its ``uploads`` and ``frames`` say."""
    from edge.hj212.codec import FLAG_ACK, VERSION_2005, VERSION_2017, Hj212Packet, encode_frame, encode_packet, split_packet

    mn = spec["id"]
    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    tz: tzinfo = ZoneInfo(str(spec.get("timezone", "Asia/Shanghai")))
    version = VERSION_2005 if int(spec.get("version", 2017)) == 2005 else VERSION_2017
    st = str(spec.get("st", "31"))
    flag = (version << 2) | (FLAG_ACK if spec.get("ack", True) else 0)
    split_max = int(spec.get("split_max_cp", 0))
    frames: list[tuple[float, int, bytes]] = []
    qn_ms = 0
    for i, up in enumerate(spec.get("uploads") or []):
        uw = f"{where}.uploads[{i}]"
        if not isinstance(up, dict) or "cn" not in up:
            raise ScenarioError(f"{uw}: an upload needs cn (and at, or from/every/until)")
        unknown = set(up) - {"cn", "at", "from", "every", "until", "data_time", "values"}
        if unknown:
            raise ScenarioError(f"{uw}: unknown keys {sorted(unknown)}")
        cn = str(up["cn"])
        times = repeat_times(up, uw)
        every = duration(up["every"], f"{uw}.every") if "every" in up else None
        values = gens(up.get("values"), f"{uw}.values")
        data_time = up.get("data_time", "period" if cn in _PERIOD_COMMANDS else "sent")
        if data_time == "period" and every is None:
            raise ScenarioError(f"{uw}.data_time: period needs every")
        shift = 0.0 if data_time in ("sent", "period") else offset(data_time, f"{uw}.data_time")
        span = (times[-1] - times[0]) or 1.0
        for k, t in enumerate(times):
            local = _dt(epoch + t + skew).astimezone(tz)
            if data_time == "period":
                assert every is not None
                midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
                into = (local - midnight).total_seconds()
                data_local = midnight + timedelta(seconds=math.floor(into / every) * every - every)
            else:
                data_local = local + timedelta(seconds=shift)
            cp = _cp(data_local, values, k, (t - times[0]) / span, rng)
            qn_ms = (qn_ms + 1) % 1000
            qn = local.strftime("%Y%m%d%H%M%S") + f"{qn_ms:03d}" if version == VERSION_2017 else None
            packet = Hj212Packet(st=st, cn=cn, mn=mn, flag=flag, qn=qn, pw=password, cp=cp)
            parts = split_packet(packet, split_max) if split_max else [packet]
            frames.append((t, len(frames), b"".join(encode_packet(p) for p in parts)))
    for i, fr in enumerate(spec.get("frames") or []):
        fw = f"{where}.frames[{i}]"
        if not isinstance(fr, dict) or "at" not in fr or ("raw" in fr) == ("segment" in fr):
            raise ScenarioError(f"{fw}: a frame needs at and one of raw (exact bytes) or segment (framed with its CRC)")
        data = str(fr["raw"]).encode("utf-8") if "raw" in fr else encode_frame(str(fr["segment"]))
        frames.append((offset(fr["at"], f"{fw}.at"), len(frames), data))
    return [(t, data) for t, _, data in sorted(frames)]


def hj212_password(spec: dict[str, Any], registry: DeviceRegistry) -> str:
    """The PW the logger sends: the scenario's ``password``, else what the registry holds for it."""
    from edge.hj212.cli import RegistryDevicePasswords

    return str(spec["password"]) if "password" in spec else (RegistryDevicePasswords(registry).lookup(spec["id"]) or "")


def hj212_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random,
               registry: DeviceRegistry) -> DeviceFeed:
    """A data logger's uploads through the real HJ 212 session."""
    from edge.hj212.cli import RegistryDevicePasswords
    from edge.hj212.gateway import STAGE
    from edge.hj212.session import Hj212Counters, Hj212Session, SessionPolicy

    mn = spec["id"]
    feed = DeviceFeed(mn)
    unknown = set(spec) - {"password", "version", "st", "ack", "split_max_cp", "uploads", "frames", "timezone"} - {
        "id", "adapter", "latency", "jitter", "clock_offset", "duplicates", "outages", "unregistered"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    transport = Transport(spec, where, rng, feed, edge_outages=False)
    tz: tzinfo = ZoneInfo(str(spec.get("timezone", "Asia/Shanghai")))
    passwords = RegistryDevicePasswords(registry)
    frames = hj212_frames(spec, where, epoch, rng, hj212_password(spec, registry))

    policy = SessionPolicy(tz=tz)
    counters = Hj212Counters()
    status_topic = device_topic(Kind.EMISSION, mn, Channel.STATUS)
    session: Hj212Session | None = None
    wire = _Wire(transport)
    outages = transport.outages
    pending_backfill: list[tuple[float, bytes]] = []

    def close(at: float) -> None:
        nonlocal session
        if session is None:
            return
        out = session.close()
        for rej in out.rejections:
            feed.rejections[rej.reason.value] += 1
        if mn in session.devices:
            # Hj212Gateway._went_offline: retained offline status when the logger's connection ends.
            transport.raw(at, status_topic, encode(DeviceStatus(ts=_dt(epoch + at), online=False,
                                                                reason="connection closed", agent=STAGE)), True)
        session = None

    def send(t: float, data: bytes) -> None:
        nonlocal session
        arrive = wire.arrive(t)
        if session is None:
            session = Hj212Session(policy, counters, passwords, passwords.site)
        before = set(session.devices)
        out = session.receive(data, arrive)
        for rej in out.rejections:
            feed.rejections[rej.reason.value] += 1
        if len(session.devices) != len(before):
            # Hj212Gateway._came_online: the gateway says online when an MN is first accepted on a connection.
            transport.raw(arrive, status_topic, encode(DeviceStatus(ts=_dt(epoch + arrive), online=True,
                                                                    agent=STAGE)), True)
        for pub in out.publications:
            transport.raw(arrive, pub.topic, pub.payload)
        if session.closing is not None:
            close(arrive)

    oi = 0
    for t, data in frames:
        while oi < len(outages) and outages[oi].end <= t:
            # An outage ended before this frame: reconnect, then send what was kept for back-fill.
            close(outages[oi].start)
            for bt, bdata in pending_backfill:
                send(max(outages[oi].end, bt), bdata)
            pending_backfill.clear()
            oi += 1
        o = transport.outage_at(t)
        if o is not None:
            if o.backfill:
                pending_backfill.append((t, data))
            close(o.start)
            continue
        send(t, data)
        if transport.duplicates and rng.random() < transport.duplicates:
            send(t + 0.5, data)  # no reply seen in time: the logger sends the packet again
    while oi < len(outages):
        close(outages[oi].start)
        for bt, bdata in pending_backfill:
            send(max(outages[oi].end, bt), bdata)
        pending_backfill.clear()
        oi += 1
    return feed


def _cp(data_local: datetime, values: dict[str, ValueGen], index: int, fraction: float,
        rng: random.Random) -> tuple[tuple[tuple[str, str], ...], ...]:
    """CP items: ``DataTime`` first, then one item per pollutant code, as loggers group them."""
    items: list[tuple[tuple[str, str], ...]] = [(("DataTime", data_local.strftime("%Y%m%d%H%M%S")),)]
    current: list[tuple[str, str]] = []
    for name, gen in values.items():
        v = gen.at(index, fraction, rng)
        text = v if isinstance(v, str) else (f"{v:g}" if isinstance(v, float) else str(v))
        if current and current[0][0].split("-")[0] != name.split("-")[0]:
            items.append(tuple(current))
            current = []
        current.append((name, text))
    if current:
        items.append(tuple(current))
    return tuple(items)


# ---------------------------------------------------------------------------- JT/T 808

_EARTH_M_PER_DEG = 111_320.0


def _alarm_mask(raw: Any, where: str) -> int:
    from edge.jt808.session import ALARM_BITS

    by_name = {k.type: bit for bit, k in ALARM_BITS.items()}
    mask = 0
    for a in raw or []:
        if isinstance(a, int):
            bit = a
        elif str(a) in by_name:
            bit = by_name[str(a)]
        else:
            raise ScenarioError(f"{where}.alarms: {a!r} is not an alarm bit name ({sorted(by_name)}) or number")
        if not 0 <= bit < 32:
            raise ScenarioError(f"{where}.alarms: bit {bit} out of range")
        mask |= 1 << bit
    return mask


def jt808_reports(spec: dict[str, Any], where: str, epoch: float, rng: random.Random) -> list[tuple[float, Any]]:
    """The positions a terminal reports (send time offset, ``LocationReport``), segment by segment."""
    from edge.jt808.messages import LocationReport

    skew = offset(spec.get("clock_offset", 0), f"{where}.clock_offset")
    reports: list[tuple[float, LocationReport]] = []
    lon, lat, heading = 120.17, 30.39, 0.0
    for i, seg in enumerate(spec.get("drive") or []):
        sw = f"{where}.drive[{i}]"
        if not isinstance(seg, dict):
            raise ScenarioError(f"{sw}: a mapping is needed")
        unknown = set(seg) - {"from", "at", "until", "every", "speed_kmh", "start", "heading_deg", "path", "ignition",
                              "alarms", "altitude_m", "gnss_fixed"}
        if unknown:
            raise ScenarioError(f"{sw}: unknown keys {sorted(unknown)}")
        times = repeat_times(seg, sw)
        speed = ValueGen(seg.get("speed_kmh", 0), f"{sw}.speed_kmh")
        if "start" in seg:
            lon, lat = float(seg["start"][0]), float(seg["start"][1])
        if "heading_deg" in seg:
            heading = float(seg["heading_deg"])
        path = [(float(p[1]), float(p[0])) for p in seg.get("path") or []]
        if path:
            lat, lon = path[0]
        mask = _alarm_mask(seg.get("alarms"), sw)
        ignition = bool(seg.get("ignition", True))
        fixed = 2 if seg.get("gnss_fixed", True) else 0  # status bit 1: a GNSS fix (vehicles team)
        altitude = int(seg.get("altitude_m", 20))
        travelled = 0.0
        prev_t = times[0]
        span = (times[-1] - times[0]) or 1.0
        for k, t in enumerate(times):
            v = max(0.0, float(speed.at(k, (t - times[0]) / span, rng)))
            step = v / 3.6 * (t - prev_t)
            prev_t = t
            if path:
                travelled += step
                (lat, lon), heading_i = _along(path, travelled)
                heading = float(heading_i)
            else:
                lat += step * math.cos(math.radians(heading)) / _EARTH_M_PER_DEG
                lon += step * math.sin(math.radians(heading)) / (_EARTH_M_PER_DEG * math.cos(math.radians(lat)))
            status = (1 if ignition else 0) | fixed
            ts = _dt(epoch + t + skew).replace(microsecond=0)
            reports.append((t, LocationReport(mask, status, round(lat, 6), round(lon, 6), altitude, round(v, 1),
                                              int(heading) % 360, ts, {})))
    reports.sort(key=lambda r: r[0])
    return reports


def jt808_register_request(spec: dict[str, Any], registry: DeviceRegistry, version: Any) -> bytes:
    """The 0x0100 body a terminal sends: the scenario's ``registration``, else its identity on file."""
    from edge.jt808.messages import RegisterRequest, build_register

    dev = registry.device(spec["id"])
    on_file = getattr(dev, "jt808", None) if dev is not None else None
    ident = dict(spec.get("registration") or {})
    ident.setdefault("manufacturer", getattr(on_file, "manufacturer", "VIGIL"))
    ident.setdefault("model", getattr(on_file, "model", "SIM-808"))
    ident.setdefault("terminal_id", getattr(on_file, "terminal_id", str(spec["id"])[-7:]))
    ident.setdefault("plate_colour", getattr(on_file, "plate_colour", 2))
    ident.setdefault("plate", str(spec.get("plate", getattr(on_file, "plate", ""))))
    req = RegisterRequest(33, 100, str(ident["manufacturer"]), str(ident["model"]), str(ident["terminal_id"]),
                          int(ident["plate_colour"]), str(ident["plate"]))
    return build_register(req, version)


def jt808_feed(spec: dict[str, Any], where: str, epoch: float, rng: random.Random, registry: DeviceRegistry,
               registry_file: Path) -> DeviceFeed:
    """A vehicle terminal's conversation with the real JT/T 808 session."""
    from edge.jt808.alarms import MemoryAlarmStore
    from edge.jt808.codec import FrameSplitter, ProtocolVersion, decode_frame, encode_frame
    from edge.jt808.messages import (
        AuthRequest,
        BatchKind,
        MsgId,
        build_auth,
        build_batch_location,
        build_location,
        parse_general_reply,
        parse_register_reply,
    )
    from edge.jt808.registry import RegistryTerminals
    from edge.jt808.session import Jt808Platform, Jt808Session

    device_id = spec["id"]
    feed = DeviceFeed(device_id)
    unknown = set(spec) - {"phone", "protocol", "plate", "registration", "connect_at", "drive", "logout_at",
                           "drivers", "gateway_restarts"} - {
        "id", "adapter", "latency", "jitter", "clock_offset", "duplicates", "outages", "unregistered"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    transport = Transport(spec, where, rng, feed, edge_outages=False)
    phone = str(spec.get("phone", device_id))
    version = ProtocolVersion.V2019 if int(spec.get("protocol", 2013)) == 2019 else ProtocolVersion.V2013
    register_request = jt808_register_request(spec, registry, version)

    reports = jt808_reports(spec, where, epoch, rng)

    clock = [0.0]
    """The gateway's wall clock (offset): the arrival time of the bytes it is handling."""
    platform = Jt808Platform(RegistryTerminals(str(registry_file)), wall_clock=lambda: _dt(epoch + clock[0]),
                             alarm_store=MemoryAlarmStore())
    # Gateway restarts: sessions are lost; registrations and open alarms persist (the gateway's --data-dir).
    gateway_restarts = sorted(offset(r, f"{where}.gateway_restarts") for r in spec.get("gateway_restarts") or [])
    wire = _Wire(transport)
    session: Jt808Session | None = None
    auth_code: list[str | None] = [None]
    serial = [0]
    splitter = FrameSplitter()

    def frame(msg_id: int, body: bytes) -> bytes:
        serial[0] = (serial[0] + 1) & 0xFFFF
        return encode_frame(msg_id, phone, serial[0], body, version=version)

    def deliver(arrive: float, out: Any) -> list[Any]:
        for rej in out.rejections:
            feed.rejections[rej.reason.value] += 1
        for pub in out.publications:
            transport.raw(arrive, pub.topic, pub.payload, pub.retain)
        replies = []
        for chunk in out.replies:
            for item in splitter.feed(chunk):
                if isinstance(item, bytes | bytearray):
                    replies.append(decode_frame(bytes(item)))
        return replies

    def exchange(t: float, data: bytes) -> list[Any]:
        nonlocal session
        arrive = wire.arrive(t)
        clock[0] = arrive
        if session is None:
            session = platform.new_session(f"10.0.0.8:{40000 + int(rng.random() * 20000)}")
        out = session.feed(data, arrive)
        replies = deliver(arrive, out)
        if out.close:
            drop(arrive, "closed by the gateway")
        return replies

    def drop(at: float, why: str) -> None:
        nonlocal session
        if session is not None:
            clock[0] = at
            deliver(at, session.close(why))
            session = None

    def restart_gateway(at: float) -> None:
        nonlocal platform
        drop(at, "gateway shutdown")
        platform = Jt808Platform(RegistryTerminals(str(registry_file)), platform.registrations,
                                 wall_clock=lambda: _dt(epoch + clock[0]), alarm_store=platform.alarms.store)

    def refused(what: str) -> None:
        # A refusal the gateway counted fails the run through expect.rejected unless it is declared.
        (feed.notes if sum(feed.rejections.values()) else feed.problems).append(what)

    def connect(t: float) -> bool:
        if auth_code[0] is None:
            got = [r for r in exchange(t, frame(MsgId.REGISTER, register_request))
                   if r.header.msg_id == MsgId.REGISTER_REPLY]
            reply = parse_register_reply(got[0].body) if got else None
            if reply is None or reply.result != 0:
                refused(f"{device_id}: registration refused at {t:g}s (result {reply.result if reply else 'none'})")
                drop(t, "registration refused")
                return False
            auth_code[0] = reply.auth_code
        got = [r for r in exchange(t, frame(MsgId.AUTHENTICATE,
                                            build_auth(AuthRequest(auth_code[0] or "", "860000000000001", "sim-1.0"),
                                                       version)))
               if r.header.msg_id == MsgId.PLATFORM_GENERAL_REPLY]
        result = parse_general_reply(got[0].body).result if got else None
        if result != 0:
            refused(f"{device_id}: authentication refused at {t:g}s (result {result})")
            drop(t, "authentication refused")
            return False
        return True

    outages = transport.outages
    connected = False
    failed = False
    backlog: list[Any] = []
    start_at = offset(spec["connect_at"], f"{where}.connect_at") if "connect_at" in spec else (
        reports[0][0] if reports else 0.0)
    oi = 0
    drivers = _driver_frames(spec.get("drivers") or [], f"{where}.drivers", epoch,
                             offset(spec.get("clock_offset", 0), f"{where}.clock_offset"), version)
    di = 0

    def reconnect_after(o: Any) -> None:
        nonlocal connected, failed
        if not connect(o.end):
            failed = True
            return
        connected = True
        for n in range(0, len(backlog), 20):
            exchange(o.end, frame(MsgId.BATCH_LOCATION, build_batch_location(backlog[n:n + 20], BatchKind.BLIND_AREA)))
        backlog.clear()

    if not reports and "connect_at" in spec:
        connected = connect(start_at)
    for t, report in reports:
        if failed:
            break
        while oi < len(outages) and outages[oi].end <= t:
            if outages[oi].start >= start_at:
                drop(outages[oi].start, "connection closed")
                reconnect_after(outages[oi])
            oi += 1
        while gateway_restarts and gateway_restarts[0] <= t:
            restart_gateway(gateway_restarts.pop(0))
            connected = False  # the terminal reconnects and authenticates with the code it has
        o = transport.outage_at(t)
        if o is not None:
            if connected:
                drop(o.start, "connection closed")
                connected = False
            if o.backfill:
                backlog.append(report)
            continue
        if not connected:
            connected = connect(max(t, start_at))
            if not connected:
                failed = True
                break
        while di < len(drivers) and drivers[di][0] <= t:
            exchange(drivers[di][0], frame(0x0702, drivers[di][1]))  # driver IC card (vehicles team)
            di += 1
        data = frame(MsgId.LOCATION, build_location(report))
        exchange(t, data)
        if transport.duplicates and rng.random() < transport.duplicates:
            exchange(t + 0.5, data)  # the reply was lost: the terminal sends the report again
    if "logout_at" in spec and connected and not failed:
        at = offset(spec["logout_at"], f"{where}.logout_at")
        exchange(at, frame(MsgId.LOGOUT, b""))
        drop(at, "connection closed")
    return feed


def _driver_frames(raw: Any, where: str, epoch: float, skew: float, version: Any) -> list[tuple[float, bytes]]:
    """``drivers: [{at, sign: in|out, id (certificate), name, authority, card_result}]`` as 0x0702 bodies.

    Sent on the connection just before the first position report at or after ``at``.
    """
    from edge.jt808.commands import DriverIdentity, build_driver_identity

    out = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict) or set(d) - {"at", "sign", "id", "name", "authority", "card_result", "valid_until"}:
            raise ScenarioError(f"{where}[{i}]: keys at, sign (in/out), id, name, authority, card_result, valid_until")
        at = offset(d.get("at", 0), f"{where}[{i}].at")
        ident = DriverIdentity(str(d.get("sign", "in")) == "in", _dt(epoch + at + skew).replace(microsecond=0),
                               int(d.get("card_result", 0)), str(d.get("name", "")), str(d.get("id", "")),
                               str(d.get("authority", "杭州市道路运输管理局")), str(d.get("valid_until", "2030-12-31")))
        out.append((at, build_driver_identity(ident, version)))
    return sorted(out, key=lambda x: x[0])


def _along(path: list[tuple[float, float]], d: float) -> tuple[tuple[float, float], int]:
    """Position and heading ``d`` metres along a (lat, lon) polyline, stopping at its end."""
    from simulators.jt808_terminal import bearing_deg, distance_m

    if len(path) == 1:
        return path[0], 0
    for a, b in itertools.pairwise(path):
        seg = distance_m(a, b)
        if d <= seg or b == path[-1]:
            f = min(1.0, d / seg) if seg else 1.0
            return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f), bearing_deg(a, b)
        d -= seg
    return path[-1], 0


def write_registry(raw: dict[str, Any], folder: Path) -> Path:
    """The scenario's registry as a file (the JT/T 808 gateway reads its registry from a file)."""
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for files the production code reads (the registry)."""
    return tempfile.TemporaryDirectory(prefix="vigil-scenario-")
