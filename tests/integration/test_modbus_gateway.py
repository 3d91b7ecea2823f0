"""The Modbus poller against the chemical park simulator's real pymodbus TCP servers, and through a real Mosquitto.

Values, scaling and word order as the poller decodes them from real sockets; bad quality (never
a stale good value) on exception responses and on timeouts; reconnect after a server restart;
the gateway's telemetry, status and limit events through the edge runtime's store-and-forward
to a real broker, across a broker outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.contracts import decode_device_message
from broker.mosquitto import MosquittoProcess, free_port
from broker.mqtt import MqttClient
from edge.modbus.gateway import AGENT_NAME, ModbusGateway
from edge.modbus.poller import DevicePoller
from edge.modbus.tagmap import TagMap
from edge.runtime import EdgeIdentity
from edge.runtime.sink import link_publisher
from simulators.chemical_park import CONTROLLERS, ChemicalPark, ParkServers, Scenario, load_scenario


class Collect:
    """A gateway sink that keeps what is published."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []

    async def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.messages.append((topic, json.loads(payload), retain))

    def last(self, suffix: str) -> dict[str, Any]:
        return next(p for t, p, _ in reversed(self.messages) if t.endswith(suffix))


@contextlib.asynccontextmanager
async def park_servers(scenario: Scenario) -> AsyncIterator[tuple[ChemicalPark, ParkServers, TagMap]]:
    park = ChemicalPark(scenario)
    ports = {c: free_port() for c in CONTROLLERS}
    servers = ParkServers(park, ports=ports)
    await servers.start()
    tm = TagMap.from_data(park.tag_map(ports=ports, timeout_s=0.5))
    try:
        yield park, servers, tm
    finally:
        await servers.stop()


async def test_values_scaling_and_word_order_from_real_servers() -> None:
    async with park_servers(load_scenario("demo")) as (park, servers, tm):
        park.step(150)  # the leak has reached the tank farm, tk-01 is filling, the store is hot
        await servers.refresh()
        sink = Collect()
        gw = ModbusGateway(tm, sink)
        try:
            for name in gw.pollers:
                result = await gw.poll_device(name)
                assert result.ok, result.reasons
        finally:
            for p in gw.pollers.values():
                await p.close()
        gd = sink.last("gd-101/telemetry")
        assert gd["metrics"]["gas_lel_pct"] == pytest.approx(round(park.gas["gd-101"], 1))
        assert gd["metrics"]["gas_lel_pct"] > 25
        assert gd["metrics"]["detector_state"] == "normal" and gd["quality"]["gas_lel_pct"] == "good"
        # tk-01 is big-endian word order, tk-02 little: both decode to the simulated float32 value.
        for tank in ("tk-01", "tk-02"):
            m = sink.last(f"{tank}/telemetry")["metrics"]
            assert m["tank_level_pct"] == pytest.approx(park.tank[tank]["level_pct"], abs=1e-4)
            assert m["tank_temperature_c"] == pytest.approx(park.tank[tank]["temperature_c"], abs=1e-4)
        store = sink.last("store-01/telemetry")["metrics"]
        assert store["store_temperature_c"] == pytest.approx(36.0)            # int16 x 0.1
        sis = sink.last("sis-01/telemetry")["metrics"]
        assert sis["bypass_loop_3"] is True and sis["bypass_count"] == 1 and sis["sis_trip"] is False
        assert sink.last("gd-101/status") == {**sink.last("gd-101/status"), "online": True, "agent": AGENT_NAME}
        # Every message the gateway produced is a valid contract message.
        for topic, payload, _ in sink.messages:
            decode_device_message(topic, json.dumps(payload).encode())


