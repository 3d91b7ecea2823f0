"""Reused signals (rules.steady): a rule is evaluated again only when something it reads changed, or
when time, an event, a status, late data or a reload may have moved it; the alerts stay the same."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from rules_helpers import BASE, T0, event, feed, make_engine, one_rule, status, summary, tel

from broker.contracts import Channel, DeviceMessage, Kind, Telemetry, Transition
from rules.engine import RuleEngine
from rules.loader import load_rule_text
from rules.state import engine_to_doc


def counts(eng: RuleEngine) -> tuple[int, int]:
    """(evaluations, reused signals) so far."""
    return eng.counters.evaluations, eng.counters.reused


def test_unchanged_values_reuse_the_signal_and_a_change_is_evaluated() -> None:
    eng = make_engine(one_rule('"v > 10"'))
    assert feed(eng, tel("d", 0, v=5, other=1), tel("d", 1, v=5, other=2), tel("d", 2, v=5, other=2)) == []
    assert counts(eng) == (1, 2)  # 'other' is not read by the rule: its change does not matter
    assert feed(eng, tel("d", 3, v=11, other=2)) == [(3, "firing", "r")]
    assert counts(eng) == (2, 2)
    assert feed(eng, tel("d", 4, v=11, other=2), tel("d", 5, v=4, other=2)) == [(5, "resolved", "r")]
    assert counts(eng) == (3, 3)


def test_a_metric_read_only_by_another_rule_does_not_wake_this_one() -> None:
    text = one_rule('"x > 10"') + """\
  - name: ry
    kind: sensor
    severity: warning
    condition: "y > 10"
    summary: y
