"""Dead-letter amplification: unauthenticated frames flooding the HJ 212 gateway, over real TCP.

Before the aggregation every refused frame became one MQTT dead letter, so an attacker who never
knew a password could make the gateway publish as fast as it could send garbage.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hj212_harness import MN, LoggerLink, realtime, running_gateway

from broker.contracts import decode_dead_letter
from edge.hj212.gateway import GuardPolicy

COUNT_RE = re.compile(r"count=(\d+)")


async def test_a_flood_of_refused_frames_is_summarised_and_every_one_counted(mosquitto: Any) -> None:
    guard = GuardPolicy(auth_delay_base_s=0.001, auth_delay_max_s=0.005, dead_letter_interval_s=0.5,
                        max_preauth_per_address=64)
    async with running_gateway(mosquitto.url, guard) as (gateway, port, collector):
        garbage = b"".join(realtime(qn=f"20261126080000{n:03d}")[:-6] + b"0000\r\n" for n in range(31))
        links = []
        for n in range(20):
            link = await LoggerLink.open(port)
            # 31 bad-CRC frames, then 3 guesses at an unknown MN, each connection.
            await link.send(garbage + b"".join(realtime(mn=f"5A13{n:020d}", pw="x", flag=4) for _ in range(3)))
            links.append(link)
        for link in links:
            await link.wait_closed_by_gateway()
            await link.close()
        snapshot = gateway.counters.snapshot()
        refused = snapshot["rejected"]
        assert snapshot["rejected.bad_crc"] == 20 * 31
        assert refused >= 20 * 32  # 31 bad CRCs and at least the first guess of every connection

        # Wait for the summaries of the interval, then account for every refusal.
        async with asyncio.timeout(15):
            while True:
                letters = [decode_dead_letter(m.payload) for m in collector.on("/deadletter/edge-hj212")]
                full = [d for d in letters if "aggregated" not in d.detail]
                summarised = sum(int(COUNT_RE.search(d.detail).group(1))  # type: ignore[union-attr]
                                 for d in letters if "aggregated" in d.detail)
                if len(full) + summarised == refused:
                    break
                await asyncio.sleep(0.1)
        # One full dead letter per reason and interval from the flooding address, the rest in summaries.
        assert len(letters) <= 12, [d.detail for d in letters]
        assert snapshot["dead_letters_suppressed"] == summarised
        assert all(d.topic == "hj212://127.0.0.1" for d in letters if "aggregated" in d.detail)


async def test_a_logger_that_authenticated_keeps_its_own_dead_letters(mosquitto: Any) -> None:
    guard = GuardPolicy(dead_letter_interval_s=0.5)
    async with running_gateway(mosquitto.url, guard) as (_, port, collector):
        link = await LoggerLink.open(port)
        await link.send(realtime())
        [ack] = await link.frames(1)
        assert ack.cn == "9014"
        # A logger with a flaky line: its refused frames are worth reading one by one.
        await link.send(b"".join(realtime(qn=f"20261126080001{n:03d}")[:-6] + b"0000\r\n" for n in range(5)))
        letters = await collector.wait_for("/deadletter/edge-hj212", 5)
        assert [decode_dead_letter(m.payload).reason.value for m in letters] == ["schema"] * 5
        assert all("PW=***" in decode_dead_letter(m.payload).payload for m in letters)
        assert f"/{MN}/telemetry" in (await collector.wait_for("/telemetry", 1))[0].topic
        await link.close()