async def test_exception_responses_mark_tags_bad_and_the_assets_offline() -> None:
    async with park_servers(load_scenario("demo")) as (park, servers, tm):
        await servers.refresh()
        sink = Collect()
        gw = ModbusGateway(tm, sink)
        try:
            assert (await gw.poll_device("park-tanks")).ok
            park.exceptions["tanks"] = 4  # device failure
            for _ in range(3):
                result = await gw.poll_device("park-tanks")
                assert not result.ok and result.reasons == {"modbus_exception_4": 1}
            tel = sink.last("tk-01/telemetry")
            # No stale good value: the metrics are gone, the quality says bad, tags_bad counts them.
            assert tel["metrics"] == {"tags_bad": 3}
            assert tel["quality"] == {"tank_level_pct": "bad", "tank_temperature_c": "bad", "tank_pressure_kpa": "bad"}
            status = sink.last("tk-01/status")
            assert status["online"] is False and status["reason"] == "modbus_exception_4"
            # Once reported offline, further all-bad polls publish no telemetry (the status says it all).
            before = len(sink.messages)
            await gw.poll_device("park-tanks")
            assert len(sink.messages) == before and gw.counters["telemetry_suppressed_offline"] == 3
            park.exceptions.clear()
            assert (await gw.poll_device("park-tanks")).ok
            assert sink.last("tk-01/status")["online"] is True
            assert "tank_level_pct" in sink.last("tk-01/telemetry")["metrics"]
        finally:
            for p in gw.pollers.values():
                await p.close()


async def test_timeout_marks_bad_and_reconnects_after_the_server_restarts() -> None:
    async with park_servers(load_scenario("demo")) as (park, servers, tm):
        await servers.refresh()
        spec = next(d for d in tm.devices if d.name == "park-store")
        poller = DevicePoller(spec, tm.tags["park-store"])
        try:
            assert (await poller.poll_once()).ok
            park.down = {"store"}
            await servers.refresh()           # the store's server is gone (comm loss)
            down = await poller.poll_once()
            assert not down.ok and all(r.quality == "bad" and r.value is None for r in down.readings)
            assert set(down.reasons) <= {"connection_lost", "timeout", "unreachable"}
            park.down = set()
            await servers.refresh()           # back on the same port
            for _ in range(40):
                result = await poller.poll_once()
                if result.ok:
                    break
                await asyncio.sleep(0.25)     # reconnect backoff (0.5 s first, with jitter)
            assert result.ok and poller.counters["connects"] >= 2
            values = {r.tag.name: r.value for r in result.readings}
            assert values["video_ok"] is True and values["people_count"] == 0
        finally:
            await poller.close()


async def test_a_silent_device_times_out_and_is_marked_bad() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(1024):
                pass  # accepts requests and never answers
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tm = TagMap.from_data({"devices": [{"name": "mute", "host": "127.0.0.1", "port": port, "timeout_s": 0.3,
                                        "tags": [{"asset": "gd-x", "name": "gas_lel_pct", "address": 0}]}]})
    poller = DevicePoller(tm.devices[0], tm.tags["mute"])
    try:
        result = await poller.poll_once()
        assert not result.ok and result.reasons == {"timeout": 1}
        assert result.readings[0].quality == "bad" and result.readings[0].value is None
    finally:
        await poller.close()
        server.close()
        await server.wait_closed()


async def test_an_illegal_address_inside_a_merged_block_is_split_so_neighbours_recover() -> None:
    async with park_servers(load_scenario("demo")) as (park, servers, _tm):
        await servers.refresh()
        data = park.tag_map(ports=servers.ports)
        store = next(d for d in data["devices"] if d["name"] == "park-store")
        store["tags"].append({"asset": "store-01", "name": "missing", "register": "input", "address": 5})
        tm2 = TagMap.from_data(data)
        spec = next(d for d in tm2.devices if d.name == "park-store")
        poller = DevicePoller(spec, tm2.tags["park-store"])
        try:
            first = await poller.poll_once()
            assert first.reasons["modbus_exception_2"] == 1   # inputs 0..5 in one read; 5 does not exist
            second = await poller.poll_once()
            by_name = {r.tag.name: r for r in second.readings}
            assert by_name["missing"].quality == "bad"
            assert by_name["store_temperature_c"].quality == "good" and by_name["people_count"].quality == "good"
        finally:
            await poller.close()


