"""Snapshots and the journal: a restarted engine neither loses a pending alert nor fires a duplicate."""

from __future__ import annotations

from pathlib import Path

import msgspec
from rules_helpers import BASE, feed, one_rule, tel

from rules.engine import FIRING, PENDING, RuleEngine
from rules.loader import load_rule_text
from rules.state import StateStore

TEXT = one_rule('"v > 10"', "    for: 10s\n") + """\
  - name: avg
    kind: sensor
    severity: info
    condition: {window: {value: v, fn: avg, over: 1h, above: 100}}
    summary: a
"""


def engine() -> RuleEngine:
    rules, errors = load_rule_text(TEXT, "t.yaml")
    assert errors == []
    return RuleEngine(rules)


def test_snapshot_round_trip_keeps_pending_windows_and_values(tmp_path: Path) -> None:
    eng = engine()
    feed(eng, tel("d", 0, v=11), tel("d", 5, v=12))
    store = StateStore(tmp_path)
    store.save(eng)
    again = engine()
    StateStore(tmp_path).restore(again)
    rs = again.devices["d"].rules["r"]
    assert rs.phase == PENDING and rs.since == BASE
    assert again.devices["d"].rules["avg"].slots[0].values == [11, 12]
    assert again.devices["d"].metrics == {"v": 12}
    assert feed(again, tel("d", 10, v=13)) == [(10, "firing", "r")]


def test_journal_alone_restores_state_machines_after_a_crash(tmp_path: Path) -> None:
    eng = engine()
    store = StateStore(tmp_path)
    store.save(eng)  # an empty snapshot; everything after lives only in the journal
    feed(eng, tel("d", 0, v=11))
    store.append(eng, eng.drain_changes())
    feed(eng, tel("d", 10, v=11))  # fires
    store.append(eng, eng.drain_changes())
    # Crash: no snapshot. A new engine restores from the journal.
    again = engine()
    replayed = StateStore(tmp_path).restore(again)
    assert replayed == 2
    assert again.devices["d"].rules["r"].phase == FIRING
    assert feed(again, tel("d", 11, v=12)) == []  # no duplicate firing
    assert feed(again, tel("d", 12, v=1)) == [(12, "resolved", "r")]


def test_a_torn_last_line_and_stale_journals_are_ignored(tmp_path: Path) -> None:
    eng = engine()
    store = StateStore(tmp_path)
    feed(eng, tel("d", 0, v=11))
    store.append(eng, eng.drain_changes())
    store.save(eng)  # generation 1; journal 0 removed
    assert not store.journal_path(0).exists()
    store.journal_path(0).write_text('{"d": "d", "k": "sensor", "r": "r", "m": null}\n')  # stale: must not apply
    feed(eng, tel("d", 10, v=11))
    store.append(eng, eng.drain_changes())
    store.close()
    with open(store.journal_path(1), "ab") as f:
        f.write(b'{"d": "d", "k": "sen')
    again = engine()
    StateStore(tmp_path).restore(again)
    assert again.devices["d"].rules["r"].phase == FIRING


def test_a_crash_while_writing_a_snapshot_loses_nothing(tmp_path: Path) -> None:
    eng = engine()
    store = StateStore(tmp_path)
    feed(eng, tel("d", 0, v=11))
    store.append(eng, eng.drain_changes())
    store.begin_snapshot(eng)  # encoded, journal rotated, but never written
    feed(eng, tel("d", 10, v=11))
    store.append(eng, eng.drain_changes())
    again = engine()
    StateStore(tmp_path).restore(again)
    assert again.devices["d"].rules["r"].phase == FIRING


def test_rule_changed_while_down_keeps_firing_but_drops_pending(tmp_path: Path) -> None:
    eng = engine()
    feed(eng, tel("a", 0, v=11), tel("b", 0, v=11), tel("b", 10, v=11))
    StateStore(tmp_path).save(eng)
    rules, _ = load_rule_text(TEXT.replace('"v > 10"', '"v > 9"'), "t.yaml")
    again = RuleEngine(rules)
    StateStore(tmp_path).restore(again)
    assert again.devices["a"].rules["r"].phase == 0  # pending dropped: the condition changed
    assert again.devices["b"].rules["r"].phase == FIRING
    assert feed(again, tel("b", 11, v=11)) == []


def test_unreadable_snapshot_is_reported_not_fatal(tmp_path: Path, caplog: object) -> None:
    (tmp_path / "rules-state.json").write_text("{not json")
    eng = engine()
    assert StateStore(tmp_path).restore(eng) == 0
    assert eng.devices == {}


def test_a_rule_removed_while_down_has_its_firing_alerts_resolved(tmp_path: Path) -> None:
    eng = engine()
    feed(eng, tel("d", 0, v=11), tel("d", 10, v=11))
    StateStore(tmp_path).save(eng)
    rules, _ = load_rule_text(TEXT.split("  - name: avg")[0].replace("name: r", "name: renamed"), "t.yaml")
    again = RuleEngine(rules)
    StateStore(tmp_path).restore(again)
    (orphan,) = again.orphans
    assert orphan.rule == "r" and orphan.status == "resolved" and orphan.device_id == "d"
    assert orphan.fingerprint == eng.rules["r"].fingerprint("d")


def test_a_snapshot_encoded_in_slices_while_messages_arrive_restores_the_live_state(tmp_path: Path) -> None:
    eng = engine()
    devices = [f"d{i}" for i in range(40)]
    for d in devices:
        feed(eng, tel(d, 0, v=11))  # every device pending on "r"
    store = StateStore(tmp_path)
    store.append(eng, eng.drain_changes())
    enc = store.begin_incremental(eng)
    steps = 0
    while not enc.step(0.0):  # a zero budget: 16 devices per slice
        steps += 1
        # Messages handled between slices: some devices fire, one resolves, one new device appears.
        t = 10 + steps
        feed(eng, tel(devices[steps], t, v=11), tel(devices[-steps], t, v=1), tel(f"new{steps}", t, v=11))
        store.append(eng, eng.drain_changes())
    assert steps == 2  # 40 devices in slices of 16
    store.write_snapshot(enc.generation, enc.result())
    store.close()
    again = engine()
    StateStore(tmp_path).restore(again)
    for d, dev in eng.devices.items():
        live = dev.rules["r"]
        back = again.devices[d].rules["r"]
        assert (back.phase, back.since, back.published) == (live.phase, live.since, live.published), d
    assert set(again.devices) == set(eng.devices)


def test_sliced_and_whole_snapshots_are_the_same_bytes(tmp_path: Path) -> None:
    eng = engine()
    for i in range(50):
        feed(eng, tel(f"d{i}", 0, v=11 + i), tel(f"d{i}", 5, v=12))
    whole = StateStore(tmp_path / "a").begin_snapshot(eng)[1]
    enc = StateStore(tmp_path / "b").begin_incremental(eng)
    while not enc.step(0.0):
        pass
    assert enc.result() == whole
    doc = msgspec.json.decode(whole)
    assert doc["generation"] == 1 and len(doc["devices"]) == 50
