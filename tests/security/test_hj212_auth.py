"""Password guessing against the HJ 212 gateway, over real TCP (real Mosquitto behind it).

Before the guards, one connection could try ~3,000 passwords a second, and the answer told a
registered MN (QnRtn=3, PW error) from an unknown one (QnRtn=4, MN error).
"""

from __future__ import annotations

import time
from typing import Any

from hj212_harness import MN, PW, LoggerLink, realtime, running_gateway

from edge.hj212.codec import build_segment, parse_packet
from edge.hj212.gateway import GuardPolicy


async def test_pipelined_guesses_end_the_connection_after_three_failures(mosquitto: Any) -> None:
    guard = GuardPolicy(auth_delay_base_s=0.01, auth_delay_max_s=0.02)
    async with running_gateway(mosquitto.url, guard) as (gateway, port, collector):
        attacker = await LoggerLink.open(port)
        guesses = b"".join(realtime(pw=f"{n:06d}", qn=f"20261126080000{n % 1000:03d}") for n in range(200))
        await attacker.send(guesses)
        answers = await attacker.wait_closed_by_gateway()
        # Three guesses were checked and answered; the other 197 were never tried.
        assert [(p.cn, p.get("QnRtn")) for p in answers] == [("9011", "3")] * 3
        snapshot = gateway.counters.snapshot()
        assert snapshot["auth_failures"] == 3 and snapshot["closed.auth_failures"] == 1
        assert snapshot["frames_ignored"] >= 190
        assert collector.on("/telemetry") == []
        await attacker.close()


async def test_wrong_password_and_unknown_mn_get_the_same_answer(mosquitto: Any) -> None:
    guard = GuardPolicy(auth_delay_base_s=0.01, auth_delay_max_s=0.02)
    async with running_gateway(mosquitto.url, guard) as (_, port, _collector):
        other_mn = "010000A8900016F000169DC9"
        answers = []
        for mn in (MN, other_mn):
            link = await LoggerLink.open(port)
            await link.send(realtime(mn=mn, pw="000000"))
            [answer] = await link.frames(1)
            answers.append(answer)
            await link.close()
        registered, unknown = answers
        assert registered.cn == unknown.cn == "9011" and registered.get("QnRtn") == "3"
        # Byte for byte the same reply, but for the MN echoed back.
        assert build_segment(registered) == build_segment(unknown).replace(other_mn, MN)


async def test_each_further_failure_waits_longer_across_connections(mosquitto: Any) -> None:
    guard = GuardPolicy(auth_delay_base_s=0.2, auth_delay_max_s=0.8)
    async with running_gateway(mosquitto.url, guard) as (gateway, port, _collector):
        waited = []
        link = await LoggerLink.open(port)
        for n in range(3):
            started = time.monotonic()
            await link.send(realtime(pw=f"guess{n}"))
            [answer] = await link.frames(1)
            waited.append(time.monotonic() - started)
            assert answer.get("QnRtn") == "3"
        await link.wait_closed_by_gateway()
        # A new connection does not start over: the MN and the address remember their failures.
        fresh = await LoggerLink.open(port)
        started = time.monotonic()
        await fresh.send(realtime(pw="guess3"))
        [answer] = await fresh.frames(1)
        waited.append(time.monotonic() - started)
        # Lower bounds only: a sleep never ends early, however loaded the machine is.
        assert waited[0] >= 0.2 and waited[1] >= 0.4 and waited[2] >= 0.8 and waited[3] >= 0.8
        # The logger that knows its PW is not locked out by the guesser.
        await fresh.close()
        logger = await LoggerLink.open(port)
        await logger.send(realtime())
        [ack] = await logger.frames(1)
        assert ack.cn == "9014"
        assert gateway.counters.snapshot()["auth_failures"] == 4
        await logger.close()


async def test_the_answer_to_a_guess_never_carries_the_real_password(mosquitto: Any) -> None:
    guard = GuardPolicy(auth_delay_base_s=0.01, auth_delay_max_s=0.02)
    async with running_gateway(mosquitto.url, guard) as (_, port, collector):
        link = await LoggerLink.open(port)
        await link.send(realtime(pw="guess"))
        [answer] = await link.frames(1)
        assert answer.pw == "guess" and PW not in build_segment(answer)
        letters = await collector.wait_for("/deadletter/edge-hj212", 1)
        assert all(PW.encode() not in m.payload and b"guess" not in m.payload for m in letters)
        assert parse_packet(build_segment(answer)).cn == "9011"
        await link.close()
