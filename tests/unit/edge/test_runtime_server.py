"""The gateway runtime (``edge.runtime``): connection caps, deadlines, refusals and publication counting.

The server runs on a free port of 127.0.0.1 and is driven over real TCP sockets; the protocol is a
toy line protocol (``AUTH name``, ``DATA text``, anything else refused) so that only the runtime is
under test. The pure pieces (limiter, aggregator, rejection log, counter names) are table-checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from broker.contracts import DeadLetter, RejectReason, make_dead_letter
from edge.runtime.cli import run_gateway
from edge.runtime.connections import (
    MAX_CONNECTIONS,
    PER_ADDRESS,
    PREAUTH_PER_ADDRESS,
    ConnectionCaps,
    ConnectionLimiter,
)
from edge.runtime.counters import GatewayCounters
from edge.runtime.output import Publication, Rejection, SessionOutput
from edge.runtime.rejections import DeadLetterAggregator, RejectionLog, Summary
from edge.runtime.server import GatewayLimits, GatewayServer

# ---------------------------------------------------------------------------- a toy protocol


class LineSession:
    """``AUTH name`` authenticates, ``DATA text`` publishes, anything else is refused ``bad_line``."""

    def __init__(self, platform: LinePlatform, peer: str) -> None:
        self.platform, self.peer = platform, peer
        self.device: str | None = None
        self._buffer = b""

    @property
    def authenticated(self) -> bool:
        return self.device is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes, now: float) -> SessionOutput:
        out = SessionOutput()
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            verb, _, rest = line.decode().partition(" ")
            if verb == "AUTH":
                self.device = rest
                out.replies.append(b"OK\n")
            elif verb == "DATA" and self.device is not None:
                out.publications.append(Publication(f"toy/{self.device}", rest.encode()))
                out.replies.append(b"OK\n")
            else:
                self.platform.counters.rejected["bad_line"] += 1
                out.rejections.append(Rejection("bad_line", f"{line[:20]!r}", self.peer, self.device, None, line))
        return out

    def tick(self, now: float) -> SessionOutput:
        return SessionOutput()

    def close(self, reason: str) -> SessionOutput:
        self.platform.closes.append(reason)
        return SessionOutput()


@dataclass
class LinePlatform:
    counters: GatewayCounters = field(default_factory=GatewayCounters)
    closes: list[str] = field(default_factory=list)

    def new_session(self, peer: str) -> LineSession:
        return LineSession(self, peer)


def toy_dead_letter(rejection: Rejection, now: datetime) -> DeadLetter:
    return make_dead_letter("edge.toy", f"toy/{rejection.device_id or '-'}", rejection.raw, RejectReason.SCHEMA,
                            f"{rejection.reason}: {rejection.detail}", now)


@dataclass
class Rig:
    server: GatewayServer
    port: int
    published: list[tuple[str, bytes]]
    letters: list[DeadLetter]
    fail_publish: list[bool]
    gate: asyncio.Event
    """Publications wait for this (set: the sink takes them at once)."""

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


MakeRig = Callable[[GatewayLimits], Awaitable[Rig]]


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition (generous: the machine is shared)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 20.0) -> bool:
    """True once the server closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except ConnectionError:
        pass
    return True


@pytest.fixture
async def rig_factory() -> AsyncIterator[MakeRig]:
    servers: list[GatewayServer] = []

    async def make(limits: GatewayLimits) -> Rig:
        published: list[tuple[str, bytes]] = []
        letters: list[DeadLetter] = []
        fail = [False]
        gate = asyncio.Event()
        gate.set()

        async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
            await gate.wait()
            if fail[0]:
                raise ConnectionError("broker gone")
            published.append((topic, payload))

        async def dead_letter(letter: DeadLetter) -> None:
            letters.append(letter)

        server = GatewayServer(LinePlatform(), publish, name="toy", dead_letter_of=toy_dead_letter,
                               dead_letter=dead_letter, limits=limits)
        _, port = await server.start("127.0.0.1", 0)
        servers.append(server)
        return Rig(server, port, published, letters, fail, gate)

    yield make
    for server in servers:
        await server.stop(drain_timeout=2.0)


# ---------------------------------------------------------------------------- over TCP