"""
    eng = make_engine(text)
    assert feed(eng, tel("d", 0, x=1, y=1)) == []
    assert counts(eng) == (2, 0)
    assert feed(eng, tel("d", 1, x=1, y=20)) == [(1, "firing", "ry")]
    assert counts(eng) == (3, 1)  # r reused (x unchanged), ry evaluated
    assert feed(eng, tel("d", 2, y=5)) == [(2, "resolved", "ry")]  # a message with y only: r is not a candidate
    assert counts(eng) == (4, 1)


def test_a_change_of_type_is_a_change() -> None:
    # finite() tells a number from a boolean: 1, 1.0 and true compare equal but are different inputs.
    eng = make_engine(one_rule('"not finite(v)"'))
    assert feed(eng, tel("d", 0, v=1), tel("d", 1, v=1), tel("d", 2, v=1.0)) == []
    assert feed(eng, tel("d", 3, v=True)) == [(3, "firing", "r")]
    assert feed(eng, tel("d", 4, v=True), tel("d", 5, v=1)) == [(5, "resolved", "r")]
    assert counts(eng) == (4, 2)  # reused at 1 and 4 only


def test_nan_is_never_the_same_value() -> None:
    eng = make_engine(one_rule('"v != v"'))  # true for NaN only
    assert feed(eng, tel("d", 0, v=float("nan"))) == [(0, "firing", "r")]
    # (two decoded NaNs are two objects; NaN != NaN, so the value counts as changed)
    assert feed(eng, tel("d", 1, v=float("nan")), tel("d", 2, v=0.0)) == [(2, "resolved", "r")]
    assert counts(eng) == (3, 0)


def test_a_rule_on_x_still_fires_on_silence_while_its_values_stay() -> None:
    # The deadman part depends on time: the tick fires it, and data received long ago (a backlog handed
    # over late) is judged on the silence, not on the reused signal.
    eng = make_engine(one_rule('{any: [{absence: 60s}, "x > 10"]}'))
    assert feed(eng, tel("d", 0, x=1), tel("d", 1, x=1)) == []
    assert counts(eng) == (1, 1)
    assert summary(eng.tick(BASE + 62)) == [(62, "firing", "r")]
    # Same value, received at 63 but handed to the engine at 200: silent 137 s by then, still firing.
    assert summary(eng.process([tel("d", 63, x=1)], BASE + 200)) == []
    assert eng.counters.evaluations == 3  # the tick's and this one: not reused
    assert feed(eng, tel("d", 201, x=1)) == [(201, "resolved", "r")]
    assert [r for _, r in eng.firing()] == []


def test_a_backlog_handed_over_late_is_judged_on_the_silence_even_right_after_a_reuse() -> None:
    eng = make_engine(one_rule('{any: [{absence: 60s}, "x > 10"]}'))
    assert feed(eng, tel("d", 0, x=1), tel("d", 1, x=1)) == []
    assert counts(eng) == (1, 1)
    assert summary(eng.process([tel("d", 2, x=1)], BASE + 100)) == [(2, "firing", "r")]
    assert counts(eng) == (2, 1)


def test_a_pending_rule_keeps_counting_on_reused_signals() -> None:
    eng = make_engine(one_rule('"x > 10"', "    for: 10s\n"))
    got = feed(eng, *(tel("d", t, x=11) for t in range(12)))
    assert got == [(10, "firing", "r")]
    assert counts(eng) == (1, 11)


def test_a_composite_of_a_metric_and_an_event_sees_the_event_expire() -> None:
    eng = make_engine(one_rule('{any: ["x > 10", {event: {type: knock, resolve_after: 30s}}]}'))
    assert feed(eng, tel("d", 0, x=1), tel("d", 1, x=1)) == []
    assert counts(eng) == (1, 1)
    assert feed(eng, event("d", 2, "knock")) == [(2, "firing", "r")]
    # The instant event is waiting to expire: the same values are evaluated again until it has.
    assert feed(eng, tel("d", 3, x=1), tel("d", 20, x=1)) == []
    assert counts(eng) == (4, 1)
    assert feed(eng, tel("d", 33, x=1)) == [(33, "resolved", "r")]
    assert feed(eng, tel("d", 34, x=1), tel("d", 35, x=1)) == []
    assert counts(eng) == (5, 3)  # expired: steady again


def test_a_composite_of_a_metric_and_an_open_event_follows_its_end() -> None:
    eng = make_engine(one_rule('{all: ["x > 10", {event: jam}]}'))
    assert feed(eng, tel("d", 0, x=20), tel("d", 1, x=20)) == []
    assert feed(eng, event("d", 2, "jam", state="start", event_id="j1")) == [(2, "firing", "r")]
    assert feed(eng, tel("d", 3, x=20), tel("d", 4, x=20)) == []
    assert feed(eng, event("d", 5, "jam", state="end", event_id="j1")) == [(5, "resolved", "r")]
    assert feed(eng, tel("d", 6, x=20), tel("d", 7, x=20)) == []
    # Evaluated: telemetry at 0, 3 and 6 (the first, then after each event) and the two events; 1, 4, 7 reused.
    assert counts(eng) == (5, 3)


def test_status_and_absence_rule_follows_status_messages() -> None:
    eng = make_engine(one_rule("{any: [{absence: 10min}, {status: offline}]}"))
    assert feed(eng, tel("d", 0, v=1), tel("d", 1, v=1)) == []
    assert feed(eng, status("d", 2, online=False)) == [(2, "firing", "r")]
    assert feed(eng, tel("d", 3, v=1), tel("d", 4, v=1)) == []  # still offline by its status
    assert feed(eng, status("d", 5, online=True)) == [(5, "resolved", "r")]
    assert feed(eng, tel("d", 6, v=1), tel("d", 7, v=1)) == []
    assert counts(eng) == (5, 3)  # reused at 1, 4 and 7; the status messages made 3 and 6 evaluate


def test_a_metric_read_through_get_is_an_input_even_when_it_does_not_trigger() -> None:
    # The rule is triggered by x only; mode arrives on its own, then x again unchanged: evaluated afresh.
    eng = make_engine(one_rule("'x > 10 and get(\"mode\", \"normal\") == \"test\"'"))
    assert feed(eng, tel("d", 0, x=20), tel("d", 1, x=20)) == []
    assert counts(eng) == (1, 1)
    assert feed(eng, tel("d", 2, mode="test")) == []  # not a trigger: not evaluated
    assert counts(eng) == (1, 1)
    assert feed(eng, tel("d", 3, x=20)) == [(3, "firing", "r")]
    assert counts(eng) == (2, 1)


def test_a_data_flag_change_is_an_input() -> None:
    eng = make_engine(one_rule("'x > 10 and flag(\"x\") == \"N\"'"))
    assert feed(eng, tel("d", 0, x=20, quality={"x": "D"}), tel("d", 1, x=20, quality={"x": "D"})) == []
    assert counts(eng) == (1, 1)
    assert feed(eng, tel("d", 2, x=20, quality={"x": "N"})) == [(2, "firing", "r")]


def test_time_driven_conditions_are_evaluated_on_every_message() -> None:
    for cond in ("{window: {value: x, fn: avg, over: 60s, above: 10}}", '{all: ["x > 0", {schedule: "00:00-23:59"}]}',
                 "{absence: {after: 60s, metric: x}}"):
        eng = make_engine(one_rule(cond))
        feed(eng, *(tel("d", t, x=5) for t in range(5)))
        assert counts(eng) == (5, 0), cond


def test_late_data_and_reloads_make_the_next_message_evaluate() -> None:
    text = one_rule('"x > 10"')
    eng = make_engine(text)
    assert feed(eng, tel("d", 10, x=1), tel("d", 11, x=1)) == []
    assert feed(eng, tel("d", 5, x=50)) == []  # late: evaluated, moves nothing
    assert counts(eng) == (2, 1)
    assert feed(eng, tel("d", 12, x=1)) == []
    assert counts(eng) == (3, 1)
    rules, errors = load_rule_text(text, "test.yaml")
    assert errors == []
    eng.set_rules(rules)
    assert feed(eng, tel("d", 13, x=1), tel("d", 14, x=1)) == []
    assert counts(eng) == (4, 2)


def test_the_state_machine_steps_on_a_reused_signal_after_a_tick_moved_it() -> None:
    # Silent: the tick makes the deadman pending; the next (unchanged) telemetry must clear it again, so
    # the next silence starts its own pending time instead of firing at once.
    eng = make_engine(one_rule("{any: [{absence: 60s}, \"x > 10\"]}", "    for: 30s\n"))
    assert feed(eng, tel("d", 0, x=1), tel("d", 1, x=1)) == []
    assert eng.tick(BASE + 70) == []  # pending since 70
    assert feed(eng, tel("d", 71, x=1)) == []
    assert eng.tick(BASE + 132) == []  # silent since 71: pending again, since 132
    assert eng.firing() == []
    assert summary(eng.tick(BASE + 163)) == [(163, "firing", "r")]


# --------------------------------------------------------------------------- the same alerts either way

def _run(eng: RuleEngine, script: list[tuple[str, Any]]) -> list[Transition]:
    out: list[Transition] = []
    for what, arg in script:
        if what == "tick":
            out.extend(eng.tick(arg))
        else:
            msg, now = arg
            out.extend(eng.process([msg], now))
    return out


MIXED = """\
rules:
  - name: thr
    kind: sensor
    severity: warning
    condition: {threshold: {value: a, above: 5, clear_below: 3}}
    for: 3s
    summary: "thr {a}"
  - name: rng
    kind: sensor
    severity: warning
    condition: {range: {value: b, min: 1, max: 6, clear_margin: 1}}
    keep_firing_for: 4s
    summary: "rng {b}"
  - name: mix
    kind: sensor
    severity: major
    condition:
      any:
        - all: ["a > 4", {not: {expr: 'get("mode", "run") == "test"'}}]
        - event: {type: knock, resolve_after: 5s}
        - {event: jam}
    summary: "mix {a} {event_type}"
  - name: dead
    kind: sensor
    severity: major
    condition: {any: [{absence: 20s}, {status: offline}, "not finite(c)"]}
    for: 2s
    summary: "dead"
  - name: flags
    kind: sensor
    severity: warning
    condition: 'b > 2 and flag("b") == "N"'
    flapping: {window: 20s, max_changes: 4}
    summary: "flags {b}"
  - name: win
    kind: sensor
    severity: warning
    condition: {window: {value: a, fn: avg, over: 10s, above: 4}}
    summary: "win"
