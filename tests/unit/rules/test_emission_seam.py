"""Gateway -> engine regression: real HJ 212 frames through the gateway's session code into the rules.

The defect: a stack reporting SO2 at 82-85 mg/m3 (converted) against a 35 mg/m3 limit for two hours,
sent as a real logger sends it (2011 every 30 s, 2051 at the end of each minute, 2061 at the end of
each hour), raised no exceedance alert: the pack compared ``cn`` with a number while the gateway
publishes ``hj212.cn`` as text, and the 2051/2061 records (DataTime = period start) arrived after
newer 2011 records and were treated as late data. Here the frames come from the logger simulator,
pass through ``Hj212Session`` (the gateway's own per-connection code) and reach the engine as the
exact published payloads, at the simulated moments the logger sends them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from broker.contracts import DeviceMessage, Telemetry, Transition, decode_device_message
from broker.registry import DeviceRegistry, RegistryError
from edge.hj212.gateway import Hj212Counters, Hj212Session, SessionPolicy
from rules.engine import RuleEngine
from rules.loader import PACKS_DIR, load_rules
from simulators.hj212_logger import LoggerModel, Scenario

START_LOCAL = "2026-11-26T08:00:00"
START_UTC = datetime(2026, 11, 26, 0, 0, tzinfo=UTC).timestamp()


def story(converted: bool = True, exceed: bool = True) -> Scenario:
    """One coal stack: an ordinary hour, then two hours at ~84 mg/m3 converted SO2 (limit 35)."""
    faults = [{"type": "exceedance", "code": "a21026", "start_s": 3600, "duration_s": 7200, "factor": 3.0}]
    return msgspec.convert({
        "name": "so2-two-hours", "seed": 11, "devices": 1, "mn_prefix": "5A99", "start": START_LOCAL,
        "duration_s": 3 * 3600, "rtd_interval_s": 30, "minute_interval_min": 1, "reference_o2": 6.0,
        "pollutants": [
            {"code": "a21026", "mean": 28.8, "stddev": 1.0, "converted": converted, "emission": True},
            {"code": "a21002", "mean": 38.0, "stddev": 3.0, "converted": converted},
            {"code": "a34013", "mean": 4.5, "stddev": 0.6, "converted": converted},
            {"code": "a19001", "mean": 6.5, "stddev": 0.2, "decimals": 1},
            {"code": "a00000", "mean": 160.0, "stddev": 4.0, "decimals": 1},
        ],
        "faults": faults if exceed else [],
    }, Scenario)


def registry(mn: str, **attributes: Any) -> DeviceRegistry:
    attrs = {"standard": "GB13223", "fuel": "coal", "new_source": True, "ultra_low": True, **attributes}
    return DeviceRegistry.from_data({
        "sites": [{"id": "plant-1", "name": "第一热电厂"}],
        "devices": [{"id": mn, "kind": "emission", "site": "plant-1", "name": "1号烟囱", "attributes": attrs}],
    })


def through_gateway(scenario: Scenario) -> list[tuple[float, str, bytes]]:
    """(send time, topic, payload) of every publication the gateway makes for the logger's frames."""
    session = Hj212Session(SessionPolicy(accept_unknown_devices=True), Hj212Counters())
    out = []
    for frame in LoggerModel(scenario, 0).frames():
        result = session.receive(frame.data, frame.at_s)
        assert not result.rejections
        out += [(START_UTC + frame.at_s, p.topic, p.payload) for p in result.publications]
    return out


def run(scenario: Scenario, reg: DeviceRegistry) -> tuple[RuleEngine, list[Transition], list[DeviceMessage]]:
    engine = RuleEngine(load_rules([PACKS_DIR]).rules, reg)
    transitions: list[Transition] = []
    messages = []
    next_tick = START_UTC
    for at, topic, payload in through_gateway(scenario):
        while next_tick <= at:  # the service ticks every second; every 30 s is enough here
            transitions += engine.tick(next_tick)
            next_tick += 30
        dm = decode_device_message(topic, payload, received_at=at)
        messages.append(dm)
        transitions += engine.process([dm], at)
    return engine, transitions, messages


def local(ts: datetime) -> str:
    return datetime.fromtimestamp(ts.timestamp() + 8 * 3600, UTC).strftime("%H:%M")