async def test_unauthenticated_connections_per_address_are_capped_and_counted(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits(max_preauth_per_address=3, max_per_address=5, max_connections=100))
    conns = [await rig.connect() for _ in range(3)]
    await until(lambda: rig.server.stats()["connections_open"] == 3)
    reader, writer = await rig.connect()
    assert await closed_by_server(reader)  # the fourth unauthenticated one is refused at accept
    stats = rig.server.stats()
    assert stats["connections_refused"] == 1 and stats[f"refused.{PREAUTH_PER_ADDRESS}"] == 1
    assert stats["rejected.connection_limit"] == 1 and stats["connections_preauth"] == 3
    # Authenticating frees an unauthenticated place (not a place under the per-address cap).
    for n, (r, w) in enumerate(conns[:2]):
        w.write(f"AUTH dev-{n}\n".encode())
        assert await r.readline() == b"OK\n"
    await until(lambda: rig.server.stats()["connections_preauth"] == 1)
    extra = [await rig.connect() for _ in range(2)]  # 2 authenticated + 1 + 2 = the 5 per address
    await until(lambda: rig.server.stats()["connections_open"] == 5)
    reader, _ = await rig.connect()
    assert await closed_by_server(reader)
    stats = rig.server.stats()
    assert stats[f"refused.{PER_ADDRESS}"] == 1 and stats["connections_refused"] == 2
    assert stats["connections_total"] == 5
    await rig.server.flush()
    assert [letter.detail.split(":")[0] for letter in rig.letters] == ["connection_limit", "connection_limit"]
    for _, w in [*conns, *extra, (reader, writer)]:
        w.close()
    await until(lambda: rig.server.stats()["connections_open"] == 0)
    assert rig.server.stats()["connections_preauth"] == 0 and rig.server.limiter.per_address == {}


async def test_total_cap_refuses_further_connections(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits(max_connections=2))
    conns = [await rig.connect() for _ in range(2)]
    await until(lambda: rig.server.stats()["connections_open"] == 2)
    reader, _ = await rig.connect()
    assert await closed_by_server(reader)
    assert rig.server.stats()[f"refused.{MAX_CONNECTIONS}"] == 1
    conns[0][1].close()
    await until(lambda: rig.server.stats()["connections_open"] == 1)
    again = await rig.connect()  # a place is free again
    again[1].write(b"AUTH dev-2\n")
    assert await again[0].readline() == b"OK\n"


async def test_authentication_deadline_and_idle_timeout_close_and_count(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits(auth_timeout_s=0.3, idle_timeout_s=0.6, sweep_interval_s=0.05))
    silent, _ = await rig.connect()
    talker_r, talker_w = await rig.connect()
    talker_w.write(b"AUTH dev-3\n")
    assert await talker_r.readline() == b"OK\n"
    assert await closed_by_server(silent)
    assert await closed_by_server(talker_r)  # authenticated, then silent past the idle timeout
    stats = rig.server.stats()
    assert stats["closed.auth_timeout"] == 1 and stats["rejected.auth_timeout"] == 1 and stats["closed.idle"] == 1
    platform = rig.server.platform
    assert isinstance(platform, LinePlatform)
    await until(lambda: len(platform.closes) == 2)
    assert sorted(platform.closes) == ["authentication timeout", "idle timeout"]


async def test_refusals_are_all_counted_but_dead_lettered_in_aggregate(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits(dead_letter_burst=2, dead_letter_window_s=3600))
    reader, writer = await rig.connect()
    writer.write(b"AUTH dev-4\n" + b"garbage\n" * 50 + b"DATA hello\n")
    assert await reader.readline() == b"OK\n" and await reader.readline() == b"OK\n"
    await until(lambda: rig.published == [("toy/dev-4", b"hello")])
    await rig.server.flush()
    stats = rig.server.stats()
    assert stats["rejected.bad_line"] == 50 and stats["rejected"] == 50
    assert len(rig.letters) == 2 and stats["dead_letters_suppressed"] == 48
    assert stats["published"] == 1 + 2  # the telemetry and the two individual dead letters
    await rig.server.stop(drain_timeout=2.0)  # stopping closes the window: one summary for the rest
    summary = rig.letters[-1]
    assert len(rig.letters) == 3 and "48 more bad_line refusals from 127.0.0.1" in summary.detail


async def test_publish_failures_are_counted_and_the_gateway_carries_on(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits())
    reader, writer = await rig.connect()
    writer.write(b"AUTH dev-5\n")
    assert await reader.readline() == b"OK\n"
    rig.fail_publish[0] = True
    writer.write(b"DATA one\n")
    await until(lambda: rig.server.stats()["publish_failures"] == 1)
    # The message was not taken, so it is not answered: the device keeps it and sends it again.
    await until(lambda: rig.server.stats()["replies_withheld"] == 1)
    rig.fail_publish[0] = False
    writer.write(b"DATA two\n")
    assert await reader.readline() == b"OK\n"
    await until(lambda: rig.published == [("toy/dev-5", b"two")])
    assert rig.server.stats()["published"] == 1 and rig.server.stats()["replies_withheld"] == 1


