"""A committed notification reaches its channel's thread within the committing callback (no event-loop turn).

The transports here block on a ``threading.Event``: the test waits (bounded, in the loop thread, without
awaiting) until the transport has been called. That can only happen if the attempt was handed to the
channel's thread before the loop turned, which is what ``AppriseSender.start`` and ``DeliveryWorkers``
promise. ``Slots`` (the channel's free threads) is tested on its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest

from alerting.config import Retry
from alerting.delivery import DeliveryWorkers
from alerting.sender import AppriseSender, Delivered, Message, SendResult, Slots
from alerting.store import AlertStore, NotificationRow
from alerting.templates import mask_url

RETRY = Retry(attempts=2, backoff_s=0.001, backoff_max_s=0.002, timeout_s=10.0)
A = mask_url("a://1")
"""Channels appear masked in attempts and counters."""
WAIT_S = 10.0
"""How long the loop thread waits, blocked, for a thread the attempt should already be in (never reached)."""


class Gate:
    """A transport that records each call and holds it until ``open`` (results from ``answers``, else delivered)."""

    def __init__(self, *answers: SendResult) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str]] = []
        self.called = threading.Event()
        self.gate = threading.Event()

    def __call__(self, url: str, msg: Message) -> SendResult:
        self.calls.append((url, msg.title))
        self.called.set()
        assert self.gate.wait(WAIT_S)
        return self.answers.pop(0) if self.answers else Delivered()


async def test_slots_are_taken_at_once_while_free_and_handed_over_in_order() -> None:
    slots = Slots(1)
    assert slots.try_take() and slots.free == 0 and not slots.try_take()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    assert slots.waiting() == 2 and not first.done()
    slots.release()  # goes to the first waiter, not to the free count
    await asyncio.sleep(0)
    assert first.done() and not second.done() and slots.free == 0
    slots.release()
    await asyncio.sleep(0)
    assert second.done() and slots.free == 0 and slots.waiting() == 0
    slots.release()
    assert slots.free == 1 and slots.try_take()


async def test_a_cancelled_waiter_gives_up_its_place_and_a_slot_handed_to_it_is_passed_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    gone = asyncio.create_task(slots.take())
    late = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert gone.cancelled() and slots.waiting() == 1
    slots.release()
    await asyncio.sleep(0)
    assert late.done() and slots.free == 0
    # Handed a slot and cancelled in the same turn: the slot goes back instead of being lost.
    racer = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.release()
    racer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await racer
    assert slots.free == 1 and slots.waiting() == 0


async def test_a_slot_not_free_within_the_deadline_is_a_busy_channel() -> None:
    gate = Gate()
    sender = AppriseSender(Retry(attempts=1, timeout_s=0.05), threads=1, transport=gate)
    try:
        first = sender.start(["a://1"], Message("one", "b"))
        assert first is not None
        busy = await sender.deliver(["a://1"], Message("two", "b"))
        gate.gate.set()
        done = await sender.deliver(["a://1"], Message("one", "b"), started=first)
    finally:
        gate.gate.set()
        sender.close()
    assert busy.failure is not None and busy.failure.reason == "channel_busy" and busy.handed_at is None
    assert gate.calls == [("a://1", "one")] and sender.counters["channel_busy"] == 1
    assert done.failure is not None and done.failure.reason == "timeout"  # held past its own deadline


async def test_start_hands_the_first_attempt_to_the_thread_before_the_loop_turns() -> None:
    gate = Gate()
    sender = AppriseSender(RETRY, threads=2, transport=gate)
    try:
        started = sender.start(["a://1", "b://1"], Message("t", "b"))
        assert started is not None
        assert gate.called.wait(WAIT_S)  # blocking: the loop has not turned since start()
        assert sender.busy_channels() == {A: 1}
        gate.gate.set()
        out = await sender.deliver(["a://1", "b://1"], Message("t", "b"), started=started)
    finally:
        gate.gate.set()
        sender.close()
    assert out.ok and out.channel == A and len(out.attempts) == 1 and out.attempts[0].attempt == 1
    assert out.handed_at == out.attempts[0].started_at and gate.calls == [("a://1", "t")]


async def test_a_started_attempt_that_fails_is_retried_then_fails_over_as_usual() -> None:
    from alerting.sender import Failed

    gate = Gate(Failed("http_503", True), Failed("http_401", False), Delivered())
    gate.gate.set()
    sender = AppriseSender(RETRY, threads=2, transport=gate)
    try:
        started = sender.start(["a://1", "b://1"], Message("t", "b"))
        out = await sender.deliver(["a://1", "b://1"], Message("t", "b"), started=started)
    finally:
        sender.close()
    assert out.ok and out.channel == mask_url("b://1")
    assert [(a.channel, a.attempt, a.ok) for a in out.attempts] == [(A, 1, False), (A, 2, False),
                                                                    (mask_url("b://1"), 1, True)]


async def test_start_leaves_snapshots_busy_channels_and_empty_recipients_to_deliver() -> None:
    gate = Gate()
    sender = AppriseSender(RETRY, threads=1, transport=gate)
    try:
        assert sender.start([], Message("t", "b")) is None
        assert sender.start(["a://1"], Message("t", "b", attach="http://cam/1.jpg")) is None  # fetched first
        first = sender.start(["a://1"], Message("t", "b"))
        assert first is not None
        assert sender.start(["a://1"], Message("t2", "b")) is None  # the channel's only thread is taken
        gate.gate.set()
        await sender.deliver(["a://1"], Message("t", "b"), started=first)
    finally:
        gate.gate.set()
        sender.close()


def outbox(store: AlertStore, n: int) -> list[int]:
    ids = []
    for i in range(n):
        nid = store.add_notification(dedup_key=f"k{i}", kind="firing", recipient="receiver:room", alert_ids=["a"],
                                     title=f"t{i}", body="b", attach=None, created_at=1.0, source_ts=None,
                                     received_at=None)
        assert nid is not None
        ids.append(nid)
    return ids


def workers(tmp_path: Path, gate: Gate, queue_size: int = 100) -> DeliveryWorkers:
    store = AlertStore(tmp_path / "alerting.sqlite3")
    sender = AppriseSender(RETRY, threads=4, transport=gate)
    return DeliveryWorkers(store, sender, Counter(), lambda _r: ["a://1"], lambda: 2.0, queue_size, 1.0)


async def wait_settled(w: DeliveryWorkers, nids: list[int]) -> None:
    for _ in range(2000):
        rows = [w.store.notification(n) for n in nids]
        if all(r is not None and r.status in ("sent", "dead") for r in rows):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("deliveries did not settle")


async def test_a_committed_notification_is_sending_before_the_loop_turns(tmp_path: Path) -> None:
    gate = Gate()
    w = workers(tmp_path, gate)
    w.start()
    runner = asyncio.create_task(w.run())
    await asyncio.sleep(0)  # run() is waiting on the queue
    try:
        (nid,) = outbox(w.store, 1)
        w.stage(nid, received_at=1.5)
        w.store.commit()
        w.after_commit()
        assert gate.called.wait(WAIT_S)  # blocking: handed to the thread inside after_commit
        row = w.store.notification(nid)
        assert row is not None and row.status == "sending" and w.queue is not None and w.queue.empty()
        gate.gate.set()
        await wait_settled(w, [nid])
    finally:
        gate.gate.set()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        w.sender.close()
    row = w.store.notification(nid)
    assert row is not None and row.status == "sent" and row.attempts == 1 and row.handed_at is not None
    assert [a["ok"] for a in w.store.attempts(nid)] == [True]
    assert w.counters["notifications_sent"] == 1 and w.handoffs[-1]["recv"] == 1.5
    w.store.close()


async def test_without_a_running_worker_or_with_a_guard_ids_go_through_the_queue(tmp_path: Path) -> None:
    gate = Gate()
    gate.gate.set()
    w = workers(tmp_path, gate)
    w.start()
    a, b, c = outbox(w.store, 3)
    w.store.commit()
    w.stage(a)
    w.after_commit()  # run() not started: nothing may start outside the queue
    assert w.queue is not None and w.queue.qsize() == 1 and gate.calls == []
    asked: list[int] = []
    recorded: list[int] = []

    class Guard:  # what a cluster instance does: ask whether an earlier holder sent it, record after
        async def sent_elsewhere(self, row: NotificationRow) -> bool:
            asked.append(row.id)
            return row.id == c

        async def record_sent(self, row: NotificationRow) -> None:
            recorded.append(row.id)

    w.guard = Guard()
    runner = asyncio.create_task(w.run())
    try:
        await asyncio.sleep(0)
        w.stage(b)
        w.stage(c)
        w.after_commit()
        assert w.queue.qsize() == 2  # b and c wait for run(), which asks the guard first
        await wait_settled(w, [a, b, c])
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        w.sender.close()
    assert sorted(asked) == [a, b, c] and sorted(recorded) == [a, b]
    assert sorted(t for _, t in gate.calls) == ["t0", "t1"]  # c was not sent again
    row = w.store.notification(c)
    assert row is not None and (row.status, row.error) == ("sent", "sent by an earlier alerting holder")
    w.store.close()


async def test_ids_behind_a_non_empty_queue_wait_their_turn_and_a_full_queue_leaves_them_pending(
        tmp_path: Path) -> None:
    gate = Gate()
    gate.gate.set()
    w = workers(tmp_path, gate, queue_size=3)
    ids = outbox(w.store, 4)
    w.store.commit()
    w.start()  # reads the pending rows back: the queue takes three, the fourth stays in the outbox
    assert w.queue is not None and w.queue.qsize() == 3 and w.backlog
    w.queue.get_nowait()
    w._queued.discard(ids[0])
    w._tasks = set()  # as while run() runs, but nothing takes from the queue yet
    w.stage(ids[0])
    w.after_commit()  # others wait in the queue: this one goes behind them, not ahead
    assert w.queue.full() and gate.calls == []
    w.stage(ids[3])
    w.after_commit()
    assert w.backlog and gate.calls == []
    w._tasks = None
    runner = asyncio.create_task(w.run())
    try:
        while w.backlog or not w.queue.empty():
            await asyncio.sleep(0.005)
            if w.backlog and not w.queue.full():
                w.requeue_pending()  # what the timer loop does
        await wait_settled(w, ids)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        w.sender.close()
    assert sorted(t for _, t in gate.calls) == ["t0", "t1", "t2", "t3"]  # each once
    w.store.close()
