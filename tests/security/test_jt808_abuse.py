"""TCP abuse of the JT/T 808 listener (issue 14 #8), over real sockets against the real gateway and Mosquitto.

Each attack must end in a counted refusal with bounded memory while a legitimate terminal, already
online, keeps getting its positions published. Attackers connect from other loopback addresses
(127.0.0.2 ...) so the per-address caps apply to them and not to the legitimate terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jt808_rig import LEGIT_PHONE, Rig, Terminal, legit_terminal, start_rig, still_served, until

from broker.mosquitto import MosquittoProcess
from edge.jt808.codec import MAX_ESCAPED_FRAME, encode_frame
from edge.jt808.gateway import GatewayLimits
from edge.jt808.limits import ReassemblyLimits
from edge.jt808.messages import MsgId

LIMITS = GatewayLimits(auth_timeout_s=2.0, sweep_interval_s=0.1, max_connections=40, max_per_address=12,
                       max_preauth_per_address=6, dead_letter_burst=3, dead_letter_window_s=0.5)
REASSEMBLY = ReassemblyLimits(per_connection_bytes=8 * 1024, total_bytes=12 * 1024, max_pending=4, max_packets=64)


@contextlib.asynccontextmanager
async def abuse_rig(mosquitto: MosquittoProcess, **limits: Any) -> AsyncIterator[tuple[Rig, Terminal]]:
    """The gateway with small limits (``limits`` override some) and the legitimate terminal online."""
    async with start_rig(mosquitto, limits=dataclasses.replace(LIMITS, **limits), reassembly=REASSEMBLY) as rig:
        legit = await legit_terminal(rig)
        await still_served(rig, legit, 30.0, 0)
        yield rig, legit
        legit.close()


@pytest.fixture
async def rig(mosquitto: MosquittoProcess) -> AsyncIterator[tuple[Rig, Terminal]]:
    async with abuse_rig(mosquitto) as pair:
        yield pair


def accounted(rig: Rig, source: str) -> tuple[int, int]:
    """Dead letters about ``source``: (sent individually, refusals summarised in aggregate ones)."""
    single = summarised = 0
    for d in rig.inbox.dead:
        if source not in d.detail:
            continue
        if "aggregated" in d.detail:
            summarised += int(d.detail.split(": ", 1)[1].split(" ", 1)[0])
        else:
            single += 1
    return single, summarised


async def open_many(rig: Rig, source: str, n: int) -> list[Terminal]:
    return [await Terminal.open(rig, "013900000001", source=source) for _ in range(n)]


async def test_slowloris_one_byte_per_second_is_cut_off_by_the_authentication_deadline(
        rig: tuple[Rig, Terminal]) -> None:
    gateway_rig, legit = rig
    attacker = await Terminal.open(gateway_rig, "013900000001", source="127.0.0.2")
    frame = encode_frame(MsgId.REGISTER, "013900000001", 1, bytes(37))
    closed = False
    for i, byte in enumerate(frame):
        try:
            attacker.writer.write(bytes((byte,)))
            await attacker.writer.drain()
        except ConnectionError:
            closed = True
            break
        if attacker.reader.at_eof() or (i and await _eof_within(attacker, 1.0)):
            closed = True
            break
        await still_served(gateway_rig, legit, 30.0 + (i + 1) / 1e4, i + 1)
    # The deadline counts from the connection's start: bytes trickling in do not extend it.
    assert closed, "the gateway kept a connection that never authenticated"
    counters = gateway_rig.gateway.stats()
    assert counters["closed.auth_timeout"] == 1 and counters["rejected.auth_timeout"] == 1
    assert counters["buffered_bytes"] <= MAX_ESCAPED_FRAME
    await until(lambda: "auth_timeout" in gateway_rig.inbox.dead_reasons())
    await still_served(gateway_rig, legit, 30.5, 100)


async def _eof_within(term: Terminal, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return not await term.reader.read(4096)
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_a_huge_unterminated_frame_is_dropped_without_buffering_it(rig: tuple[Rig, Terminal]) -> None:
    gateway_rig, legit = rig
    attacker = await Terminal.open(gateway_rig, "013900000001", source="127.0.0.2")
    # A header declaring the largest body, then a megabyte without a closing flag.
    head = encode_frame(MsgId.LOCATION, "013900000001", 1, bytes(1023))[:-2]
    attacker.writer.write(head)
    peak = 0
    for i in range(16):
        try:
            attacker.writer.write(b"\x01" * 65536)
            await attacker.writer.drain()
        except ConnectionError:
            break
        peak = max(peak, gateway_rig.gateway.stats()["buffered_bytes"])
        if i % 4 == 0:
            await still_served(gateway_rig, legit, 31.0 + i / 1e4, i + 1)
    await until(lambda: gateway_rig.gateway.stats().get("rejected.frame_too_long", 0) == 1)
    assert peak <= MAX_ESCAPED_FRAME and gateway_rig.gateway.stats()["buffered_bytes"] <= MAX_ESCAPED_FRAME
    assert await attacker.closed_by_gateway()
    assert gateway_rig.gateway.stats()["closed.auth_timeout"] == 1
    await until(lambda: {"frame_too_long", "auth_timeout"} <= set(gateway_rig.inbox.dead_reasons()))
    await still_served(gateway_rig, legit, 31.5, 100)


async def test_idle_connections_beyond_the_caps_are_refused_counted_and_the_rest_time_out(
        mosquitto: MosquittoProcess) -> None:
    # A deadline long enough for all the connections to be opened first, a window covering the test.
    async with abuse_rig(mosquitto, auth_timeout_s=8.0, dead_letter_window_s=60.0) as pair:
        await _idle_connections(*pair)


async def _idle_connections(gateway_rig: Rig, legit: Terminal) -> None:
    held: list[Terminal] = []
    # Ten addresses, ten idle connections each: 6 unauthenticated per address, 40 in all, are let in.
    for a in range(10):
        held += await open_many(gateway_rig, f"127.0.3.{a + 1}", 10)
    await until(lambda: gateway_rig.gateway.stats()["connections_refused"] == 100 - 39)
    counters = gateway_rig.gateway.stats()
    assert counters["connections_open"] == 40  # the cap, the legitimate terminal included
    assert counters["rejected.connection_limit"] == 61
    await still_served(gateway_rig, legit, 32.0, 1)
    # The legitimate terminal is not affected by the others' caps, and the idle ones are cut off.
    await until(lambda: gateway_rig.gateway.stats()["connections_open"] == 1)
    assert gateway_rig.gateway.stats()["closed.auth_timeout"] == 39
    assert all([await t.closed_by_gateway() for t in held])
    await still_served(gateway_rig, legit, 32.5, 100)
    # Refusals are dead-lettered per address in aggregate: a few each, the rest in one summary.
    await gateway_rig.gateway.stop()
    await until(lambda: sum(accounted(gateway_rig, "127.0.3.")) == 61 + 39)
    single, summarised = accounted(gateway_rig, "127.0.3.")
    assert single <= 10 * 2 * LIMITS.dead_letter_burst and summarised >= 100 - single


async def test_garbage_at_rate_is_counted_and_dead_lettered_in_aggregate(mosquitto: MosquittoProcess) -> None:
    async with abuse_rig(mosquitto, dead_letter_window_s=60.0) as pair:
        await _garbage(*pair)


async def _garbage(gateway_rig: Rig, legit: Terminal) -> None:
    # Tiny frames with bad check codes (each answerable), tiny non-frames, noise: 64 KiB a connection.
    bad = bytearray(encode_frame(MsgId.HEARTBEAT, "013900000001", 7))
    bad[-2] ^= 0x55
    junk = (bytes(bad) + b"\x7e\x01\x02\x7e" + b"noise") * (65536 // (len(bad) + 9))
    for round_ in range(20):
        attacker = await Terminal.open(gateway_rig, "013900000001", source="127.0.0.2")
        try:
            attacker.writer.write(junk)
            await attacker.writer.drain()
        except ConnectionError:
            pass
        assert await attacker.closed_by_gateway()
        if round_ % 5 == 0:
            await still_served(gateway_rig, legit, 33.0 + round_ / 1e4, round_ + 1)
    counters = gateway_rig.gateway.stats()
    # Each connection is dropped after a handful of refusals; each refusal is counted.
    assert counters["rejected.too_many_errors"] == 20
    refused = sum(v for k, v in counters.items() if k.startswith("rejected.") and k != "rejected.too_many_errors")
    assert refused == 20 * LIMITS_PREAUTH_ERRORS
    await still_served(gateway_rig, legit, 33.5, 100)
    # A few dead letters per reason and address, the rest in summaries: not one per refused frame,
    # and every refusal accounted for.
    await gateway_rig.gateway.stop()
    total = refused + 20
    await until(lambda: sum(accounted(gateway_rig, "127.0.0.2")) == total)
    single, _ = accounted(gateway_rig, "127.0.0.2")
    assert single <= 4 * LIMITS.dead_letter_burst < total / 10


LIMITS_PREAUTH_ERRORS = 8
"""``AttemptLimits().max_preauth_errors``: refusals before an unauthenticated connection is dropped."""


async def test_split_packet_floods_hold_nothing_before_authentication_and_a_bounded_budget_after(
        rig: tuple[Rig, Terminal]) -> None:
    gateway_rig, legit = rig
    # Before authentication: the first packets of 64-packet messages are refused, none is kept.
    for _ in range(5):
        attacker = await Terminal.open(gateway_rig, "013900000001", source="127.0.0.2")
        flood = b"".join(encode_frame(MsgId.BATCH_LOCATION, "013900000001", 64 * i, bytes(1000), packet=(64, 1))
                         for i in range(50))
        try:
            attacker.writer.write(flood)
            await attacker.writer.drain()
        except ConnectionError:
            pass
        assert await attacker.closed_by_gateway()
        assert gateway_rig.gateway.stats()["reassembly_bytes"] == 0
    counters = gateway_rig.gateway.stats()
    assert counters["reassembly_bytes_peak"] == 0 and counters["rejected.not_authenticated"] == 5 * LIMITS_PREAUTH_ERRORS
    # After authentication (the legitimate terminal misbehaving): bounded per connection and in total.
    for i in range(40):
        legit.writer.write(encode_frame(MsgId.BATCH_LOCATION, LEGIT_PHONE, 1000 + 64 * i, bytes(1000),
                                        packet=(64, 1)))
    await legit.writer.drain()
    await until(lambda: gateway_rig.gateway.stats().get("rejected.split_overflow", 0) >= 30)
    counters = gateway_rig.gateway.stats()
    assert counters["reassembly_bytes_peak"] <= REASSEMBLY.per_connection_bytes <= REASSEMBLY.total_bytes
    await still_served(gateway_rig, legit, 34.0, 1)
    legit.close()
    await until(lambda: gateway_rig.gateway.stats()["reassembly_bytes"] == 0)  # released with the connection