async def test_an_answer_waits_until_the_sink_took_what_it_acknowledges(rig_factory: MakeRig) -> None:
    rig = await rig_factory(GatewayLimits())
    reader, writer = await rig.connect()
    writer.write(b"AUTH dev-6\n")
    assert await reader.readline() == b"OK\n"
    rig.gate.clear()  # the sink (the outbox) is slow
    writer.write(b"DATA one\n")
    await until(lambda: rig.server.stats()["queued"] >= 1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.readline()  # no answer while the message is only in memory
    assert rig.published == []
    rig.gate.set()
    assert await reader.readline() == b"OK\n"
    await until(lambda: rig.published == [("toy/dev-6", b"one")])
    assert rig.server.stats()["replies_withheld"] == 0


# ---------------------------------------------------------------------------- pure pieces


def test_limiter_caps_in_order_and_releases() -> None:
    limiter = ConnectionLimiter(ConnectionCaps(max_connections=4, max_per_address=3, max_preauth_per_address=2))
    assert limiter.admit("a") is None and limiter.admit("a") is None
    assert limiter.admit("a") == PREAUTH_PER_ADDRESS
    assert "2 unauthenticated connections from a" in limiter.describe(PREAUTH_PER_ADDRESS, "a")
    limiter.authenticated("a")
    assert limiter.admit("a") is None and limiter.admit("a") == PER_ADDRESS
    assert limiter.admit("b") is None and limiter.admit("c") == MAX_CONNECTIONS
    limiter.closed("a", authenticated=True)
    limiter.closed("a", authenticated=False)
    limiter.closed("a", authenticated=False)
    limiter.closed("b", authenticated=False)
    assert limiter.open == 0 and limiter.per_address == {} and limiter.preauth == {} and limiter.preauth_total == 0


def test_aggregator_windows_budgets_and_bounded_keys() -> None:
    agg = DeadLetterAggregator(burst=2, window_s=10.0, max_keys=2)
    assert [agg.admit("h", "garbage", 0.0) for _ in range(5)] == [True, True, False, False, False]
    assert [agg.admit("d", "garbage", 0.0, burst=4) for _ in range(5)] == [True] * 4 + [False]
    assert agg.admit("j", "garbage", 0.0)  # beyond max_keys: counted under ("*", reason)
    assert agg.due(5.0) == []
    assert sorted(agg.due(10.0), key=lambda s: s.source) == [Summary("d", "garbage", 1, 10.0),
                                                                 Summary("h", "garbage", 3, 10.0)]
    assert agg.suppressed_total == 4 and agg.due(10.0, all_=True) == []


def test_rejection_log_is_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    note = RejectionLog("toy", burst=2, window_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            note.note("bad_checksum", "peer:1", "x", device="1", what="msg 0x0200")
        note.note("garbage", "peer:1", "y")
        now[0] = 11.0
        note.note("bad_checksum", "peer:1", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refused bad_checksum" in m for m in lines) == 3
    assert sum("refused garbage" in m for m in lines) == 1
    assert any("3 more bad_checksum rejections" in m for m in lines)
    assert all(m.startswith("toy: ") for m in lines)


def test_counter_names_are_the_same_for_every_gateway() -> None:
    @dataclass
    class ProtocolCounters(GatewayCounters):
        messages: Counter[int] = field(default_factory=Counter)

    counters = GatewayCounters(connections_open=2, published=7)
    counters.rejected["bad_crc"] += 2
    counters.rejected["oversized"] += 1
    counters.closed["idle"] += 1
    counters.refused[PER_ADDRESS] += 1
    snap = counters.snapshot()
    assert snap["rejected"] == 3 and snap["rejected.bad_crc"] == 2 and snap["closed.idle"] == 1
    assert snap[f"refused.{PER_ADDRESS}"] == 1 and snap["connections_open"] == 2 and snap["published"] == 7
    assert {"bytes_in", "frames", "replies", "publish_failures", "connections_total", "connections_refused",
            "dead_letters_suppressed"} <= set(snap)
    keyed = ProtocolCounters()
    keyed.messages[0x0200] += 3
    assert keyed.snapshot()["messages.0x0200"] == 3


def test_a_gateway_that_cannot_start_exits_1_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def port_taken() -> None:
        raise OSError("[Errno 98] address already in use")

    async def served() -> None:
        return None

    with caplog.at_level(logging.ERROR):
        assert run_gateway("toy", port_taken()) == 1
    assert "toy: [Errno 98] address already in use" in caplog.text
    assert run_gateway("toy", served()) == 0
