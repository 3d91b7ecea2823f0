"""Holding the HJ 212 gateway's sockets and memory, over real TCP, while a real logger keeps reporting.

Attackers connect from 127.0.0.1; the legitimate logger from 127.0.0.2 (its own address, as a
logger on its own SIM would be). Before the guards idle connections stayed for 10 minutes, a
byte every few seconds kept a connection forever, and one address could take every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hj212_harness import MN, LoggerLink, realtime, running_gateway

from broker.contracts import Telemetry, decode_device_message
from edge.hj212.gateway import GuardPolicy, ServerLimits, SessionPolicy

LOGGER_ADDRESS = "127.0.0.2"


async def _served(port: int, qn: str) -> None:
    """The legitimate logger connects, reports and gets its 9014."""
    logger = await LoggerLink.open(port, LOGGER_ADDRESS)
    await logger.send(realtime(qn=qn))
    [ack] = await logger.frames(1)
    assert ack.cn == "9014" and ack.qn == qn
    await logger.close()


async def test_idle_connections_from_one_address_are_capped_and_timed_out(mosquitto: Any) -> None:
    guard = GuardPolicy(max_preauth_per_address=8, preauth_timeout_s=3.0)
    async with running_gateway(mosquitto.url, guard) as (gateway, port, collector):
        idle = [await LoggerLink.open(port) for _ in range(30)]
        async with asyncio.timeout(10):
            while gateway.counters.connections_total + gateway.counters.connections_refused < 30:
                await asyncio.sleep(0.02)
        snapshot = gateway.counters.snapshot()
        assert snapshot["refused.unauthenticated_connections_per_address"] == 22
        await _served(port, "20261126080000001")
        # The idle ones are closed once their time to authenticate is up.
        for link in idle:
            await link.wait_closed_by_gateway()
            await link.close()
        assert gateway.counters.snapshot()["closed.auth_timeout"] == 8
        assert gateway.counters.connections_open == 0
        await _served(port, "20261126080000002")
        assert len(await collector.wait_for("/telemetry", 2)) == 2


async def test_slowloris_before_and_after_authentication_is_cut_off(mosquitto: Any) -> None:
    guard = GuardPolicy(preauth_timeout_s=1.0, frame_timeout_s=1.0)
    async with running_gateway(mosquitto.url, guard, limits=ServerLimits(idle_timeout_s=600.0)) as (
            gateway, port, _collector):
        frame = realtime()
        unauthenticated = await LoggerLink.open(port)
        authenticated = await LoggerLink.open(port)
        await authenticated.send(frame)
        assert [p.cn for p in await authenticated.frames(1)] == ["9014"]

        async def trickle(link: LoggerLink) -> None:
            # One byte every 0.1 s: each read would reset a plain idle timer.
            with contextlib.suppress(ConnectionError, OSError):
                for byte in frame:
                    await link.send(bytes([byte]))
                    await asyncio.sleep(0.1)

        trickles = [asyncio.create_task(trickle(link)) for link in (unauthenticated, authenticated)]
        await _served(port, "20261126080000003")
        await unauthenticated.wait_closed_by_gateway()
        await authenticated.wait_closed_by_gateway()
        for task in trickles:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        snapshot = gateway.counters.snapshot()
        assert snapshot["closed.auth_timeout"] == 1 and snapshot["closed.frame_timeout"] == 1
        for link in (unauthenticated, authenticated):
            await link.close()


async def test_huge_declared_lengths_do_not_grow_memory(mosquitto: Any) -> None:
    guard = GuardPolicy(preauth_timeout_s=2.0)
    policy = SessionPolicy(max_data_length=9999)  # the most a 4-digit length can declare
    async with running_gateway(mosquitto.url, guard, policy=policy) as (gateway, port, collector):
        links = [await LoggerLink.open(port) for _ in range(8)]
        for link in links:
            # Declares 9999 bytes and sends 9000 of them, then stalls; and "##9999" then a stream of junk.
            await link.send(b"##9999" + b"x" * 9000)
        await _served(port, "20261126080000004")
        held = gateway.buffered_bytes()
        assert held <= 8 * (9999 + 12)
        junk = await LoggerLink.open(port)
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(50):
                await junk.send(b"##9999" + b"\x00" * 65536)
        await junk.wait_closed_by_gateway()
        for link in links:
            await link.wait_closed_by_gateway()
            await link.close()
        await junk.close()
        snapshot = gateway.counters.snapshot()
        assert snapshot.get("closed.auth_timeout", 0) + snapshot.get("closed.frame_timeout", 0) == 8
        assert snapshot["closed.preauth_rejections"] == 1
        assert gateway.buffered_bytes() == 0
        [message] = await collector.wait_for("/telemetry", 1)
        decoded = decode_device_message(message.topic, message.payload)
        assert decoded.device_id == MN and isinstance(decoded.payload, Telemetry)


async def test_a_busy_logger_whose_reads_end_mid_frame_is_not_cut_off(mosquitto: Any) -> None:
    guard = GuardPolicy(frame_timeout_s=0.5)
    async with running_gateway(mosquitto.url, guard) as (gateway, port, collector):
        logger = await LoggerLink.open(port, LOGGER_ADDRESS)
        frames = [realtime(qn=f"20261126080001{n:03d}") for n in range(25)]
        stream = b"".join(frames)
        step = len(frames[0])
        # Every write ends half-way through a frame, for twice the frame timeout: progress, not trickling.
        for start in range(0, len(stream), step):
            await logger.send(stream[start + step // 2 if start else 0:start + step + step // 2])
            await asyncio.sleep(0.04)
        acks = await logger.frames(25)
        assert [a.cn for a in acks] == ["9014"] * 25 and not logger.closed
        assert "closed.frame_timeout" not in gateway.counters.snapshot()
        assert len(await collector.wait_for("/telemetry", 25)) == 25
        await logger.close()
