"""Fault case: the real HJ 212 gateway (`vigil edge hj212 --data-dir`) killed with SIGKILL mid-stream.

Four in-test data loggers speak HJ 212-2017 over real TCP to the real gateway process, which
publishes through its on-disk outbox to a real Mosquitto; `vigil run` (rules, alerting, storage)
writes to a real InfluxDB. Each logger asks for a 9014 on every real-time packet (Flag bit A) and
keeps a packet until its 9014 arrives: HJ 212 has no other application-level acknowledgement, so a
packet on the wire (or in the dead gateway's socket buffer) when the gateway dies is lost unless
the logger sends it again. The loggers do what the standard's request/reply rules ask (re-send
what was not answered), and send what they measured while the gateway was away once it is back.

Counted: packets each logger produced, how many were unanswered when the connection dropped (in
flight), which landed in InfluxDB (by MN and DataTime), notifications received twice. The
platform's view of the outage: the gateway's MQTT last will ("offline") on
``vigil/v1/gateways/{name}/status`` and, where a human must act, the per-logger absence alert
(the emission pack's ``emission_missing_data`` rule, 15 min in production, 3 s here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broker.mosquitto import free_port
from broker.mqtt import Message, MqttClient
from edge.hj212.codec import Hj212Frame, Hj212FrameReader, encode_frame, parse_packet
from storage.localservers import InfluxdProcess
from tests.faults.harness import World, wait_for, world
from tests.support.child import ChildProcess

LOGGERS = 4
PACKETS = 150
"""Real-time (2011) packets per logger: DataTime one second apart, 6 SO2 episodes each."""
RATE = 30.0
"""Packets per second per logger."""
EPISODE = 25
ABSENCE_S = 3
MNS = [f"010000A8900016F00016{i:04X}" for i in range(1, LOGGERS + 1)]
LOCAL = ZoneInfo("Asia/Shanghai")
RULES = f"""\
rules:
  - name: fault_so2_high
    kind: emission
    severity: major
    condition: "a21026.Rtd > 100"
    summary: "二氧化硫超标 {{device_id}} 第 {{ep}} 次"
    summary_en: "so2 high {{device_id}} episode {{ep}}"
  # The emission pack's emission_missing_data with a test-sized window (15 min in the pack).
  - name: fault_logger_silent
    kind: emission
    severity: major
    condition: {{absence: {ABSENCE_S}s}}
    summary: "排放监测数据缺失 {{device_id}}"
    summary_en: "logger silent {{device_id}}"