"""


def _script(seed: int) -> list[tuple[str, Any]]:
    """Telemetry that mostly repeats itself, with type changes, events, statuses, late data, backlogs, silences."""
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    values = {d: {"a": 1, "b": 3, "c": 1.0, "mode": "run"} for d in ("d1", "d2", "d3")}
    t = 0.0
    for _ in range(700):
        t += rng.choice([0.5, 1.0, 1.0, 2.0, 7.0, 25.0]) if rng.random() < 0.1 else 0.5
        d = rng.choice(list(values))
        roll = rng.random()
        now = BASE + t
        if roll < 0.06:
            ev_type = rng.choice(["knock", "jam", "other"])
            state = rng.choice(["instant", "start", "end"]) if ev_type == "jam" else "instant"
            out.append(("msg", (event(d, t, ev_type, state=state, event_id="j" if state != "instant" else None),
                                now)))
        elif roll < 0.09:
            out.append(("msg", (status(d, t, online=rng.random() < 0.5), now)))
        elif roll < 0.14:
            out.append(("tick", now))
        else:
            v = values[d]
            if rng.random() < 0.25:
                key = rng.choice(["a", "b", "c", "mode"])
                v[key] = rng.choice({"a": [1, 1.0, True, 6, 6.0, 4.5, 2], "b": [3, 0, 7, 5.5, 2],
                                     "c": [1.0, 1, float("nan"), True, "x"], "mode": ["run", "test"]}[key])
            metrics = dict(v) if rng.random() < 0.85 else {k: v[k] for k in rng.sample(list(v), 2)}
            quality = {"b": rng.choice(["N", "D"])} if rng.random() < 0.3 else None
            at = t - rng.choice([3.0, 30.0]) if rng.random() < 0.04 else t  # late now and then
            lag = rng.choice([0.0, 0.0, 0.0, 40.0]) if rng.random() < 0.1 else 0.0  # a backlog handed over late
            payload = Telemetry(ts=T0 + timedelta(seconds=at), metrics=metrics, quality=quality)
            out.append(("msg", (DeviceMessage(Kind.SENSOR, d, Channel.TELEMETRY, payload, now), now + lag)))
    return out


def test_reusing_signals_gives_the_same_alerts_and_state_as_evaluating_everything() -> None:
    rules, errors = load_rule_text(MIXED, "test.yaml")
    assert errors == []
    for seed in range(12):
        script = _script(seed)
        fast, full = RuleEngine(rules), RuleEngine(rules, reuse=False)
        got, want = _run(fast, script), _run(full, script)
        assert got == want, seed
        assert engine_to_doc(fast, 1) == engine_to_doc(full, 1), seed
        assert full.counters.reused == 0
        assert fast.counters.reused > 100, seed
        assert len(want) > 10, seed  # the script does raise and resolve alerts
    assert {t.rule for t in want} >= {"thr", "rng", "mix", "dead", "flags", "win"}


def test_the_elevator_fleet_raises_the_same_alerts_either_way() -> None:
    from broker.contracts import decode_device_message
    from broker.registry import Device, DeviceRegistry
    from rules.loader import PACKS_DIR, load_rules
    from simulators.elevator_fleet import ElevatorFleet

    fleet = ElevatorFleet(12, seed=3, fault_fraction=1.0, duration_s=90, detect=True, id_prefix="el-")
    lift = {"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0, "maintained_on": "2026-11-20"}
    registry = DeviceRegistry.build([], [Device(id=m.device_id, kind=Kind.ELEVATOR, attributes=lift)
                                         for m in fleet.members], [])
    rules = load_rules([PACKS_DIR / "elevator.yaml"]).rules
    fast, full = RuleEngine(rules, registry), RuleEngine(rules, registry, reuse=False)
    got: list[Transition] = []
    want: list[Transition] = []
    for step in range(900):
        now = BASE + step / 10
        ts = T0 + timedelta(seconds=step / 10)
        batch = [decode_device_message(topic, payload, received_at=now)
                 for i in range(len(fleet.members)) for topic, payload, _ in fleet.messages(i, 0.1, now, ts)]
        got += fast.process(batch, now)
        want += full.process(batch, now)
        if step % 10 == 0:
            got += fast.tick(now)
            want += full.tick(now)
    assert got == want
    assert engine_to_doc(fast, 1) == engine_to_doc(full, 1)
    assert len(want) >= 5 and fast.counters.errors == 0
    assert fast.counters.evaluations * 4 < full.counters.evaluations  # most evaluations were reused
