"""The engine's state machine: for, keep_firing_for, hysteresis, dedup, late data, reload, absence."""

from __future__ import annotations

from rules_helpers import BASE, T0, event, feed, make_engine, one_rule, status, summary, tel

from broker.contracts import Kind, Transition
from broker.registry import Device, DeviceRegistry, Site
from rules.loader import load_rule_text


def test_for_holds_before_firing_and_a_dip_restarts_it() -> None:
    eng = make_engine(one_rule('"v > 10"', "    for: 10s\n"))
    got = feed(eng, *(tel("d", t, v=v) for t, v in [(0, 11), (5, 12), (8, 9), (9, 11), (15, 11), (19, 12), (20, 3)]))
    assert got == [(19, "firing", "r"), (20, "resolved", "r")]


def test_keep_firing_for_holds_before_resolving() -> None:
    eng = make_engine(one_rule('"v > 10"', "    keep_firing_for: 30s\n"))
    got = feed(eng, *(tel("d", t, v=v) for t, v in [(0, 11), (10, 5), (20, 12), (30, 5), (50, 5), (60, 4)]))
    assert got == [(0, "firing", "r"), (60, "resolved", "r")]


def test_separate_clear_condition_is_hysteresis() -> None:
    eng = make_engine(one_rule('"v > 10"', '    clear: "v < 5"\n'))
    got = feed(eng, *(tel("d", t, v=v) for t, v in [(0, 11), (1, 8), (2, 6), (3, 4), (4, 8)]))
    assert got == [(0, "firing", "r"), (3, "resolved", "r")]


def test_one_alert_per_device_and_rule_with_a_stable_fingerprint() -> None:
    eng = make_engine(one_rule('"v > 10"', "    labels: {team: a}\n"))
    out = eng.process([tel("a", 0, v=11), tel("b", 0, v=11), tel("a", 1, v=12), tel("a", 2, v=13)], BASE)
    assert [(t.device_id, t.status) for t in out] == [("a", "firing"), ("b", "firing")]
    assert out[0].fingerprint != out[1].fingerprint
    again = make_engine(one_rule('"v > 10"', "    labels: {team: a}\n")).process([tel("a", 0, v=11)], BASE)
    assert again[0].fingerprint == out[0].fingerprint
    assert out[0].labels == {"team": "a"}


def test_transition_fields() -> None:
    reg = DeviceRegistry.build([Site(id="s1", name="一号站")],
                               [Device(id="d", kind=Kind.SENSOR, site="s1", name="探头", attributes={"lim": 20})], [])
    text = one_rule('"v > lim"', '    params: {lim: {attr: lim, default: 10}}\n    summary_en: "{device_name} {v}"\n'
                    '    description: "{site_name} 限值 {lim}"\n    for: 1s\n')
    eng = make_engine(text, reg)
    out = eng.process([tel("d", 0, v=15), tel("d", 1, v=25)], BASE + 100)
    assert out == []  # the registry's limit 20, not the default 10; over it from t=1, held 1 s at t=2
    (tr,) = eng.process([tel("d", 2, v=26)], BASE + 100)
    assert tr.status == "firing" and tr.severity == "warning" and tr.kind == "sensor" and tr.site == "s1"
    assert tr.started_at == T0.replace(second=1) and tr.source_ts == T0.replace(second=2)
    assert tr.received_at == BASE + 2
    assert tr.values == {"v": 26, "lim": 20}
    assert tr.summary == "r d" and tr.summary_en == "探头 26" and tr.description == "一号站 限值 20"


def test_late_data_never_moves_the_state_machine() -> None:
    eng = make_engine(one_rule('"v > 10"'))
    assert feed(eng, tel("d", 10, v=5)) == []
    assert feed(eng, tel("d", 5, v=50)) == []  # older than what the device already said
    assert eng.counters.late == 1
    assert feed(eng, tel("d", 11, v=50)) == [(11, "firing", "r")]
    # A redelivered copy of the same message fires nothing twice.
    assert feed(eng, tel("d", 11, v=50)) == []


def test_late_data_still_feeds_windows_inside_the_window() -> None:
    eng = make_engine(one_rule("{window: {value: v, fn: sum, over: 60s, above: 10}}"))
    assert feed(eng, tel("d", 30, v=6)) == []
    assert feed(eng, tel("d", 20, v=3)) == []  # late, inside the window: counted, no transition yet
    assert feed(eng, tel("d", -40, v=100)) == []  # older than the window: dropped
    assert feed(eng, tel("d", 31, v=2)) == [(31, "firing", "r")]  # 6 + 3 + 2 = 11