"""


@dataclass
class Logger:
    """One HJ 212-2017 data logger over TCP: 2011 packets with Flag=5 (2017 + A), kept until their 9014."""

    index: int
    base: datetime
    produced: int = 0
    sent: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    connections: int = 0
    writes: int = 0
    resent: int = 0
    in_flight_at_drop: list[int] = field(default_factory=list)
    _qn: dict[str, int] = field(default_factory=dict)

    def qn(self, i: int) -> str:
        return f"{self.data_time(i).astimezone(LOCAL):%Y%m%d%H%M%S}{i % 1000:03d}"

    @property
    def mn(self) -> str:
        return MNS[self.index]

    def data_time(self, i: int) -> datetime:
        return self.base + timedelta(seconds=i)

    def frame(self, i: int) -> bytes:
        local = self.data_time(i).astimezone(LOCAL)
        qn = self.qn(i)
        self._qn[qn] = i
        so2 = 150.0 if 8 <= i % EPISODE < 16 else 20.0 + (i % 7)
        segment = (f"QN={qn};ST=22;CN=2011;PW=123456;MN={self.mn};Flag=5;CP=&&DataTime={local:%Y%m%d%H%M%S};"
                   f"a21026-Rtd={so2:.1f},a21026-Flag=N;a19001-Rtd=8.5,a19001-Flag=N;ep={i // EPISODE}&&")
        return encode_frame(segment)

    def unacked(self) -> list[int]:
        return sorted(self.sent - self.acked)

    async def produce(self) -> None:
        """The logger measures on its own schedule, connected or not."""
        for _ in range(PACKETS):
            self.produced += 1
            await asyncio.sleep(1.0 / RATE)

    async def run(self, port: int, done: asyncio.Event) -> None:
        """Connect (again and again), re-send what was not answered, send the rest, until all are answered."""
        producer = asyncio.create_task(self.produce())
        try:
            while len(self.acked) < PACKETS and not done.is_set():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                self.connections += 1
                try:
                    await self._session(reader, writer)
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    self.in_flight_at_drop.append(len(self.unacked()))
                    writer.close()
        finally:
            producer.cancel()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lost = asyncio.Event()
        replies = asyncio.create_task(self._read(reader, lost))
        try:
            # First what the last connection left unanswered (in order), then what is new.
            backlog = self.unacked()
            self.resent += len(backlog) if self.connections > 1 else 0
            for i in backlog:
                writer.write(self.frame(i))
                self.writes += 1
            last_retry = time.monotonic()
            next_new = max(self.sent, default=-1) + 1
            while not lost.is_set() and len(self.acked) < PACKETS:
                while next_new < self.produced:
                    writer.write(self.frame(next_new))
                    self.sent.add(next_new)
                    self.writes += 1
                    next_new += 1
                await writer.drain()
                if next_new >= PACKETS and time.monotonic() - last_retry > 3.0:
                    # The standard's timeout re-send for anything still unanswered on a live connection.
                    for i in self.unacked():
                        writer.write(self.frame(i))
                        self.writes += 1
                    last_retry = time.monotonic()
                await asyncio.sleep(0.02)
        finally:
            replies.cancel()
            await asyncio.gather(replies, return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader, lost: asyncio.Event) -> None:
        frames = Hj212FrameReader()
        try:
            while data := await reader.read(4096):
                for result in frames.feed(data):
                    if isinstance(result, Hj212Frame):
                        packet = parse_packet(result.segment)
                        if packet.cn == "9014" and packet.qn in self._qn:
                            self.acked.add(self._qn[packet.qn])
        except OSError:
            pass
        finally:
            lost.set()


class GatewayProcess(ChildProcess):
    """``vigil edge hj212`` as a child process with a fixed port and a store-and-forward folder."""

    def __init__(self, w: World, port: int) -> None:
        super().__init__(w.tmp / "hj212-gw.log")
        self.w, self.port = w, port
        self.data_dir = w.tmp / "hj212-gw"

    def start(self) -> None:
        cmd = ["edge", "hj212", "--mqtt", self.w.broker.url,
               "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), "--gateway-name", "hj212-f",
               "--accept-unknown-devices", "--no-downlink"]
        self.launch_vigil(cmd)


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdProcess]:
    proc = InfluxdProcess(tmp_path_factory.mktemp("influx"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def w(tmp_path: Path, influx: InfluxdProcess) -> AsyncIterator[World]:
    async with world(tmp_path, influx, "hj212_gateway_kill") as wld:
        yield wld


def notified(w: World, kind: str, what: str) -> set[tuple[str, int]]:
    """(MN, episode) of this test's notifications of ``kind`` (Alert / Resolved) about ``what``."""
    out = set()
    for p in w.receiver.on("duty"):
        m = re.search(rf"\] (\w+): {what} (\w+)(?: episode (\d+))?", p["title"])
        if m and m.group(1) == kind:
            out.add((m.group(2), int(m.group(3) or -1)))
    return out


