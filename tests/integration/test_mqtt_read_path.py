"""MqttClient's buffered reader hands every message over intact when packets straddle its reads.

The reader takes up to ``READ_BYTES`` per recv and keeps an incomplete packet's bytes for the next
one; payloads are sliced from the received ``bytes``. Against a real Mosquitto, a stream of small,
read-sized and several-reads-long payloads must arrive complete, in order, as ``bytes``.
"""

from __future__ import annotations

import asyncio

from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient

SIZES = [1, 17, 250, MqttClient.READ_BYTES - 9, MqttClient.READ_BYTES + 3, 3 * MqttClient.READ_BYTES + 1, 90, 0]


def payload(n: int) -> bytes:
    size = SIZES[n % len(SIZES)]
    stamp = f"{n:06d}|".encode()
    return (stamp * (size // len(stamp) + 1))[:size]


async def test_messages_split_across_reads_arrive_whole_and_in_order(mosquitto: MosquittoProcess) -> None:
    got: list[Message] = []
    count = 400
    async with MqttClient(mosquitto.url, "read-path-sub") as sub:
        sub.subscribe("read/#", got.extend)
        await asyncio.sleep(0.2)  # the SUBACK
        async with MqttClient(mosquitto.url, "read-path-pub", max_pending=count) as pub:
            for n in range(count):
                pub.publish_nowait(f"read/{n % 7}", payload(n))
            await pub.flush()
        async with asyncio.timeout(20):
            while len(got) < count:
                await asyncio.sleep(0.05)
    assert [m.payload for m in got] == [payload(n) for n in range(count)]
    assert [m.topic for m in got] == [f"read/{n % 7}" for n in range(count)]
    assert all(type(m.payload) is bytes for m in got)
