"""The scenario runner's modbus adapter against the real gateway over real Modbus TCP, and its input checks.

The adapter claims to produce the exact bytes ``vigil edge modbus`` publishes for the same
register contents, failures and clock. The equivalence test runs both on the chemical park
simulator's pymodbus TCP servers: the real ``ModbusGateway.poll_device`` over sockets, and the
adapter fed the same registers (raw, as read back from the servers) and the same failures.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.mosquitto import free_port
from broker.registry import DeviceRegistry
from edge.modbus.gateway import ModbusGateway
from edge.modbus.tagmap import TagMap, decode_tag
from scenario.coverage import SCENARIOS_DIR
from scenario.errors import ScenarioError
from scenario.modbus_adapter import encode_tag, modbus_feed
from simulators.chemical_park import CONTROLLERS, ChemicalPark, ParkServers, load_scenario

EPOCH = 1_795_672_800.0  # 2026-11-26T06:00:00Z


def _registry(park: ChemicalPark) -> DeviceRegistry:
    return DeviceRegistry.from_data({"sites": [{"id": park.scenario.site, "name": "park"}],
                                     "devices": park.registry_devices()})


def _adapter(spec: dict[str, Any], park: ChemicalPark, seed: int = 7) -> list[tuple[str, bytes, bool]]:
    feed = modbus_feed({"id": "park-modbus", "adapter": "modbus", **spec}, "test", EPOCH, random.Random(seed),
                       _registry(park), Path("."))
    return [(d.topic, d.payload, d.retain) for d in sorted(feed.deliveries, key=lambda d: (d.arrive, d.order))]


async def test_adapter_publishes_the_bytes_the_real_gateway_publishes_over_modbus_tcp() -> None:
    park = ChemicalPark(load_scenario("demo"))
    ports = {c: free_port() for c in CONTROLLERS}
    servers = ParkServers(park, ports=ports)
    await servers.start()
    data = park.tag_map(ports=ports, timeout_s=0.5)
    tm = TagMap.from_data(data)
    park.step(150)  # a leak in the tank farm (gas over level 1), tk-01 filling, the store hot, two bypasses
    await servers.refresh()
    image = park.registers()
    sent: list[tuple[str, bytes, bool]] = []

    async def sink(topic: str, payload: bytes, *, retain: bool = False) -> None:
        sent.append((topic, payload, retain))

    seed = random.Random(7).random()  # what the adapter seeds its gateway's backoff jitter with
    clock = [EPOCH]
    gw = ModbusGateway(tm, sink, clock=lambda: clock[0], rng=random.Random(seed))
    try:
        for k in range(9):
            clock[0] = EPOCH + k  # every device polls once a second
            if k == 2:
                park.exceptions["tanks"] = 4      # the tank gauge answers "server device failure"
            if k == 5:
                park.exceptions.clear()
                park.down = {"store"}               # the store PLC closes its connection and stays away
                await servers.refresh()
            for name in gw.pollers:
                await gw.poll_device(name)
    finally:
        for p in gw.pollers.values():
            await p.close()
        await servers.stop()
    registers = [{"device": f"park-{c}", "register": reg, "address": 0,
                  "values": [int(v) for v in values]}
                 for c, regs in image.items() for reg, values in regs.items() if values]
    produced = _adapter({"tags": data, "until": 9, "registers": registers,
                         "failures": [{"from": 2, "until": 5, "device": "park-tanks", "kind": "exception", "code": 4},
                                      {"from": 5, "until": 9, "device": "park-store", "kind": "unreachable"}]}, park)
    assert [json.loads(p) for _, p, _ in produced if b'"tags_bad":3' in p]  # the failure path was exercised
    assert any(t.endswith("tk-01/status") and b'"online":false' in p for t, p, _ in produced)
    assert produced == sent


def test_engineering_values_encode_through_the_tags_own_inverse() -> None:
    park = ChemicalPark(load_scenario("demo"))
    data = park.tag_map()
    data["devices"][0]["tags"].append({"asset": "gd-101", "name": "relay", "register": "holding", "address": 3,
                                       "type": "bool", "bit": 4})
    tm = TagMap.from_data(data)
    tags = {(t.asset, t.name): t for ts in tm.tags.values() for t in ts}
    cases = [(("gd-101", "gas_lel_pct"), 27.3), (("gd-101", "detector_state"), "calibrating"),
             (("tk-02", "tank_level_pct"), 61.234567), (("store-01", "store_temperature_c"), -4.5),
             (("dcs-01", "alarm_total"), 123_456), (("sis-01", "sis_trip"), True), (("gd-101", "relay"), True)]
    for key, value in cases:
        tag = tags[key]
        words = encode_tag(tag, value, "test")
        if tag.bit is not None:
            words = [words[0] << tag.bit]
        got, quality = decode_tag(tag, [bool(w) for w in words] if tag.register == "discrete" else words, tag.address)
        assert quality == "good"
        assert got == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key


def test_scripted_values_and_failures_reach_the_payloads() -> None:
    park = ChemicalPark(load_scenario("demo"))
    data = park.tag_map()
    produced = _adapter({
        "tags": data, "until": "20s",
        "values": [{"from": 0, "set": {"gd-101": {"gas_lel_pct": 1.5, "detector_state": "normal"}}},
                   {"from": "5s", "until": "10s", "set": {"gd-101": {"gas_lel_pct": 31.2}}}],
        "failures": [{"from": "12s", "until": "20s", "device": "park-gds", "kind": "timeout"}]}, park)
    gd = [json.loads(p) for t, p, _ in produced if t == "vigil/v1/sensor/gd-101/telemetry"]
    assert [m["metrics"].get("gas_lel_pct") for m in gd[:12]] == [1.5] * 5 + [31.2] * 5 + [1.5] * 2
    # The first failed poll publishes the tags bad (never the last good value), then the asset goes offline.
    assert gd[12]["metrics"] == {"tags_bad": 2} and gd[12]["quality"]["gas_lel_pct"] == "bad"
    status = [json.loads(p) for t, p, _ in produced if t == "vigil/v1/sensor/gd-101/status"]
    assert [(s["online"], s["reason"]) for s in status] == [(True, "polling"), (False, "timeout")]


@pytest.mark.parametrize(("spec", "message"), [
    ({"values": [{"from": 0, "set": {"gd-101": {"no_such": 1}}}]}, "no such tag"),
    ({"values": [{"from": 0, "set": {"gd-101": {"gas_lel_pct": -3}}}]}, "does not fit"),
    ({"values": [{"from": 0, "set": {"gd-101": {"detector_state": "asleep"}}}]}, "not in the enum"),
    ({"failures": [{"from": 0, "until": 5, "kind": "meltdown"}]}, "kind"),
    ({"registers": [{"from": 0, "device": "park-gds", "register": "input", "values": [70000]}]}, "0-65535"),
])
def test_bad_scenario_input_is_refused_with_the_key(spec: dict[str, Any], message: str) -> None:
    park = ChemicalPark(load_scenario("demo"))
    with pytest.raises(ScenarioError, match=message):
        _adapter({"tags": park.tag_map(), "until": "10s", **spec}, park)


def test_every_safety_scenario_is_device_level() -> None:
    files = sorted((SCENARIOS_DIR / "safety").glob("*.yaml"))
    assert files
    for path in files:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        adapters = {d["adapter"] for d in raw["devices"]}
        assert adapters <= {"modbus", "jt808"}, (path.name, adapters)