def outbox_payloads(path: Path) -> list[bytes]:
    """Payloads still queued in a (dead) gateway's outbox."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [bytes(row[0]) for row in db.execute("SELECT payload FROM outbox")]
    finally:
        db.close()


def stored(w: World) -> set[tuple[str, int]]:
    """(MN, DataTime in epoch seconds) of every real-time packet in InfluxDB."""
    rows = w.influxql('SELECT "a21026.Rtd" FROM "telemetry_emission" GROUP BY "device"')
    return {(r["device"], int(r["time"]) // 1000) for r in rows if r.get("a21026.Rtd") is not None}


async def test_hj212_gateway_kill_9(w: World) -> None:
    w.write_config(receivers=[{"name": "duty", "urls": [w.receiver.url("duty")]}], route_receivers=["duty"],
                   rules_text=RULES)
    await w.start_platform()
    statuses: list[tuple[str, dict[str, object]]] = []

    def on_status(batch: list[Message]) -> None:
        statuses.extend((m.topic, json.loads(m.payload)) for m in batch)

    watcher = MqttClient(w.broker.url, "faults-gw-watch", clean_start=True)
    watcher.subscribe("vigil/v1/gateways/+/status", on_status)
    await watcher.start()
    gw = GatewayProcess(w, free_port())
    gw.start()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    loggers = [Logger(i, base) for i in range(LOGGERS)]
    done = asyncio.Event()
    tasks = [asyncio.create_task(lg.run(gw.port, done)) for lg in loggers]
    try:
        await wait_for(lambda: all(len(lg.acked) > PACKETS // 3 for lg in loggers), 60,
                       "a third of each logger's packets answered")
        # Kill while packets are on the wire (written, not yet answered) when the timing allows it.
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: sum(len(lg.unacked()) for lg in loggers) >= 2, 2, "packets in flight", step=0.001)
        gw.kill()
        killed_at = time.monotonic()
        # The broker fires the dead gateway's last will; the platform raises its absence alert per logger.
        await wait_for(lambda: any(t.endswith("/hj212-f/status") and not s.get("online") for t, s in statuses), 20,
                       "the gateway's last will (offline)")
        silent = {(mn, -1) for mn in MNS}
        await wait_for(lambda: silent <= notified(w, "Alert", "logger silent"), 30,
                       lambda: f"a logger-silent alert per logger; got {notified(w, 'Alert', 'logger silent')}")
        outage = time.monotonic() - killed_at
        in_flight = [lg.in_flight_at_drop[0] if lg.in_flight_at_drop else 0 for lg in loggers]
        # Which of the unanswered packets had the gateway made durable (outbox, or already published and
        # stored) before it died, and which were only in its socket: those only the logger's re-send saves.
        kept_before = await asyncio.to_thread(stored, w)
        queued = await asyncio.to_thread(outbox_payloads, gw.data_dir / "outbox.sqlite3")
        unanswered = [(lg, i) for lg in loggers for i in lg.unacked()]
        only_on_wire = [(lg.mn, i) for lg, i in unanswered
                        if (lg.mn, int(lg.data_time(i).timestamp())) not in kept_before
                        and not any(lg.qn(i).encode() in p for p in queued)]
        gw.start()  # same outbox folder: it replays what the broker had not acknowledged
        await wait_for(lambda: all(len(lg.acked) == PACKETS for lg in loggers), 60,
                       lambda: f"every packet answered: {[len(lg.acked) for lg in loggers]}")
        sent = {(lg.mn, int(lg.data_time(i).timestamp())) for lg in loggers for i in range(PACKETS)}
        landed: set[tuple[str, int]] = set()

        def all_landed() -> bool:
            nonlocal landed
            landed = stored(w)
            return sent <= landed

        await wait_for(all_landed, 60, lambda: f"every packet in InfluxDB; missing {len(sent - landed)}", step=0.5)
        lost = sent - landed
        # Every SO2 episode was told exactly once (resolved notice; the firing one unless it fired and cleared
        # inside one batch), and every logger-silent alert resolved when its logger came back.
        episodes = {(lg.mn, e) for lg in loggers for e in range(PACKETS // EPISODE)}
        await wait_for(lambda: episodes <= notified(w, "Resolved", "so2 high"), 60,
                       lambda: f"a resolved notice per episode; missing "
                               f"{sorted(episodes - notified(w, 'Resolved', 'so2 high'))[:5]}")
        await wait_for(lambda: silent <= notified(w, "Resolved", "logger silent"), 30, "the absence alerts resolved")
        assert notified(w, "Alert", "so2 high") <= episodes
        await asyncio.sleep(1.0)  # anything sent twice would arrive now
        dups = w.receiver.duplicates()
        assert w.platform is not None and w.platform.unexpected_tracebacks() == [], w.platform.log_tail()
        print(f"\n[fault] HJ 212 gateway kill -9: loggers sent {len(sent)} packets, stored {len(sent & landed)}, "
              f"lost {len(lost)}, duplicate notifications {len(dups)}; unanswered at the kill {sum(in_flight)} "
              f"(per logger {in_flight}; not yet durable in the gateway, so saved only by the logger's re-send: "
              f"{len(only_on_wire)}), re-sent after reconnect {sum(lg.resent for lg in loggers)}, "
              f"frames written {sum(lg.writes for lg in loggers)}; outage {outage:.1f} s; "
              f"notifications {len(w.receiver.on('duty'))}")
        assert lost == set() and len(sent) == LOGGERS * PACKETS
        assert dups == []
        assert all(lg.connections >= 2 for lg in loggers)  # each logger reconnected to the restarted gateway
        assert any(t.endswith("/hj212-f/status") and s.get("online") for t, s in statuses[-3:])  # back online
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await watcher.stop()
        await asyncio.to_thread(gw.stop)
