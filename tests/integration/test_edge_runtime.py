"""EdgeLink against a real Mosquitto: store-and-forward across broker stop/start, presence, bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import msgspec

from broker.contracts import DeviceStatus
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient
from edge.runtime import EdgeIdentity, EdgeLink

TOPIC = "vigil/v1/elevator/e1/telemetry"
STATUS = "vigil/v1/elevator/e1/status"


class Collector:
    """A subscriber with a persistent session that records payloads in arrival order."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.payloads: list[bytes] = []
        self.client = MqttClient(url, f"collector-{uuid.uuid4().hex[:8]}", backoff_min=0.05, backoff_max=0.5)
        self.client.subscribe(topic_filter, self._on)

    def _on(self, batch: list[Message]) -> None:
        self.payloads.extend(m.payload for m in batch)

    def numbers(self) -> list[int]:
        return [int(p) for p in self.payloads]

    async def wait_for(self, predicate: object, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.02)


def first_occurrences(values: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def make_link(url: str, data_dir: Path, **kw: object) -> EdgeLink:
    identity = EdgeIdentity.for_device("elevator", "e1", agent="vigil-test")
    return EdgeLink(url, identity, data_dir, backoff_min=0.05, backoff_max=0.3, **kw)  # type: ignore[arg-type]


async def test_on_acked_hook_reports_each_puback(mosquitto: MosquittoProcess) -> None:
    acks: list[tuple[int, bool]] = []
    async with MqttClient(mosquitto.url, "ack-hook") as client:
        for i in range(50):
            client.publish_nowait(TOPIC, b"%d" % i, on_acked=lambda ok, i=i: acks.append((i, ok)))
        await client.flush()
    assert sorted(acks) == [(i, True) for i in range(50)]


async def test_store_and_forward_across_broker_restart(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    sub = Collector(mosquitto.url, TOPIC)
    await sub.client.start()
    link = make_link(mosquitto.url, tmp_path / "edge", window=20)
    await link.start()
    assert await link.wait_connected(5)
    for i in range(300):
        link.publish(TOPIC, b"%d" % i)
    await sub.wait_for(lambda: len(sub.payloads) >= 50, 10)

    await asyncio.to_thread(mosquitto.stop)
    await link.wait_connected(0)  # let the loop see the disconnect
    async with asyncio.timeout(5):
        while link.connected:
            await asyncio.sleep(0.02)
    for i in range(300, 1000):
        link.publish(TOPIC, b"%d" % i)
    assert len(link.outbox) >= 700  # waiting on disk while the broker is away
    await asyncio.sleep(0.3)
    assert not link.connected

    await asyncio.to_thread(mosquitto.start)
    async with asyncio.timeout(30):
        await link.flush()
    await sub.wait_for(lambda: len(set(sub.numbers())) >= 1000, 30)
    await link.stop()
    await sub.client.stop()

    got = sub.numbers()
    assert first_occurrences(got) == list(range(1000))  # nothing lost, order kept
    stats = link.stats()
    assert stats["dropped"] == 0
    assert stats["delivered"] == 1000
    assert stats["queued"] == 0
    assert stats["connects"] >= 2


async def test_bound_drops_oldest_and_counts(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    sub = Collector(mosquitto.url, TOPIC)
    await sub.client.start()
    link = make_link(mosquitto.url, tmp_path / "edge", max_queued=50)
    await link.start()
    assert await link.wait_connected(5)
    await asyncio.to_thread(mosquitto.stop)
    async with asyncio.timeout(5):
        while link.connected:
            await asyncio.sleep(0.02)
    for i in range(80):
        link.publish(TOPIC, b"%d" % i)
    assert len(link.outbox) == 50
    assert link.stats()["dropped"] == 30

    await asyncio.to_thread(mosquitto.start)
    async with asyncio.timeout(30):
        await link.flush()
    await sub.wait_for(lambda: len(set(sub.numbers())) >= 50, 20)
    await asyncio.sleep(0.2)
    await link.stop()
    await sub.client.stop()
    assert first_occurrences(sub.numbers()) == list(range(30, 80))  # the 30 oldest were dropped


async def test_outbox_survives_agent_restart(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    await asyncio.to_thread(mosquitto.stop)
    first = make_link(mosquitto.url, tmp_path / "edge")
    await first.start()
    for i in range(100):
        first.publish(TOPIC, b"%d" % i)
    await first.stop(timeout=0.2)  # broker away: nothing delivered, all kept on disk

    await asyncio.to_thread(mosquitto.start)
    sub = Collector(mosquitto.url, TOPIC)
    await sub.client.start()
    second = make_link(mosquitto.url, tmp_path / "edge")
    assert len(second.outbox) == 100
    await second.start()
    async with asyncio.timeout(20):
        await second.flush()
    await sub.wait_for(lambda: len(set(sub.numbers())) >= 100, 10)
    await second.stop()
    await sub.client.stop()
    assert first_occurrences(sub.numbers()) == list(range(100))


async def test_retained_online_status_and_last_will(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from edge.runtime import EdgeIdentity, EdgeLink
        async def main():
            link = EdgeLink({mosquitto.url!r}, EdgeIdentity.for_device("elevator", "e1", agent="vigil-test"),
                            Path({str(tmp_path / 'agent')!r}), keepalive=2, heartbeat_s=0.3)
            await link.start()
            await link.wait_connected(5)
            print("up", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 20)
        assert line.strip() == b"up"
        statuses: list[DeviceStatus] = []
        watcher = MqttClient(mosquitto.url, "status-watch", clean_start=True)
        watcher.subscribe(STATUS, lambda b: statuses.extend(msgspec.json.decode(m.payload, type=DeviceStatus)
                                                            for m in b))
        await watcher.start()
        async with asyncio.timeout(10):
            while not any(s.reason == "heartbeat" for s in statuses):
                await asyncio.sleep(0.05)
        assert statuses[0].online  # the retained status seen on subscribe says online
        beat = next(s for s in statuses if s.reason == "heartbeat")
        assert beat.online and beat.agent == "vigil-test" and beat.detail["queued"] == 0
        agent.kill()  # vanish without DISCONNECT: the broker publishes the will
        agent.wait(5)
        async with asyncio.timeout(10):
            while statuses[-1].online:
                await asyncio.sleep(0.05)
        assert statuses[-1].reason == "connection_lost"
        await watcher.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)

    # A clean stop says offline/shutdown, retained for late subscribers.
    link = make_link(mosquitto.url, tmp_path / "edge2")
    await link.start()
    assert await link.wait_connected(5)
    await asyncio.sleep(0.2)
    await link.stop()
    late: list[DeviceStatus] = []
    async with MqttClient(mosquitto.url, "late-watch", clean_start=True) as late_client:
        late_client.subscribe(STATUS, lambda b: late.extend(msgspec.json.decode(m.payload, type=DeviceStatus)
                                                            for m in b))
        async with asyncio.timeout(5):
            while not late:
                await asyncio.sleep(0.05)
    assert late[0].online is False and late[0].reason == "shutdown"


async def test_credentials_acl_refusal_counted_and_queue_not_blocked(tmp_path: Path) -> None:
    from broker.mosquitto import running_mosquitto
    from broker.registry import DeviceRegistry

    registry = DeviceRegistry.from_data({
        "devices": [{"id": "elev-1", "kind": "elevator", "password": "pw-one"},
                    {"id": "elev-2", "kind": "elevator", "password": "pw-two"}],
        "services": [{"name": "vigil-platform", "role": "platform", "password": "platform-pw"}],
    })
    with running_mosquitto(tmp_path / "broker", registry) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        got: list[Message] = []
        platform = MqttClient(broker.account_url("vigil-platform", "platform-pw"), "platform-watch",
                              clean_start=True)
        platform.subscribe("vigil/v1/elevator/+/telemetry", got.extend)
        await platform.start()
        identity = EdgeIdentity.for_device("elevator", "elev-1", agent="vigil-test", password="pw-one")
        link = EdgeLink(url, identity, tmp_path / "edge", backoff_min=0.05, backoff_max=0.3)
        link.publish("vigil/v1/elevator/elev-1/telemetry", b"1")
        link.publish("vigil/v1/elevator/elev-2/telemetry", b"2")  # not this device's topic: the ACL refuses it
        link.publish("vigil/v1/elevator/elev-1/telemetry", b"3")
        await link.start()
        async with asyncio.timeout(10):
            await link.flush()  # the refused message does not block the ones behind it
        async with asyncio.timeout(5):
            while len(got) < 2:
                await asyncio.sleep(0.02)
        await link.stop()
        assert [m.payload for m in got] == [b"1", b"3"]
        assert link.stats()["refused_by_broker"] == 1 and link.stats()["delivered"] == 3

        wrong = EdgeLink(url, EdgeIdentity.for_device("elevator", "elev-2", agent="t", password="wrong"),
                         tmp_path / "edge2", backoff_min=0.05, backoff_max=0.1)
        wrong.publish("vigil/v1/elevator/elev-2/telemetry", b"x")
        await wrong.start()
        async with asyncio.timeout(10):
            while wrong.counters["connect_refusals"] < 2:  # keeps trying, never crashes
                await asyncio.sleep(0.02)
        assert not wrong.connected and len(wrong.outbox) == 1  # kept for when the password is fixed
        await wrong.stop(timeout=0.2)
        await platform.stop()


async def test_set_online_reports_the_device_behind_the_agent(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    statuses: list[DeviceStatus] = []
    watcher = MqttClient(mosquitto.url, "status-watch-2", clean_start=True)
    watcher.subscribe(STATUS, lambda b: statuses.extend(msgspec.json.decode(m.payload, type=DeviceStatus)
                                                        for m in b))
    await watcher.start()
    link = make_link(mosquitto.url, tmp_path / "edge", heartbeat_s=0.2)
    await link.start()
    assert await link.wait_connected(5)
    link.set_online(False, "box_unreachable")
    async with asyncio.timeout(5):
        while not any(s.reason == "box_unreachable" for s in statuses):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # heartbeats keep saying offline while the box is away
    after = statuses[next(i for i, s in enumerate(statuses) if s.reason == "box_unreachable"):]
    assert len(after) >= 2 and all(not s.online and s.reason == "box_unreachable" for s in after)
    link.set_online(True, "box_recovered")
    async with asyncio.timeout(5):
        while not statuses[-1].online:
            await asyncio.sleep(0.02)
    await link.stop()
    await watcher.stop()
    first_offline = next(i for i, s in enumerate(statuses) if s.reason == "box_unreachable")
    recovered = [s for s in statuses[first_offline:] if s.online]
    assert recovered and recovered[0].reason == "changed"  # published at once, not at the next heartbeat
