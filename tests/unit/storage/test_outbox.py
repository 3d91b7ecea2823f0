"""The on-disk outbox: order, exactly-once after a real crash, torn tails, rotation, overflow policies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage.outbox import HEADER_SIZE, Outbox, OutboxBatch, encode_frame

SEG = 4096


def make(path: Path, **kw: object) -> Outbox:
    kw.setdefault("fsync", "off")  # durability against a process crash does not need fsync (see the crash test)
    ob = Outbox(path, max_bytes=kw.pop("max_bytes", 1 << 20), segment_bytes=kw.pop("segment_bytes", SEG),  # type: ignore[arg-type]
                **kw)  # type: ignore[arg-type]
    ob.open()
    return ob


def drain(ob: Outbox, max_lines: int = 7) -> list[str]:
    out: list[str] = []
    while (batch := ob.peek(max_lines)) is not None:
        out += [line.decode() for line in batch.split_lines()]
        ob.commit(batch)
    assert ob.pending_lines == 0
    return out


def lines(start: int, n: int) -> list[str]:
    return [f"m,device=d{i % 10} v={i}.0 {i}" for i in range(start, start + n)]


def test_lines_come_out_in_order_exactly_once(tmp_path: Path) -> None:
    ob = make(tmp_path)
    sent = []
    for i in range(0, 300, 3):
        ob.append(lines(i, 3))
        sent += lines(i, 3)
    assert ob.pending_lines == 300
    assert drain(ob) == sent
    assert ob.counters["appended"] == ob.counters["committed"] == 300
    ob.close()


def test_uncommitted_batch_is_read_again(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.append(lines(0, 5))
    first = ob.peek(3)
    again = ob.peek(3)
    assert first is not None and again is not None
    assert first.frames == again.frames and first.lines == 5  # a whole frame even above max_lines
    ob.commit(first)
    assert ob.peek(3) is None
    ob.close()


def test_batches_respect_max_lines_at_frame_boundaries(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for i in range(10):
        ob.append(lines(i * 2, 2))
    batch = ob.peek(5)
    assert batch is not None and batch.lines == 6
    ob.close()


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from storage.outbox import Outbox
    ob = Outbox(Path(sys.argv[1]), max_bytes=1 << 20, segment_bytes=4096, fsync=sys.argv[2])
    ob.open()
    for i in range(0, 1000, 4):
        ob.append([f"m v={j}.0 {j}" for j in range(i, i + 4)])
    sent = 0
    while sent < 300:
        batch = ob.peek(50)
        ob.commit(batch)
        sent += batch.lines
    print(sent, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: a crash
""")


@pytest.mark.parametrize("fsync", ["batch", "interval", "off"])
def test_everything_pending_survives_a_crash_and_is_delivered_once_in_order(tmp_path: Path, fsync: str) -> None:
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path / "ob"), fsync], capture_output=True,
                          text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert proc.returncode == -9, proc.stderr
    committed = int(proc.stdout.strip())
    ob = make(tmp_path / "ob")
    assert ob.pending_lines == 1000 - committed
    assert drain(ob) == [f"m v={j}.0 {j}" for j in range(committed, 1000)]
    ob.close()
    assert make(tmp_path / "ob").pending_lines == 0


def test_torn_tail_is_cut_and_appending_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = make(tmp_path)
    ob.append(lines(0, 3))
    ob.append(lines(3, 3))
    ob.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    whole = encode_frame(b"m v=9.0 9", 1)
    with open(seg, "ab") as fh:
        fh.write(whole[: HEADER_SIZE + 4])  # power lost in the middle of a write
    ob = make(tmp_path)
    assert ob.counters["torn_bytes"] == HEADER_SIZE + 4
    assert "torn" in caplog.text
    ob.append(lines(6, 2))
    assert drain(ob) == lines(0, 8)
    ob.close()


def test_bit_flip_in_a_frame_cuts_from_there(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.append(lines(0, 2))
    ob.append(lines(2, 2))
    ob.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF
    seg.write_bytes(bytes(data))
    ob = make(tmp_path)
    assert drain(ob) == lines(0, 2)
    ob.close()


def test_unreadable_committed_position_resends_rather_than_loses(tmp_path: Path) -> None:
    ob = make(tmp_path)
    ob.append(lines(0, 4))
    ob.append(lines(4, 4))
    batch = ob.peek(4)
    assert batch is not None
    ob.commit(batch)
    ob.close()
    (tmp_path / "committed").write_text("garbage")
    ob = make(tmp_path)
    assert drain(ob) == lines(0, 8)
    ob.close()


def test_segments_rotate_and_sent_ones_are_deleted(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for i in range(0, 2000, 10):
        ob.append(lines(i, 10))
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert drain(ob, 100) == lines(0, 2000)
    assert len(list(tmp_path.glob("*.seg"))) == 1
    ob.close()
    ob = make(tmp_path)
    assert ob.pending_lines == 0 and ob.peek(10) is None
    ob.close()


def test_restart_mid_segment_resumes_at_the_committed_frame(tmp_path: Path) -> None:
    ob = make(tmp_path)
    for i in range(0, 100, 5):
        ob.append(lines(i, 5))
    batch = ob.peek(12)
    assert batch is not None
    ob.commit(batch)
    ob.close()
    ob = make(tmp_path)
    assert ob.pending_lines == 85
    ob.append(lines(100, 5))
    assert drain(ob) == lines(15, 90)
    ob.close()


def test_overflow_drop_oldest_keeps_the_newest_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ob = make(tmp_path, max_bytes=2 * SEG, overflow="drop_oldest")
    for i in range(0, 2000, 10):
        assert ob.append(lines(i, 10))
    got = drain(ob, 50)
    dropped = ob.counters["dropped"]
    assert dropped > 0 and len(got) + dropped == 2000
    assert got == lines(2000 - len(got), len(got))  # a contiguous run of the newest lines
    assert ob.pending_bytes <= 2 * SEG
    assert "dropped the oldest" in caplog.text
    ob.close()


def test_overflow_drop_newest_refuses_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ob = make(tmp_path, max_bytes=2 * SEG, overflow="drop_newest")
    accepted = 0
    for i in range(0, 2000, 10):
        accepted += 10 if ob.append(lines(i, 10)) else 0
    assert ob.counters["dropped"] == 2000 - accepted > 0
    assert drain(ob, 50) == lines(0, accepted)
    assert "refused" in caplog.text
    ob.close()


def test_batch_overtaken_by_a_drop_keeps_counts_right(tmp_path: Path) -> None:
    ob = make(tmp_path, max_bytes=2 * SEG, overflow="drop_oldest")
    for i in range(0, 300, 10):
        ob.append(lines(i, 10))
    in_flight = ob.peek(10_000)
    assert isinstance(in_flight, OutboxBatch)
    for i in range(300, 1500, 10):
        ob.append(lines(i, 10))
    ob.commit(in_flight)
    remaining = drain(ob, 50)
    assert remaining == lines(1500 - len(remaining), len(remaining))
    ob.close()


def test_size_limits_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path, max_bytes=SEG, segment_bytes=SEG)
