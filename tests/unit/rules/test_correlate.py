"""The cross-device ``correlate`` and the parameter-driven ``held`` conditions, including a snapshot restore."""

from __future__ import annotations

import json

from broker.registry import DeviceRegistry
from rules.loader import load_rule_text
from rules.state import engine_from_doc, engine_to_doc
from tests.unit.rules.rules_helpers import BASE, make_engine, tel

RULES = """
rules:
  - name: area_gas
    kind: sensor
    severity: critical
    params: {area: {attr: area, default: null}}
    condition:
      correlate: {group_by: area, min_devices: 2, within: 1min, condition: "gas >= 25"}
    summary: "{group} {devices_alarming} ({alarming_devices})"
  - name: bypass_overdue
    kind: sensor
    severity: critical
    params: {max_h: {attr: bypass_max_h, default: 1}}
    condition:
      held: {condition: "bypass > 0", for: max_h * 3600}
    summary: "bypass {held_h} h"
"""
REGISTRY = DeviceRegistry.from_data({"devices": [
    {"id": "a", "kind": "sensor", "attributes": {"area": "farm"}},
    {"id": "b", "kind": "sensor", "attributes": {"area": "farm"}},
    {"id": "c", "kind": "sensor", "attributes": {"area": "farm"}},
    {"id": "x", "kind": "sensor", "attributes": {"area": "other"}},
    {"id": "n", "kind": "sensor"},
    {"id": "s", "kind": "sensor", "attributes": {"bypass_max_h": 0.5}},
]})


def fired(transitions: list) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    return [(t.rule, t.device_id, t.status) for t in transitions]


def test_one_alert_per_group_led_by_the_device_that_completed_it() -> None:
    eng = make_engine(RULES, REGISTRY)
    out = eng.process([tel("a", 0, gas=30), tel("x", 1, gas=40), tel("n", 2, gas=50)], BASE + 2)
    assert out == []  # one member per group; a device without an area is never correlated
    out = eng.process([tel("b", 3, gas=26)], BASE + 3)
    assert fired(out) == [("area_gas", "b", "firing")]
    assert out[0].summary == "farm 2 (a, b)" and out[0].values["devices_alarming"] == 2
    # A third member and the first member's next readings do not raise more alerts.
    out = eng.process([tel("c", 4, gas=27), tel("a", 5, gas=31)], BASE + 5)
    assert out == []
    # The leader clearing keeps the alert while two others still alarm ...
    assert eng.process([tel("b", 6, gas=3)], BASE + 6) == []
    # ... and it resolves (on the leader) once fewer than two alarm.
    eng.process([tel("c", 7, gas=2)], BASE + 7)
    out = eng.process([tel("b", 8, gas=2)], BASE + 8)
    assert fired(out) == [("area_gas", "b", "resolved")]


def test_a_silent_member_ages_out_and_a_restored_engine_keeps_the_group() -> None:
    eng = make_engine(RULES, REGISTRY)
    eng.process([tel("a", 0, gas=30), tel("b", 1, gas=30)], BASE + 1)
    doc = json.loads(json.dumps(engine_to_doc(eng, 1)))
    rules, errors = load_rule_text(RULES, "test.yaml")
    assert errors == []
    from rules.engine import RuleEngine

    restored = RuleEngine(rules, REGISTRY)
    engine_from_doc(restored, doc)
    # No duplicate firing after the restore, and the leader still resolves when the group breaks up.
    assert restored.process([tel("a", 10, gas=29)], BASE + 10) == []
    out = restored.process([tel("a", 20, gas=1), tel("b", 21, gas=1)], BASE + 21)
    assert fired(out) == [("area_gas", "b", "resolved")]
    # b alarms again, a stays silent after its alarm: a ages out after `within`, no group.
    eng2 = make_engine(RULES, REGISTRY)
    eng2.process([tel("a", 0, gas=30)], BASE)
    out = eng2.process([tel("b", 100, gas=30)], BASE + 100)
    assert out == []


def test_held_fires_after_the_parameter_window_even_while_silent() -> None:
    eng = make_engine(RULES, REGISTRY)
    eng.process([tel("s", 0, bypass=1)], BASE)
    assert eng.tick(BASE + 1700) == []
    out = eng.tick(BASE + 1801)             # 0.5 h from the registry attribute, judged on the tick
    assert fired(out) == [("bypass_overdue", "s", "firing")] and out[0].summary.startswith("bypass 0.5")
    out = eng.process([tel("s", 1900, bypass=0)], BASE + 1900)
    assert fired(out) == [("bypass_overdue", "s", "resolved")]
    # A break resets the clock.
    eng.process([tel("s", 2000, bypass=1), tel("s", 3000, bypass=0), tel("s", 3100, bypass=1)], BASE + 3100)
    assert eng.tick(BASE + 3100 + 1700) == []