def test_unknown_values_change_nothing() -> None:
    eng = make_engine(one_rule('"v > 10"'))
    assert feed(eng, tel("d", 0, v=11), tel("d", 1, w=1)) == [(0, "firing", "r")]
    assert feed(eng, tel("d", 2, v="broken")) == []
    assert feed(eng, tel("d", 3, v=1)) == [(3, "resolved", "r")]


def test_scope_by_device_site_labels_and_attributes() -> None:
    reg = DeviceRegistry.build([Site(id="s1"), Site(id="s2")], [
        Device(id="a", kind=Kind.SENSOR, site="s1", labels={"zone": "north"}, attributes={"cls": "x"}),
        Device(id="b", kind=Kind.SENSOR, site="s2", labels={"zone": "north"}, attributes={"cls": "y"}),
        Device(id="c", kind=Kind.SENSOR, site="s1", labels={"zone": "south"}, attributes={"cls": "x"}),
    ], [])
    for extra, expected in [
        ("    sites: [s1]\n", ["a", "c"]),
        ("    devices: [b]\n", ["b"]),
        ("    match_labels: {zone: north}\n", ["a", "b"]),
        ("    match_attributes: {cls: [x]}\n", ["a", "c"]),
        ("    sites: s1\n    match_labels: {zone: north}\n", ["a"]),
    ]:
        eng = make_engine(one_rule('"v > 1"', extra), reg)
        out = eng.process([tel(d, 0, v=2) for d in "abc"], BASE)
        assert [t.device_id for t in out] == expected, extra


def test_kind_mismatch_is_ignored() -> None:
    eng = make_engine(one_rule('"v > 1"'))
    assert feed(eng, tel("d", 0, kind="vehicle", v=5)) == []


def test_absence_covers_registered_devices_that_never_reported() -> None:
    reg = DeviceRegistry.build([], [Device(id="quiet", kind=Kind.SENSOR), Device(id="loud", kind=Kind.SENSOR),
                                    Device(id="car", kind=Kind.VEHICLE)], [])
    eng = make_engine(one_rule("{absence: 60s}"), reg)
    assert eng.process([tel("loud", 0, v=1)], BASE) == []
    assert eng.tick(BASE + 59) == []
    assert summary(eng.tick(BASE + 60)) == [(60, "firing", "r"), (60, "firing", "r")]
    assert sorted(d for d, _ in eng.firing()) == ["loud", "quiet"]
    assert feed(eng, tel("loud", 70, v=1)) == [(70, "resolved", "r")]


def test_a_tick_in_slices_decides_what_a_whole_tick_decides_with_messages_in_between() -> None:
    devices = [Device(id=f"s{i:03d}", kind=Kind.SENSOR) for i in range(200)]
    reg = DeviceRegistry.build([], devices, [])
    text = one_rule("{absence: 60s}") + """\
  - name: pend
    kind: sensor
    severity: warning
    condition: "v > 10"
    for: 30s
    summary: p
"""
    whole, sliced = make_engine(text, reg), make_engine(text, reg)
    for eng in (whole, sliced):
        eng.process([tel(d.id, 0, v=11 if i % 3 == 0 else 1) for i, d in enumerate(devices)], BASE)
        eng.tick(BASE + 1)
    def keys(ts: list[Transition]) -> list[tuple[str, str, str]]:
        return sorted((t.device_id, t.rule, t.status) for t in ts)

    expected = keys(whole.tick(BASE + 61))
    assert len(expected) == 200 + 67  # every device silent for 61 s; 67 pending promoted
    got: list[Transition] = []
    pieces = 0
    for part in sliced.tick_slices(BASE + 61, every=16):
        got.extend(part)
        pieces += 1
        if pieces == 5:
            # A message handled between pieces, for a device this tick has not reached yet.
            sliced.process([tel("s199", 61, v=1)], BASE + 61)
    assert pieces > 15  # 200 devices of the absence rule + 67 pending timers, in pieces of 16
    # The device that reported between pieces is no longer silent; everything else is the same.
    assert keys(got) == [k for k in expected if k != ("s199", "r", "firing")]


