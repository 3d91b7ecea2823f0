"""The elevator agent and the fleet against a real Mosquitto: contract messages arrive, counts are exact."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.contracts import DeviceEvent, DeviceStatus, Telemetry, decode_device_message
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from edge.elevator.agent import AGENT_NAME, ElevatorAgent, ElevatorMonitor
from edge.elevator.cli import build_parser, open_agent, run_agent, run_agents
from edge.elevator.modbus import ModbusTcpBoxDriver
from edge.elevator.signals import ElevatorGeometry
from edge.runtime import EdgeIdentity, EdgeLink
from simulators.elevator import ElevatorScenario, ElevatorSimulation, ElevatorSpec, FaultSpec, FaultType
from simulators.elevator_box import SimulatedBoxDriver, run_box
from simulators.elevator_box import build_parser as box_parser
from simulators.elevator_box import main as box_main
from simulators.elevator_fleet import SimulatedBoxFleet, run_fleet


class DeviceCollector:
    """Subscribes to every device topic and validates what arrives the way the platform does."""

    def __init__(self, url: str) -> None:
        self.messages: list[tuple[str, str, object]] = []
        self.client = MqttClient(url, f"collector-{uuid.uuid4().hex[:8]}", backoff_min=0.05, backoff_max=0.5)
        self.client.subscribe("vigil/v1/elevator/#", self._on)

    def _on(self, batch: list[Message]) -> None:
        for m in batch:
            msg = decode_device_message(m.topic, m.payload)
            self.messages.append((msg.device_id, msg.channel.value, msg.payload))

    def of(self, channel: str) -> list[object]:
        return [p for _, c, p in self.messages if c == channel]


TRAPPED = ElevatorScenario(
    name="trapped-fast", seed=7, duration_s=60, elevator=ElevatorSpec(floors=8), passengers_per_min=0,
    faults=[FaultSpec(type=FaultType.TRAPPED_BETWEEN_FLOORS, at_s=2, duration_s=20)],
)


async def test_agent_publishes_telemetry_and_trapped_events_across_a_broker_outage(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    sub = DeviceCollector(mosquitto.url)
    await sub.client.start()
    driver = SimulatedBoxDriver.from_scenario(TRAPPED, time_scale=20.0)
    base = time.time()
    monitor = ElevatorMonitor("elev-it", driver.geometry)
    link = EdgeLink(mosquitto.url, EdgeIdentity.for_device("elevator", "elev-it", agent=AGENT_NAME),
                    tmp_path / "edge", backoff_min=0.05, backoff_max=0.3)
    # Detector timings follow simulated time, so the 10 s trapped threshold passes in half a second.
    agent = ElevatorAgent("elev-it", driver, link, monitor, sample_hz=50, clock=lambda: base + driver.simulation.t)
    await link.start()
    assert await link.wait_connected(5)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(20):
            while "trapped_passenger" not in monitor.active_events:
                await asyncio.sleep(0.02)
        await asyncio.to_thread(mosquitto.stop)  # the rescue happens while the broker is away
        async with asyncio.timeout(20):
            while "trapped_passenger" in monitor.active_events:
                await asyncio.sleep(0.02)
        assert len(link.outbox) > 0
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(20):
            await link.flush()
            while not any(isinstance(e, DeviceEvent) and e.type == "trapped_passenger" and e.state == "end"
                          for e in sub.of("event")):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.stop()
        await sub.client.stop()

    events = [e for e in sub.of("event") if isinstance(e, DeviceEvent)]
    # At-least-once delivery: a start published just before the broker went away may arrive again from
    # the outbox after it returns (same event id); consumers key events by id, so count each once.
    seen: set[tuple[str | None, str]] = set()
    trapped = []
    for e in events:
        if e.type == "trapped_passenger" and (e.event_id, e.state) not in seen:
            seen.add((e.event_id, e.state))
            trapped.append(e)
    assert [e.state for e in trapped][:2] == ["start", "end"]
    assert trapped[0].event_id == trapped[1].event_id and trapped[0].data["where"] == "between_floors"
    assert trapped[0].severity is not None and trapped[0].severity.value == "critical"
    assert "stopped_outside_door_zone" in {e.type for e in events}
    telemetry = [t for t in sub.of("telemetry") if isinstance(t, Telemetry)]
    seqs = [t.seq for t in telemetry if t.seq is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == agent.counters["telemetry"]  # none lost, in order
    assert any(t.metrics["door_zone"] is False and t.metrics["speed_mps"] == 0 for t in telemetry)
    statuses = [s for s in sub.of("status") if isinstance(s, DeviceStatus)]
    assert statuses and statuses[0].agent == AGENT_NAME


async def test_cli_entry_runs_a_simulated_box(mosquitto: MosquittoProcess, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sub = DeviceCollector(mosquitto.url)
    await sub.client.start()
    code = await asyncio.to_thread(box_main, [  # `vigil sim elevator-box`: edge's agent on a simulated box
        "--device-id", "elev-cli", "--mqtt", mosquitto.url, "--scenario", "normal", "--time-scale", "5",
        "--duration", "1.5", "--data-dir", str(tmp_path / "cli"), "--log-level", "WARNING"])
    assert code == 0
    async with asyncio.timeout(5):
        while not any(isinstance(s, DeviceStatus) and s.reason == "shutdown" for s in sub.of("status")):
            await asyncio.sleep(0.02)
    await sub.client.stop()
    assert {d for d, _, _ in sub.messages} == {"elev-cli"}
    assert len(sub.of("telemetry")) >= 2
    assert await run_agent(build_parser().parse_args(["--device-id", "x", "--simulate", "normal"])) == 2
    assert "vigil sim elevator-box" in capsys.readouterr().err  # edge knows no simulator: it says where it went
    assert await run_box(box_parser().parse_args(["--device-id", "x", "--scenario", "no_such_scenario"])) == 2
    assert await run_agent(build_parser().parse_args(["--device-id", "x"])) == 2  # no box given
    assert await run_agent(build_parser().parse_args(["--device-id", "x", "--modbus", "box:notaport"])) == 2


async def test_many_agents_on_one_loop_read_the_demo_box_fleet(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """The demo's elevator path: simulated boxes, edge's agents (monitor + outbox link), faults renewed per cycle."""
    sub = DeviceCollector(mosquitto.url)
    await sub.client.start()
    ids = ["elev-a", "elev-b", "elev-c", "elev-d"]
    # 20 simulated seconds per real second: a 60 s cycle's faults act within about 3 s.
    fleet = SimulatedBoxFleet(ids, seed=3, fault_fraction=1.0, cycle_s=60, time_scale=20.0)
    base = time.time()

    def sim_clock(box: SimulatedBoxDriver) -> Callable[[], float]:
        return lambda: base + box.simulation.t  # detector timings follow simulated time

    agents = [open_agent(i, fleet.boxes[i], fleet.boxes[i].geometry, mosquitto.url, tmp_path / i, sample_hz=20,
                         clock=sim_clock(fleet.boxes[i])) for i in ids]
    runner = asyncio.create_task(run_agents(agents))

    def events(after: int = 0) -> list[DeviceEvent]:
        return [p for _, c, p in sub.messages[after:] if c == "event" and isinstance(p, DeviceEvent)]

    try:
        async with asyncio.timeout(30):
            while len({e.event_id for e in events() if e.state == "end"}) < 3:
                await asyncio.sleep(0.05)
        mark = len(sub.messages)
        assert fleet.renew_faults() == ids
        async with asyncio.timeout(30):
            while not any(e.state == "start" for e in events(mark)):
                await asyncio.sleep(0.05)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)  # stops every link: outboxes delivered
    await asyncio.sleep(0.3)
    await sub.client.stop()
    for agent in agents:
        mine = [p for d, c, p in sub.messages if d == agent.device_id and c == "telemetry" and isinstance(p, Telemetry)]
        assert [t.seq for t in mine] == list(range(1, agent.counters["telemetry"] + 1))  # all of them, in order
        statuses = [p for d, c, p in sub.messages if d == agent.device_id and isinstance(p, DeviceStatus)]
        assert statuses[0].agent == AGENT_NAME and statuses[-1].reason == "shutdown"
    assert len({d for d, c, _ in sub.messages if c == "event"}) >= 3  # faults on several boxes, one loop
    assert {e.state for e in events(mark)} >= {"start"}  # the renewed cycle's faults are detected too


async def test_fleet_publishes_exactly_what_it_reports(mosquitto: MosquittoProcess) -> None:
    sub = DeviceCollector(mosquitto.url)
    await sub.client.start()
    published = await run_fleet(mosquitto.url, 40, 10.0, 1.0, seed=2, connections=2)  # paced: about 1 s
    assert published == 40 * 10
    detected = await run_fleet(mosquitto.url, 20, 10.0, 3.0, seed=4, detect=True, id_prefix="det-", paced=False, faults=[
        FaultSpec(type=FaultType.POWER_LOSS, at_s=0.5, duration_s=1.0)])
    assert detected == 20 * 30 + 2  # telemetry plus the power_lost start and end
    async with asyncio.timeout(10):
        while len(sub.messages) < published + detected:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    await sub.client.stop()
    assert len(sub.messages) == published + detected
    keys = {(d, t.seq) for d, c, t in sub.messages if c == "telemetry" and isinstance(t, Telemetry)}
    assert len(keys) == 40 * 10 + 20 * 30  # every (elevator, seq) exactly once
    assert sorted(e.state for e in sub.of("event") if isinstance(e, DeviceEvent)) == ["end", "start"]


class FakeModbusBox:
    """A Modbus TCP server on a real socket serving a simulated car in Vigil's reference register layout."""

    def __init__(self, sim: ElevatorSimulation) -> None:
        self.sim = sim
        self.requests = 0
        self.misbehave_on = {3: "garbage", 6: "hang_up"}
        self.server: asyncio.base_events.Server | None = None

    def registers(self) -> list[int]:
        c = self.sim.state()
        hi, lo = struct.unpack(">HH", struct.pack(">i", round(c.position_m * 1000)))
        flags = (1 if c.door_zone else 0) | (2 if c.safety_circuit_ok else 0) | (4 if c.floor is not None else 0)
        return [hi, lo, round(c.speed_mps * 1000), ("stopped", "up", "down").index(c.direction),
                ("closed", "opening", "open", "closing").index(c.door), flags, c.floor or 0, c.occupancy,
                round(c.load_kg), ("mains", "battery", "lost").index(c.power), 0]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(12)
                self.requests += 1
                self.sim.step(0.5)
                tid = struct.unpack(">H", req[:2])[0]
                trouble = self.misbehave_on.get(self.requests)
                if trouble == "hang_up":
                    break
                if trouble == "garbage":
                    writer.write(struct.pack(">HHH", tid, 0, 3) + b"\x01\x99\x00")
                else:
                    regs = self.registers()
                    writer.write(struct.pack(">HHHBBB", tid, 0, 3 + 2 * len(regs), 1, 3, 2 * len(regs))
                                 + struct.pack(f">{len(regs)}H", *regs))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_agent_reads_a_modbus_box_over_tcp(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    sim = ElevatorSimulation(ElevatorSpec(floors=8), passengers_per_min=0,
                             faults=[FaultSpec(type=FaultType.POWER_LOSS, at_s=2.0, duration_s=3.0)])
    box = FakeModbusBox(sim)
    box.server = await asyncio.start_server(box.handle, "127.0.0.1", 0)
    port = box.server.sockets[0].getsockname()[1]
    sub = DeviceCollector(mosquitto.url)
    await sub.client.start()
    link = EdgeLink(mosquitto.url, EdgeIdentity.for_device("elevator", "elev-mb", agent=AGENT_NAME),
                    tmp_path / "mb", backoff_min=0.05, backoff_max=0.3)
    driver = ModbusTcpBoxDriver("127.0.0.1", port, timeout=1.0)
    agent = ElevatorAgent("elev-mb", driver, link, ElevatorMonitor("elev-mb", ElevatorGeometry(floors=8)),
                          sample_hz=50, clock=lambda: 1_800_000_000.0 + sim.t)
    await link.start()
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(15):
            while not any(isinstance(e, DeviceEvent) and e.state == "end" for e in sub.of("event")):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.stop()
        await sub.client.stop()
        box.server.close()
        await box.server.wait_closed()
    events = [(e.type, e.state) for e in sub.of("event") if isinstance(e, DeviceEvent)]
    assert events == [("power_lost", "start"), ("power_lost", "end")]
    assert agent.read_errors["bad_frame"] == 1 and agent.read_errors["connection_lost"] == 1
    assert agent.box_ok and agent.counters["readings"] >= 8
