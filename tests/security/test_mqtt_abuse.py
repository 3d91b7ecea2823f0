"""MQTT abuse: a device and a gateway account flood a real Mosquitto with bad messages while good
ones flow; the real platform ingest counts every refusal, keeps processing the good messages and its
memory stays flat from one flood round to the next."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from broker.contracts import MAX_PAYLOAD_BYTES, RejectReason
from broker.mosquitto import running_mosquitto
from broker.mqtt import MqttClient
from tests.security.mqtt_rig import REGISTRY, running_platform, url, wait_until

GOOD = b'{"v":1,"ts":"2026-11-26T05:00:00Z","metrics":{"speed_mps":1.0}}'
ROUNDS = 4
PER_KIND = 150  # per round and kind of bad message

# What the device itself may publish on (its own telemetry) but in bad shapes: ingest refuses these.
DEVICE_BAD: dict[RejectReason, bytes] = {
    RejectReason.MALFORMED_JSON: b'{"v":1,"ts":"2026-11-26T05:00:00Z","metrics":{',
    RejectReason.TOO_LARGE: b'{"v":1,"pad":"' + b"x" * (MAX_PAYLOAD_BYTES + 100) + b'"}',
    RejectReason.SCHEMA: b'{"v":1,"ts":"yesterday","metrics":"fast"}',
    RejectReason.NOT_UTF8: b'{"v":1,"ts":"\xff\xfe"}',
    RejectReason.UNSUPPORTED_VERSION: b'{"v":99,"ts":"2026-11-26T05:00:00Z","metrics":{}}',
}
# Topics the device account is not allowed: Mosquitto refuses them (PUBACK "not authorized").
DEVICE_FORBIDDEN = ["vigil/v1/elevator/elev-2/telemetry", "vigil/v1/elevator/elev-1/command",
                    "vigil/v1/alerts/elevator/elev-1/x", "vigil/v1/transitions/elevator/elev-1", "$SYS/x", "other/topic"]
# A gateway may publish for any elevator: unregistered or malformed device ids are refused by ingest.
GATEWAY_BAD: dict[RejectReason, list[str]] = {
    RejectReason.UNKNOWN_DEVICE: ["vigil/v1/elevator/elev-404/telemetry", "vigil/v1/elevator/ghost/telemetry"],
    RejectReason.BAD_TOPIC: ["vigil/v1/elevator/bad id!/telemetry"],
}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_bad_messages_at_rate_are_all_counted_and_good_ones_keep_flowing(tmp_path: Path) -> None:
    expected: Counter[RejectReason] = Counter()
    acks: Counter[bool] = Counter()
    good_sent = 0
    rss: list[int] = []
    with running_mosquitto(tmp_path / "broker", REGISTRY) as broker:
        async with running_platform(broker, tmp_path / "platform") as platform, \
                MqttClient(url(broker, "elev-1"), "box", clean_start=True, max_pending=200) as device, \
                MqttClient(url(broker, "vigil-gw-elev"), "gw", clean_start=True, max_pending=200) as gateway:
            ingest = platform.ingest
            for _round in range(ROUNDS):
                for i in range(PER_KIND):
                    for reason, payload in DEVICE_BAD.items():
                        device.publish_nowait("vigil/v1/elevator/elev-1/telemetry", payload)
                        expected[reason] += 1
                    topic = DEVICE_FORBIDDEN[i % len(DEVICE_FORBIDDEN)]
                    device.publish_nowait(topic, GOOD, on_acked=lambda ok: acks.update([ok]))
                    for reason, topics in GATEWAY_BAD.items():
                        gateway.publish_nowait(topics[i % len(topics)], GOOD)
                        expected[reason] += 1
                    device.publish_nowait("vigil/v1/elevator/elev-1/telemetry", GOOD)
                    gateway.publish_nowait("vigil/v1/elevator/elev-2/status", b'{"v":1,"ts":"2026-11-26T05:00:00Z",'
                                                                           b'"online":true}')
                    good_sent += 2
                    if i % 25 == 24:
                        await device.flush()
                        await gateway.flush()
                await device.flush()
                await gateway.flush()
                total = good_sent + sum(expected.values())
                await wait_until(lambda total=total: ingest.accepted + sum(ingest.rejected.values()) >= total,
                                 60, "ingest to catch up")
                rss.append(_rss_kib())
            assert ingest.accepted == good_sent
            assert ingest.rejected == expected
            # The forbidden topics never reached the platform: the broker refused each one to the device.
            assert acks == Counter({False: ROUNDS * PER_KIND})
            # Good messages still flow after the flood.
            before = ingest.accepted
            await device.publish("vigil/v1/elevator/elev-1/telemetry", GOOD)
            await wait_until(lambda: ingest.accepted == before + 1, 10, "a good message after the flood")
            assert platform.mqtt.connected and platform.mqtt.counters["disconnects"] == 0
            assert platform.mqtt.counters["handler_errors"] == 0
    # Memory: after the first round has warmed caches up, later rounds add (almost) nothing.
    growth_kib = rss[-1] - rss[1]
    print(f"RSS per round (KiB): {rss}; growth after warm-up {growth_kib} KiB; "
          f"{sum(expected.values())} refusals, {good_sent} good")
    assert growth_kib < 16 * 1024, rss


async def test_a_packet_over_the_broker_limit_costs_the_sender_its_connection_not_the_platform(
        tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "broker", REGISTRY) as broker:
        async with running_platform(broker, tmp_path / "platform") as platform:
            device = MqttClient(url(broker, "elev-1"), "box", clean_start=True, backoff_min=5, backoff_max=5)
            await device.start()
            try:
                device.publish_nowait("vigil/v1/elevator/elev-1/telemetry", b"x" * (2 * 1024 * 1024))
                await wait_until(lambda: device.counters["disconnects"] >= 1, 10, "the broker to drop the sender")
            finally:
                await device.stop(drain_timeout=0.5)
            async with MqttClient(url(broker, "elev-2"), "box2", clean_start=True) as other:
                await other.publish("vigil/v1/elevator/elev-2/telemetry", GOOD)
            await wait_until(lambda: platform.ingest.accepted == 1, 10, "the next good message")
            assert platform.mqtt.counters["disconnects"] == 0 and sum(platform.ingest.rejected.values()) == 0
