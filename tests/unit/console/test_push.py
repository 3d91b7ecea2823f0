"""Server push hub: frames, fan-out, slow pages resynchronise instead of growing."""

from __future__ import annotations

import json

from console.push import PushHub, sse_frame


def parse(frame: bytes) -> tuple[str, str, object]:
    lines = frame.decode().strip().split("\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return fields["id"], fields["event"], json.loads(fields["data"])


def test_frame_is_one_data_line_even_with_newlines_in_values() -> None:
    f = sse_frame(7, "alert", {"summary": "line1\nline2", "中文": "困人"})
    assert f.endswith(b"\n\n") and f.count(b"\n") == 4
    assert parse(f) == ("7", "alert", {"summary": "line1\nline2", "中文": "困人"})


async def test_every_page_gets_every_event_in_order() -> None:
    hub = PushHub(queue_size=16)
    a, b = hub.connect("op-a"), hub.connect("op-b")
    for i in range(5):
        hub.publish("alert", {"n": i})
    for c in (a, b):
        got = [parse(c.queue.get_nowait()) for _ in range(5)]
        assert [g[2] for g in got] == [{"n": i} for i in range(5)]
        assert [int(g[0]) for g in got] == [1, 2, 3, 4, 5]
    hub.disconnect(a)
    hub.publish("alert", {"n": 5})
    assert a.queue.empty() and not b.queue.empty()
    assert hub.published == 6


async def test_a_page_that_falls_behind_gets_one_resync() -> None:
    hub = PushHub(queue_size=16)
    slow, fast = hub.connect("slow"), hub.connect("fast")
    for i in range(16):
        hub.publish("alert", {"n": i})
    while not fast.queue.empty():
        fast.queue.get_nowait()
    hub.publish("alert", {"n": 16})
    assert slow.queue.qsize() == 1 and parse(slow.queue.get_nowait())[1] == "resync"
    assert parse(fast.queue.get_nowait())[2] == {"n": 16}
    assert slow.resyncs == 1 and hub.resyncs == 1 and fast.resyncs == 0