async def test_gateway_through_the_edge_runtime_to_mosquitto_across_an_outage(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    scenario = load_scenario("demo")
    async with park_servers(scenario) as (park, servers, tm):
        park.step(150)
        await servers.refresh()
        received: list[tuple[str, bytes]] = []

        def on_batch(batch: list[Any]) -> None:
            received.extend((m.topic, m.payload) for m in batch)

        # A persistent session: what is delivered while it reconnects after the restart is queued for it.
        sub = MqttClient(mosquitto.url, "test-sub", backoff_max=1.0)
        sub.subscribe("vigil/v1/sensor/#", on_batch)
        await sub.start(timeout=10)
        identity = EdgeIdentity.for_gateway("park-modbus", agent=AGENT_NAME)
        try:
            async with link_publisher(mosquitto.url, identity, tmp_path / "outbox") as sink:
                assert await sink.link.wait_connected(10)
                gw = ModbusGateway(tm, sink.publish)
                for name in gw.pollers:
                    await gw.poll_device(name)
                await sink.link.flush()
                mosquitto.stop()                      # broker outage: polling goes on into the outbox
                for _ in range(3):
                    for name in gw.pollers:
                        await gw.poll_device(name)
                queued = sink.link.stats()["queued"]
                assert queued >= 3 * len(gw.assets)
                mosquitto.start()
                assert await sink.link.wait_connected(30)
                await asyncio.wait_for(sink.link.flush(), 30)
                for p in gw.pollers.values():
                    await p.close()
            for _ in range(300):
                seqs = [json.loads(p).get("seq") for t, p in received if t == "vigil/v1/sensor/gd-101/telemetry"]
                if len(set(seqs)) >= 4:
                    break
                await asyncio.sleep(0.1)
        finally:
            await sub.stop()
        # Every poll of gd-101 arrived, in order, including the three made while the broker was down.
        assert sorted(set(seqs)) == [1, 2, 3, 4]
        tel = [decode_device_message(t, p) for t, p in received if t.endswith("/telemetry")]
        assert {m.device_id for m in tel} >= {"gd-101", "tk-01", "store-01", "sis-01", "dcs-01"}
        status = [decode_device_message(t, p) for t, p in received if t.endswith("gd-101/status")]
        assert status and status[0].payload.online is True  # type: ignore[union-attr]


@pytest.mark.parametrize("argv_extra", [["--check"]])
def test_cli_check_prints_the_block_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         argv_extra: list[str]) -> None:
    import yaml

    from edge.modbus.cli import main

    path = tmp_path / "tags.yaml"
    path.write_text(yaml.safe_dump(ChemicalPark(load_scenario("demo")).tag_map()), encoding="utf-8")
    assert main(["--tags", str(path), *argv_extra]) == 0
    out = capsys.readouterr().out
    assert "park-gds" in out and "input 0..29 (16 tags)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [{name: x, host: h, tags: [{asset: a, name: '1'}]}]\n", encoding="utf-8")
    assert main(["--tags", str(bad)]) == 2
    assert "devices[0].tags[0].name" in capsys.readouterr().err


async def test_the_two_programs_as_processes_to_mosquitto(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """`vigil sim chemical-park` and `vigil edge modbus` as real processes: every asset reports, clean stop."""
    import os
    import signal
    import sys

    import yaml

    ports = [free_port() for _ in CONTROLLERS]
    tags = tmp_path / "tags.yaml"
    data = ChemicalPark(load_scenario("demo")).tag_map(ports=dict(zip(CONTROLLERS, ports, strict=True)))
    tags.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assets = {t["asset"] for d in data["devices"] for t in d["tags"]}
    received: dict[str, list[dict[str, Any]]] = {}

    def on_batch(batch: list[Any]) -> None:
        for m in batch:
            received.setdefault(m.topic, []).append(json.loads(m.payload) if m.payload else {})

    sub = MqttClient(mosquitto.url, "test-sub-proc")
    sub.subscribe("vigil/v1/#", on_batch)
    await sub.start(timeout=10)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil.cli", "sim", "chemical-park", "--ports", ",".join(map(str, ports)),
        "--time-scale", "5", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    gw = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigil.cli", "edge", "modbus", "--tags", str(tags), "--mqtt", mosquitto.url,
        "--data-dir", str(tmp_path / "outbox"), "--heartbeat", "1", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(300):
            got = {t.split("/")[3] for t in received if t.endswith("/telemetry")}
            if got >= assets and len(received.get("vigil/v1/sensor/gd-101/telemetry", [])) >= 3:
                break
            await asyncio.sleep(0.1)
        assert got >= assets
    finally:
        gw.send_signal(signal.SIGTERM)
        gw_rc = await asyncio.wait_for(gw.wait(), 30)
        sim.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sim.wait(), 30)
        await asyncio.sleep(0.5)
        await sub.stop()
    assert gw_rc == 0, (await gw.stderr.read()).decode()[-2000:] if gw.stderr else ""
    seqs = [p["seq"] for p in received["vigil/v1/sensor/gd-101/telemetry"]]
    assert seqs == sorted(seqs) and seqs[0] == 1
    gateway_status = received["vigil/v1/gateways/park-modbus/status"]
    assert gateway_status[0]["online"] is True
    assert gateway_status[-1] == {**gateway_status[-1], "online": False, "reason": "shutdown"}
    assert any("devices_connected" in s.get("detail", {}) for s in gateway_status)