@pytest.mark.parametrize("converted", [True, False], ids=["logger-sends-ZsAvg", "raw-only-O2-correction"])
def test_two_hours_of_so2_over_the_limit_raise_the_hourly_exceedance(converted: bool) -> None:
    scenario = story(converted=converted)
    mn = scenario.mn(0)
    engine, transitions, messages = run(scenario, registry(mn))

    # What the gateway published: hj212.cn is text, 2061 carries the hour's start and arrives after
    # real-time data of the next hour.
    hourly = [m for m in messages if isinstance(m.payload, Telemetry) and m.payload.metrics["hj212.cn"] == "2061"]
    assert [local(m.payload.ts) for m in hourly] == ["08:00", "09:00", "10:00"]  # type: ignore[union-attr]
    assert all(m.received_at >= m.payload.ts.timestamp() + 3600 for m in hourly)  # type: ignore[union-attr]
    assert ("a21026.ZsAvg" in hourly[1].payload.metrics) is converted  # type: ignore[union-attr]

    fired = [t for t in transitions if t.status == "firing"]
    exceed = [t for t in fired if t.rule == "emission_hourly_over_limit_a21026"]
    assert len(exceed) == 1, [t.rule for t in fired]
    alert = exceed[0]
    # Judged when the 09:00-10:00 record arrived, at the end of that hour; its source is the hour's start.
    assert local(alert.ts) == "10:00"
    assert alert.source_ts is not None and local(alert.source_ts) == "09:00"
    assert 82.0 <= alert.values["hourly_mean"] <= 85.0  # the story: 82-85 mg/m3
    assert alert.values["limit"] == 35.0
    assert alert.summary.startswith("二氧化硫小时均值超标: 第一热电厂 1号烟囱 折算 8")
    # Still firing at the end: the 10:00-11:00 hour was over the limit too.
    assert not [t for t in transitions if t.status == "resolved" and t.rule == alert.rule]
    assert (mn, alert.rule) in engine.firing()
    # Period records are not late: each command keeps its own clock.
    assert engine.counters.late == 0
    # Nothing that should stay quiet fired (the issue saw only a flatline alert).
    assert not [t for t in fired if "flatline" in t.rule or "missing" in t.rule or "invalid" in t.rule], \
        [t.rule for t in fired]
    if converted:
        # The rolling mean of the 1-minute records warns within the first exceeding hour.
        rolling = [t for t in fired if t.rule == "emission_rolling_hour_over_limit_a21026"]
        assert len(rolling) == 1 and "09:00" <= local(rolling[0].ts) < "10:00"


def test_the_same_stack_within_its_limit_stays_quiet() -> None:
    scenario = story(exceed=False)
    engine, transitions, _ = run(scenario, registry(scenario.mn(0)))
    assert [t.rule for t in transitions] == []
    assert engine.counters.late == 0


def test_a_stricter_local_limit_and_a_gas_turbine_standard_come_from_the_registry() -> None:
    scenario = story(exceed=False)  # ~28 mg/m3 SO2
    mn = scenario.mn(0)
    _, transitions, _ = run(scenario, registry(mn, a21026_limit=25))
    exceed = [t for t in transitions if t.rule == "emission_hourly_over_limit_a21026" and t.status == "firing"]
    assert len(exceed) == 1 and exceed[0].values["limit"] == 25.0 and local(exceed[0].ts) == "09:00"
    # A natural gas turbine (GB 13223, 15 % O2): the raw-only SO2 corrected to 15 % stays under 35.
    raw = story(converted=False, exceed=False)
    _, transitions, _ = run(raw, registry(raw.mn(0), fuel="natural_gas", unit_type="gas_turbine"))
    assert [t.rule for t in transitions if t.status == "firing"] == []


def test_a_stack_without_a_standard_is_refused_when_the_rules_load() -> None:
    reg = DeviceRegistry.from_data({"devices": [{"id": "stack-9", "kind": "emission"}]})
    with pytest.raises(RegistryError, match=r"stack-9.*no 'standard' attribute"):
        RuleEngine(load_rules([PACKS_DIR]).rules, reg)
    reg = DeviceRegistry.from_data({"devices": [{"id": "stack-9", "kind": "emission",
                                                 "attributes": {"standard": "GB13271", "fuel": "coal"}}]})
    with pytest.raises(RegistryError, match="needs attribute 'new_source'"):
        RuleEngine(load_rules([PACKS_DIR]).rules, reg)