def test_pending_is_promoted_by_the_tick_while_the_device_is_silent() -> None:
    eng = make_engine(one_rule("{event: {type: smoke, resolve_after: 1h}}", "    for: 30s\n"))
    assert feed(eng, event("d", 0, "smoke", state="start")) == []
    assert eng.tick(BASE + 29) == []
    assert summary(eng.tick(BASE + 31)) == [(31, "firing", "r")]
    assert feed(eng, event("d", 40, "smoke", state="end")) == [(40, "resolved", "r")]


def test_status_condition() -> None:
    eng = make_engine(one_rule("{status: offline}"))
    assert feed(eng, status("d", 0, True), status("d", 5, False), status("d", 9, True)) == [
        (5, "firing", "r"), (9, "resolved", "r")]


def test_reload_keeps_unchanged_rules_and_resolves_removed_ones() -> None:
    two = one_rule('"v > 10"', "    for: 10s\n") + """\
  - name: other
    kind: sensor
    severity: info
    condition: "v > 0"
    summary: o
"""
    eng = make_engine(two)
    assert feed(eng, tel("d", 0, v=11)) == [(0, "firing", "other")]
    # Change 'other' only: 'r' keeps its pending timer started at t=0.
    changed, _ = load_rule_text(two.replace('"v > 0"', '"v > 1"'), "test.yaml")
    assert eng.set_rules(changed) == []
    assert feed(eng, tel("d", 10, v=12)) == [(10, "firing", "r")]
    # Remove 'other' while firing: its alert is resolved rather than left open forever.
    only_r, _ = load_rule_text(one_rule('"v > 10"', "    for: 10s\n"), "test.yaml")
    assert [(t.rule, t.status) for t in eng.set_rules(only_r, BASE + 11)] == [("other", "resolved")]


def test_a_changed_rule_keeps_its_firing_alert_without_a_duplicate() -> None:
    eng = make_engine(one_rule('"v > 10"'))
    assert feed(eng, tel("d", 0, v=11)) == [(0, "firing", "r")]
    changed, _ = load_rule_text(one_rule('"v > 9"'), "test.yaml")
    eng.set_rules(changed)
    assert feed(eng, tel("d", 1, v=11)) == []
    assert feed(eng, tel("d", 2, v=1)) == [(2, "resolved", "r")]


def test_flapping_is_suppressed_and_said() -> None:
    eng = make_engine(one_rule('"v > 10"', "    flapping: {window: 60s, max_changes: 4}\n"))
    got = feed(eng, *(tel("d", t, v=11 if t % 2 == 0 else 1) for t in range(10)))
    assert got == [(0, "firing", "r"), (1, "resolved", "r"), (2, "firing", "r"), (3, "firing", "r")]
    flagged = eng.process([tel("d", 10, v=11)], BASE + 10)
    assert flagged == [] and eng.counters.suppressed_flapping > 0
    # Calm for a window: the real state (resolved) is published once.
    assert feed(eng, tel("d", 11, v=1)) == []
    assert summary(eng.tick(BASE + 75)) == [(75, "resolved", "r")]


def test_events_keep_their_own_clock() -> None:
    eng = make_engine(one_rule("{event: {type: trapped, resolve_after: 1h}}") + """\
  - name: t
    kind: sensor
    severity: info
    condition: "v > 1"
    summary: t
""")
    assert feed(eng, tel("d", 10, v=0)) == []
    # Detected at 9.5 s by an edge agent, published after the 10 s telemetry: still handled.
    assert feed(eng, event("d", 9.5, "trapped", state="start", event_id="x")) == [(9.5, "firing", "r")]
    assert feed(eng, event("d", 20, "trapped", state="end", event_id="x")) == [(20, "resolved", "r")]
    # A redelivered copy of the old start event is late for the event clock: nothing fires again.
    assert feed(eng, event("d", 9.5, "trapped", state="start", event_id="x")) == []
    assert eng.counters.late == 1


def test_a_condition_that_raises_is_counted_and_the_others_still_run() -> None:
    from rules.conditions.base import Condition, EvalContext

    class Broken(Condition):
        def evaluate(self, ctx: EvalContext, slots: list[object]) -> int | None:
            raise RuntimeError("bug")

    text = one_rule('"v > 1"') + one_rule('"v > 1"').replace("rules:\n", "").replace("name: r", "name: s")
    eng = make_engine(text)
    broken = Broken()
    broken.metrics = frozenset(["v"])
    eng.rules["r"].condition = broken
    assert feed(eng, tel("d", 0, v=5)) == [(0, "firing", "s")]
    assert eng.counters.errors == 1 and isinstance(eng.last_error, RuntimeError)