async def test_tag_limits_raise_start_and_end_events_with_deadband() -> None:
    async with park_servers(load_scenario("demo")) as (park, servers, _tm):
        data = park.tag_map(ports=servers.ports)
        tanks = next(d for d in data["devices"] if d["name"] == "park-tanks")
        level = next(t for t in tanks["tags"] if t["asset"] == "tk-01" and t["name"] == "tank_level_pct")
        level["limits"] = {"hi": 85, "hihi": 95, "deadband": 2}
        sink = Collect()
        gw = ModbusGateway(TagMap.from_data(data), sink)
        events: list[tuple[str, str, float]] = []
        try:
            for value in (80.0, 86.0, 96.0, 94.0, 92.5, 84.0, 82.5):
                park.tank["tk-01"]["level_pct"] = value
                await servers.refresh()
                await gw.poll_device("park-tanks")
            events = [(p["state"], p["data"]["level"], p["measure"]) for t, p, _ in sink.messages
                      if t == "vigil/v1/sensor/tk-01/event"]
        finally:
            for p in gw.pollers.values():
                await p.close()
        # 94 stays in hihi (deadband 2), 92.5 drops to hi, 84 stays in hi, 82.5 leaves it.
        assert events == [("start", "hi", 86.0), ("end", "hi", 96.0), ("start", "hihi", 96.0),
                          ("end", "hihi", 92.5), ("start", "hi", 92.5), ("end", "hi", 82.5)]
        starts = [p for t, p, _ in sink.messages if t.endswith("tk-01/event") and p["state"] == "start"]
        assert starts[1]["severity"] == "major" and starts[0]["severity"] == "warning"
        ends = [p for t, p, _ in sink.messages if t.endswith("tk-01/event") and p["state"] == "end"]
        assert [e["event_id"] for e in ends] == [s["event_id"] for s in starts]


async def test_rtu_frames_over_tcp_from_a_transparent_serial_converter() -> None:
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    port = free_port()
    device = SimDevice(id=7, simdata=([SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                      [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                                      [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)],
                                      [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer(device, address=("127.0.0.1", port), framer=FramerType.RTU)
    await server.serve_forever(background=True)
    await server.async_setValues(7, 4, 0, [253, 1])
    await server.async_setValues(7, 2, 3, [True])
    tm = TagMap.from_data({"devices": [{"name": "gds-rs485", "host": "127.0.0.1", "port": port, "unit": 7,
                                        "framer": "rtu", "timeout_s": 0.5, "tags": [
        {"asset": "gd-7", "name": "gas_lel_pct", "register": "input", "address": 0, "scale": 0.1},
        {"asset": "gd-7", "name": "detector_state", "register": "input", "address": 1,
         "enum": {0: "normal", 1: "fault"}},
        {"asset": "gd-7", "name": "relay_1", "register": "discrete", "address": 3},
        {"asset": "gd-7", "name": "missing", "register": "holding", "address": 40}]}]})
    poller = DevicePoller(tm.devices[0], tm.tags["gds-rs485"])
    try:
        result = await poller.poll_once()
    finally:
        await poller.close()
        await server.shutdown()
    got = {r.tag.name: (r.value, r.quality, r.reason) for r in result.readings}
    assert got["gas_lel_pct"] == (25.3, "good", "") and got["detector_state"] == ("fault", "good", "")
    assert got["relay_1"] == (True, "good", "")
    assert got["missing"] == (None, "bad", "modbus_exception_2")
