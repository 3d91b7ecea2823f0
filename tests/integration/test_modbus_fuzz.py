"""Fuzzing the Modbus poller with bad answers from a raw TCP server: it never crashes, and marks quality bad.

The server reads each request's MBAP header and answers with a generated frame: garbage, a
truncated response, an exception, a wrong byte count, a wrong transaction id, a hang-up, or a
well-formed response. Only the well-formed one may produce good values, and then exactly the
values it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.modbus.poller import DevicePoller
from edge.modbus.tagmap import TagMap

COUNT = 4
TAGS = [{"asset": "gd-1", "name": "a", "address": 0}, {"asset": "gd-1", "name": "b", "address": 1, "type": "int16"},
        {"asset": "gd-1", "name": "c", "address": 2, "type": "uint32"}]
BITS = 10
BIT_TAGS = [{"asset": "st-1", "name": f"d{i}", "register": "discrete", "address": i} for i in range(BITS)]

answers = st.one_of(
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
    st.tuples(st.just("short"), st.integers(1, 16)),
    st.tuples(st.just("exception"), st.integers(0, 255)),
    st.tuples(st.just("wrong_count"), st.integers(0, 255)),
    st.tuples(st.just("wrong_tid"), st.integers(1, 0xFFFF)),
    st.tuples(st.just("wrong_function"), st.sampled_from([1, 2, 4, 5, 6, 15, 16, 0x7F])),
    st.tuples(st.just("close"), st.just(0)),
    st.tuples(st.just("valid"), st.lists(st.integers(0, 0xFFFF), min_size=COUNT, max_size=COUNT)),
)


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def answer(kind: str, arg: object, tid: int, unit: int, fc: int = 3) -> bytes | None:
    # Function 3 answers COUNT registers; function 2 answers BITS discrete inputs in 2 bytes.
    regs = struct.pack(f">{COUNT}H", *range(COUNT)) if fc == 3 else bytes([0b10100101, 0b01])
    size = len(regs)
    good = frame(tid, unit, bytes([fc, size]) + regs)
    if kind == "garbage":
        return arg  # type: ignore[return-value]
    if kind == "short":
        return good[: min(int(arg), len(good) - 1)]  # type: ignore[call-overload]
    if kind == "exception":
        return frame(tid, unit, bytes([0x80 | fc, int(arg)]))  # type: ignore[call-overload]
    if kind == "wrong_count":
        n = int(arg)  # type: ignore[call-overload]
        if n == size:
            n += 2
        return frame(tid, unit, bytes([fc, n]) + regs)
    if kind == "wrong_tid":
        return frame((tid + int(arg)) & 0xFFFF, unit, bytes([fc, size]) + regs)  # type: ignore[call-overload]
    if kind == "wrong_function":
        other = int(arg) if int(arg) != fc else 4  # type: ignore[call-overload]
        return frame(tid, unit, bytes([other, size]) + regs)
    if kind == "close":
        return None
    values = arg
    if fc == 2:
        return frame(tid, unit, bytes([fc, 2, *values]))  # type: ignore[misc]
    return frame(tid, unit, bytes([3, 2 * COUNT]) + struct.pack(f">{COUNT}H", *values))  # type: ignore[arg-type]


async def run_one(kind: str, arg: object, fc: int = 3) -> list[tuple[str, object, str]]:
    handlers: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.append((task, writer))
        with contextlib.suppress(Exception):
            header = await reader.readexactly(7)
            tid, _pid, length, unit = struct.unpack(">HHHB", header)
            await reader.readexactly(length - 1)
            data = answer(kind, arg, tid, unit, fc)
            if data is None:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
            while await reader.read(1024):
                pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tm = TagMap.from_data({"devices": [{"name": "fuzz", "host": "127.0.0.1", "port": port, "timeout_s": 0.2,
                                        "connect_timeout_s": 1.0, "tags": TAGS if fc == 3 else BIT_TAGS}]})
    poller = DevicePoller(tm.devices[0], tm.tags["fuzz"])
    try:
        result = await poller.poll_once()
    finally:
        await poller.close()
        server.close()
        for _task, writer in handlers:
            writer.close()  # the handler sees the end of its stream and returns (no cancellation noise)
        for task, _writer in handlers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 2)
        await server.wait_closed()
    return [(r.tag.name, r.value, r.quality) for r in result.readings]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers)
def test_bad_answers_never_crash_and_are_marked_bad(case: tuple[str, object]) -> None:
    kind, arg = case
    readings = asyncio.run(run_one(kind, arg))
    assert len(readings) == len(TAGS)
    if kind == "valid":
        values = arg
        assert isinstance(values, list)
        expected = {"a": values[0], "b": values[1] - 0x10000 if values[1] >= 0x8000 else values[1],
                    "c": (values[2] << 16) | values[3]}
        assert {n: v for n, v, _ in readings} == expected
        assert {q for _, _, q in readings} == {"good"}
    else:
        assert all(q == "bad" and v is None for _, v, q in readings), (kind, arg, readings)


bit_answers = st.one_of(
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("short"), st.integers(1, 10)),
    st.tuples(st.just("exception"), st.integers(0, 255)),
    st.tuples(st.just("wrong_count"), st.integers(0, 255)),
    st.tuples(st.just("wrong_tid"), st.integers(1, 0xFFFF)),
    st.tuples(st.just("wrong_function"), st.sampled_from([1, 3, 4, 0x7F])),
    st.tuples(st.just("close"), st.just(0)),
    st.tuples(st.just("valid"), st.lists(st.integers(0, 255), min_size=2, max_size=2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bit_answers)
def test_bad_answers_to_bit_reads_are_marked_bad_too(case: tuple[str, object]) -> None:
    kind, arg = case
    readings = asyncio.run(run_one(kind, arg, fc=2))
    assert len(readings) == BITS
    if kind == "valid":
        raw = arg
        assert isinstance(raw, list)
        bits = [bool((raw[i // 8] >> (i % 8)) & 1) for i in range(BITS)]   # least significant bit first
        assert [v for _, v, _ in readings] == bits and {q for _, _, q in readings} == {"good"}
    else:
        assert all(q == "bad" and v is None for _, v, q in readings), (kind, arg, readings)
