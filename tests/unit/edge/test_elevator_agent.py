"""ElevatorAgent: failed reads, broken drivers and implausible readings are counted, never fatal."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import msgspec

from broker.contracts import DeviceEvent, Telemetry
from edge.elevator.agent import ElevatorAgent, ElevatorMonitor
from edge.elevator.driver import DriverError
from edge.elevator.signals import ElevatorSignals
from edge.runtime import EdgeIdentity, EdgeLink

IDLE = ElevatorSignals(position_m=0.0, speed_mps=0.0, direction="stopped", door="closed", door_zone=True, floor=1,
                       occupancy=0, load_kg=0.0, power="mains", mode="normal", safety_circuit_ok=True)


class ScriptedBox:
    """A driver that replays a script of readings, DriverErrors and other exceptions."""

    def __init__(self, script: list[ElevatorSignals | Exception]) -> None:
        self.script = list(script)
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def read(self) -> ElevatorSignals:
        item = self.script.pop(0) if self.script else IDLE
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True


def offline_link(tmp_path: Path) -> EdgeLink:
    # Never started: publishing only fills the outbox, which is what the agent sees of it.
    return EdgeLink("mqtt://127.0.0.1:1", EdgeIdentity.for_device("elevator", "e1", agent="t"), tmp_path / "o")


def queued(link: EdgeLink) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in link.outbox.take(1000)]


async def test_failed_reads_are_counted_and_mark_the_box_lost_then_recovered(tmp_path: Path) -> None:
    link = offline_link(tmp_path)
    script: list[ElevatorSignals | Exception] = [DriverError("timeout", "no answer")] * 3 + [IDLE]
    agent = ElevatorAgent("e1", ScriptedBox(script), link, ElevatorMonitor("e1"), box_lost_after=3,
                          clock=lambda: 1_800_000_000.0)
    for _ in range(3):
        await agent.sample_once()
    assert not agent.box_ok and agent.read_errors["timeout"] == 3
    assert agent.status_detail()["box_ok"] is False
    assert link._online is False and link._offline_reason == "box_unreachable" and link._status_dirty
    await agent.sample_once()
    assert agent.box_ok and agent.counters["readings"] == 1 and agent.counters["telemetry"] == 1
    assert link._online is True
    await link.stop(timeout=0.1)


async def test_a_driver_that_raises_anything_does_not_stop_the_agent(tmp_path: Path) -> None:
    link = offline_link(tmp_path)
    box = ScriptedBox([RuntimeError("bug in driver"), ZeroDivisionError(), IDLE])
    t = [1_800_000_000.0]
    agent = ElevatorAgent("e1", box, link, ElevatorMonitor("e1"), sample_hz=100, clock=lambda: t[0])
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert box.opened and box.closed
    assert agent.read_errors["driver_exception"] == 2 and agent.counters["readings"] >= 1
    await link.stop(timeout=0.1)


async def test_implausible_readings_are_skipped_and_events_are_queued_in_order(tmp_path: Path) -> None:
    link = offline_link(tmp_path)
    t = [1_800_000_000.0]
    script: list[ElevatorSignals | Exception] = [
        IDLE, dataclasses.replace(IDLE, door="ajar"), dataclasses.replace(IDLE, power="battery"), IDLE]
    agent = ElevatorAgent("e1", ScriptedBox(script), link, ElevatorMonitor("e1"), clock=lambda: t[0])
    for _ in range(4):
        await agent.sample_once()
        t[0] += 0.1
    assert agent.stats()["rejected_readings"] == 1
    kinds = []
    for topic, payload in queued(link):
        if topic.endswith("/event"):
            e = msgspec.json.decode(payload, type=DeviceEvent)
            kinds.append(f"{e.type}:{e.state}")
        else:
            assert topic == "vigil/v1/elevator/e1/telemetry"
            kinds.append(f"telemetry:{msgspec.json.decode(payload, type=Telemetry).metrics['power']}")
    assert kinds == ["telemetry:mains", "telemetry:battery", "power_lost:start", "telemetry:mains", "power_lost:end"]
    assert agent.counters["events"] == 2
    await link.stop(timeout=0.1)
