"""The chemical park scenario end to end: simulator behind real Modbus TCP servers -> the real poller ->
contract messages -> the rules engine with the safety pack. The scripted faults raise the rules the
scenario expects; the same seed gives the same registers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec

from broker.contracts import decode_device_message
from broker.mosquitto import free_port
from broker.registry import Device, DeviceRegistry, Site
from edge.modbus.gateway import ModbusGateway
from edge.modbus.tagmap import TagMap
from rules.engine import RuleEngine
from rules.loader import PACKS_DIR, load_rules
from simulators.chemical_park import CONTROLLERS, ChemicalPark, ParkServers, load_scenario


def test_same_seed_same_park_and_faults_act() -> None:
    sc = load_scenario("demo")
    a, b, c = ChemicalPark(sc), ChemicalPark(sc), ChemicalPark(sc, seed=99)
    for park in (a, b, c):
        park.step(200)
    assert a.store["temperature_c"] == 36.0     # the store_temperature fault holds 36 C from 150 s to 270 s
    for park in (a, b, c):
        park.step(100)
    assert a.registers() == b.registers()
    assert a.registers() != c.registers()
    assert a.tank["tk-01"]["level_pct"] > 95          # overfilling since 20 s at 0.15 %/s
    assert a.det_state["gd-201"] == 2                  # in calibration at 300 s
    assert a.bypass[2] and a.sis_trip is False


async def test_demo_scenario_raises_its_rules_through_the_real_poller() -> None:
    scenario = load_scenario("demo")
    park = ChemicalPark(scenario)
    ports = {c: free_port() for c in CONTROLLERS}
    servers = ParkServers(park, ports=ports)
    await servers.start()
    start = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()   # 20:00 in Asia/Shanghai: store closed
    clock = lambda: start + park.t  # noqa: E731
    devices = [msgspec.convert(d, Device) for d in park.registry_devices()]
    devices = [msgspec.structs.replace(d, attributes={**d.attributes, "bypass_max_h": 0.1}) if d.id == "sis-01"
               else d for d in devices]
    registry = DeviceRegistry.build([Site(id=scenario.site, name=scenario.site_name)], devices, [])
    engine = RuleEngine(load_rules([PACKS_DIR / "safety.yaml"]).rules, registry)
    messages: list[tuple[str, bytes]] = []

    async def sink(topic: str, payload: bytes, *, retain: bool = False) -> None:
        messages.append((topic, payload))

    gateway = ModbusGateway(TagMap.from_data(park.tag_map(ports=ports, timeout_s=0.5)), sink, clock=clock)
    fired: dict[str, set[str]] = {}
    try:
        while park.t < scenario.duration_s:
            park.step(2.0)
            await servers.refresh()
            for name in gateway.pollers:
                await gateway.poll_device(name)
            batch = [decode_device_message(t, p, received_at=clock()) for t, p in messages]
            messages.clear()
            for tr in engine.process(batch, clock()) + engine.tick(clock()):
                if tr.status == "firing":
                    fired.setdefault(tr.rule, set()).add(tr.device_id)
    finally:
        await servers.stop()
        for poller in gateway.pollers.values():
            await poller.close()
    missing = set(scenario.expect_rules) - set(fired)
    assert not missing, f"not raised: {sorted(missing)}; raised: {json.dumps({k: sorted(v) for k, v in fired.items()})}"
    assert fired["safety_gas_area_correlated"] <= {"gd-101", "gd-102", "gd-103", "gd-104"}
    assert len(fired["safety_gas_area_correlated"]) == 1     # one alert for the area
    assert fired["safety_tank_level_hihi"] == {"tk-01"}
    assert "safety_interlock_bypass_overdue" in fired and "safety_store_door_after_hours" in fired
    # Calibration test gas on gd-201 (20 ppm H2S) is shown as calibration, never as an H2S alarm.
    assert "safety_gas_toxic_l1_h2s" not in fired
    # No false alarm on clean channels: Cl2, NH3 and the far tanks stay quiet.
    assert "safety_gas_toxic_l1_cl2" not in fired and "safety_gas_toxic_l1_nh3" not in fired
    assert "tk-03" not in fired.get("safety_tank_temperature_rise", set())
    # The store's 40 s communication loss is shorter than the offline rule's 60 s: the poller reconnected in time.
    assert "store-01" not in fired.get("safety_device_offline", set())


def test_scenario_errors_name_the_problem_and_the_cli_writes_a_loadable_tag_map(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from simulators.chemical_park import ScenarioError, main

    with pytest.raises(ScenarioError, match="bundled: demo"):
        load_scenario("no-such-scenario")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfaults: [{type: meteor, at_s: 1}]\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.type"):
        load_scenario(bad)
    assert main(["--scenario", str(bad)]) == 2
    assert main(["--ports", "1,2"]) == 2
    out = tmp_path / "tags.yaml"
    assert main(["--write-tagmap", str(out), "--duration", "1", "--time-scale", "10",
                 "--ports", ",".join(str(free_port()) for _ in CONTROLLERS)]) == 0
    tm = TagMap.load(out)
    assert len(tm.assets()) == 14 and {d.name for d in tm.devices} == {f"park-{c}" for c in CONTROLLERS}
