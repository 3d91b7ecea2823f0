"""MQTT client layer benchmark: Vigil's paho-on-asyncio client against aiomqtt and threaded paho.

Starts a private Mosquitto, then for each client library measures, in separate processes so
that publisher and subscriber each have a core:
  - subscribe rate: a Vigil publisher sends N QoS 1 messages; the client under test receives them;
  - publish rate: the client under test publishes N QoS 1 messages (paced on its in-flight
    window where the library allows) to a Vigil subscriber.

Run: .venv/bin/python bench/bench_mqtt.py [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from broker.mosquitto import running_mosquitto
from broker.mqtt import MqttClient

PAYLOAD = b'{"v":1,"ts":"2026-11-26T05:49:02.123Z","metrics":{"speed_mps":1.21,"door":"closed","floor":7}}'
TOPIC = "vigil/v1/elevator/elev-{}/telemetry"


# ---------------------------------------------------------------- subscribers (report rate)

def sub_vigil(url: str, n: int, ready: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        count = 0
        first = 0.0
        done = asyncio.Event()

        def handler(batch: list) -> None:  # type: ignore[type-arg]
            nonlocal count, first
            if not first:
                first = time.perf_counter()
            count += len(batch)
            if count >= n:
                done.set()

        client = MqttClient(url, "bench-sub-vigil")
        client.subscribe("vigil/v1/#", handler)
        await client.start()
        ready.set()
        await asyncio.wait_for(done.wait(), 120)
        out.put(("vigil", count / (time.perf_counter() - first)))
        await client.stop()

    asyncio.run(main())


def sub_aiomqtt(url: str, n: int, ready: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import aiomqtt

    async def main() -> None:
        port = int(url.rsplit(":", 1)[1])
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub-aiomqtt", clean_session=False,
                                  protocol=aiomqtt.ProtocolVersion.V311) as client:
            await client.subscribe("vigil/v1/#", qos=1)
            ready.set()
            count = 0
            first = 0.0
            async for _msg in client.messages:
                if not first:
                    first = time.perf_counter()
                count += 1
                if count >= n:
                    break
            out.put(("aiomqtt", count / (time.perf_counter() - first)))

    asyncio.run(main())


def sub_paho_thread(url: str, n: int, ready: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    port = int(url.rsplit(":", 1)[1])
    done = threading.Event()
    state = {"count": 0, "first": 0.0}

    def on_message(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        if not state["first"]:
            state["first"] = time.perf_counter()
        state["count"] += 1
        if state["count"] >= n:
            done.set()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub-paho", protocol=paho.MQTTv311,
                    clean_session=False)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("vigil/v1/#", 1)
    c.loop_start()
    time.sleep(0.3)
    ready.set()
    done.wait(120)
    out.put(("paho (threaded loop)", state["count"] / (time.perf_counter() - state["first"])))
    c.loop_stop()


# ---------------------------------------------------------------- publishers

def pub_vigil(url: str, n: int, out: mp.Queue | None = None) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        async with MqttClient(url, "bench-pub-vigil", clean_start=True) as client:
            t = time.perf_counter()
            for i in range(n):
                await client.publish(TOPIC.format(i % 1000), PAYLOAD)
            await client.flush()
            if out is not None:
                out.put(("vigil", n / (time.perf_counter() - t)))

    asyncio.run(main())


def pub_aiomqtt(url: str, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import aiomqtt

    async def main() -> None:
        port = int(url.rsplit(":", 1)[1])
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-pub-aiomqtt", max_inflight_messages=1000) as c:
            t = time.perf_counter()
            for i in range(n):
                await c.publish(TOPIC.format(i % 1000), PAYLOAD, qos=1)
            out.put(("aiomqtt (awaits each PUBACK)", n / (time.perf_counter() - t)))

    asyncio.run(main())


def pub_paho_unpaced(url: str, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    port = int(url.rsplit(":", 1)[1])
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub-paho", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    infos = [c.publish(TOPIC.format(i % 1000), PAYLOAD, 1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    out.put(("paho (threaded, all queued at once)", n / (time.perf_counter() - t)))
    c.loop_stop()


def _preregister(url: str, client_id: str) -> None:
    """Create a persistent session with the subscription, then leave, so messages queue for it."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    port = int(url.rsplit(":", 1)[1])
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("vigil/v1/#", 1)
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def _sub_rate(url: str, n: int, target: object, client_id: str) -> tuple[str, float]:
    """Queue n messages for the subscriber's session first, so only its receive speed is timed."""
    ctx = mp.get_context("spawn")
    _preregister(url, client_id)
    pub = ctx.Process(target=pub_vigil, args=(url, n))
    pub.start()
    pub.join(300)
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=target, args=(url, n, ready, out))
    p.start()
    result = out.get(timeout=180)
    p.join(30)
    return result  # type: ignore[no-any-return]


def _pub_rate(url: str, n: int, target: object) -> tuple[str, float]:
    ctx = mp.get_context("spawn")
    ready, sub_out, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    sub = ctx.Process(target=sub_vigil, args=(url, n, ready, sub_out))
    sub.start()
    ready.wait(30)
    p = ctx.Process(target=target, args=(url, n, out))
    p.start()
    result = out.get(timeout=300)
    p.join(30)
    sub_out.get(timeout=60)
    sub.join(30)
    return result  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory() as tmp, running_mosquitto(Path(tmp) / "broker") as broker:
        print(f"Mosquitto {broker.url}, {n} QoS 1 messages of {len(PAYLOAD)} B, separate processes")
        print("subscribe rate (messages queued in the persistent session first, then drained)")
        for target, cid in ((sub_vigil, "bench-sub-vigil"), (sub_paho_thread, "bench-sub-paho"),
                            (sub_aiomqtt, "bench-sub-aiomqtt")):
            name, rate = _sub_rate(broker.url, n, target, cid)
            print(f"  {name:40s} {rate:10,.0f} msg/s")
        print("publish rate (subscriber: Vigil client)")
        for target in (pub_vigil, pub_paho_unpaced, pub_aiomqtt):
            name, rate = _pub_rate(broker.url, n if target is not pub_aiomqtt else min(n, 10_000), target)
            print(f"  {name:40s} {rate:10,.0f} msg/s")


if __name__ == "__main__":
    main()
