"""DurableOutbox: order, bound with counted drops, in-flight bookkeeping, persistence across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.runtime import DurableOutbox, OutboxError


def payloads(messages: list) -> list[bytes]:  # type: ignore[type-arg]
    return [m.payload for m in messages]


def test_take_returns_messages_in_append_order_once(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3")
    seqs = [box.append("t/a", b"%d" % i, now=100.0 + i) for i in range(10)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    first = box.take(4)
    assert payloads(first) == [b"0", b"1", b"2", b"3"]
    assert payloads(box.take(100)) == [b"%d" % i for i in range(4, 10)]
    assert box.take(5) == []  # everything is in flight
    assert len(box) == 10 and box.unsent == 0


def test_remove_deletes_only_acknowledged(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3")
    for i in range(5):
        box.append("t", b"%d" % i, retain=(i == 2), now=1.0)
    batch = box.take(5)
    assert [m.retain for m in batch] == [False, False, True, False, False]
    assert box.remove([batch[0].seq, batch[2].seq]) == 2
    assert box.remove([batch[0].seq]) == 0  # a second ack for the same message changes nothing
    assert len(box) == 3 and box.delivered == 2
    box.rewind()
    assert payloads(box.take(10)) == [b"1", b"3", b"4"]


def test_bound_drops_oldest_unsent_and_counts(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3", max_messages=5)
    for i in range(8):
        box.append("t", b"%d" % i, now=1.0)
    assert len(box) == 5
    assert box.dropped == 3 and box.appended == 8
    assert payloads(box.take(10)) == [b"3", b"4", b"5", b"6", b"7"]


def test_bound_never_drops_messages_in_flight(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3", max_messages=4)
    for i in range(4):
        box.append("t", b"%d" % i, now=1.0)
    in_flight = box.take(2)  # 0 and 1 are with the broker now
    for i in range(4, 7):
        box.append("t", b"%d" % i, now=1.0)
    assert box.dropped == 3
    assert payloads(box.take(10)) == [b"5", b"6"]  # 2, 3, 4 dropped; 0, 1 kept for their ack
    assert box.remove(m.seq for m in in_flight) == 2


def test_append_many_is_one_ordered_batch(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3", max_messages=100)
    seqs = box.append_many([("t", b"a", False), ("t", b"b", False), ("u", b"c", True)], now=5.0)
    assert len(seqs) == 3 and seqs == sorted(seqs)
    got = box.take(3)
    assert [(m.topic, m.payload, m.retain, m.queued_at) for m in got] == [
        ("t", b"a", False, 5.0), ("t", b"b", False, 5.0), ("u", b"c", True, 5.0)]


def test_messages_counters_and_order_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = DurableOutbox(path, max_messages=3)
    for i in range(5):
        box.append("t", b"%d" % i, now=1.0)
    box.take(1)
    box.close()
    again = DurableOutbox(path, max_messages=3)
    assert len(again) == 3 and again.dropped == 2 and again.appended == 5
    # Nothing is in flight in a new process: all stored messages are sent again, in order.
    assert payloads(again.take(10)) == [b"2", b"3", b"4"]
    again.close()


def test_sequence_numbers_never_repeat_after_deletes(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = DurableOutbox(path)
    seqs = [box.append("t", b"x", now=1.0) for _ in range(3)]
    box.take(3)
    box.remove(seqs)
    box.close()
    again = DurableOutbox(path)
    assert again.append("t", b"y", now=1.0) > max(seqs)


def test_oldest_age(tmp_path: Path) -> None:
    box = DurableOutbox(tmp_path / "o.sqlite3")
    assert box.oldest_age(50.0) == 0.0
    box.append("t", b"x", now=10.0)
    box.append("t", b"y", now=20.0)
    assert box.oldest_age(50.0) == 40.0


def test_invalid_bound_and_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DurableOutbox(tmp_path / "o.sqlite3", max_messages=0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutboxError):
        DurableOutbox(blocker / "o.sqlite3")
