"""The unit tests' one MQTT fake (tests/support/mqtt_fake.py) keeps MqttClient's interface and delivery rules."""

from __future__ import annotations

import inspect

from broker.mqtt import Message, MqttClient
from tests.support.mqtt_fake import FakeMqtt, Published


def _public(cls: type) -> dict[str, object]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_") and not n.isupper()}


def test_the_fake_has_every_public_member_of_the_client_with_the_same_parameters() -> None:
    real, fake = _public(MqttClient), _public(FakeMqtt)
    missing = sorted(set(real) - set(fake))
    assert not missing, f"FakeMqtt lacks MqttClient's {missing}"
    for name, member in real.items():
        if callable(member):
            want = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
            got = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(FakeMqtt, name)).parameters.values()]
            assert got == want, name
        else:
            assert isinstance(getattr(FakeMqtt, name), property) == isinstance(member, property), name
    assert inspect.iscoroutinefunction(FakeMqtt.publish) and inspect.iscoroutinefunction(FakeMqtt.flush)


def test_wildcards_match_as_mqtt_defines_them() -> None:
    mqtt = FakeMqtt()
    got: dict[str, list[str]] = {"plus": [], "hash": [], "exact": [], "sys": []}
    mqtt.subscribe("vigil/v1/+/+/telemetry", lambda b: got["plus"].extend(m.topic for m in b))
    mqtt.subscribe("vigil/v1/#", lambda b: got["hash"].extend(m.topic for m in b))
    mqtt.subscribe("vigil/v1/elevator/el-1/event", lambda b: got["exact"].extend(m.topic for m in b))
    mqtt.subscribe("#", lambda b: got["sys"].extend(m.topic for m in b))
    for topic in ("vigil/v1/elevator/el-1/telemetry", "vigil/v1/elevator/el-1/event", "vigil/v1",
                  "vigil/v1/elevator/el-1/telemetry/extra", "$SYS/broker/uptime"):
        mqtt.inject(topic, b"{}")
    assert got["plus"] == ["vigil/v1/elevator/el-1/telemetry"]
    assert got["exact"] == ["vigil/v1/elevator/el-1/event"]
    # ``#`` also matches the parent level; no wildcard matches a ``$`` topic.
    assert got["hash"] == ["vigil/v1/elevator/el-1/telemetry", "vigil/v1/elevator/el-1/event", "vigil/v1",
                           "vigil/v1/elevator/el-1/telemetry/extra"]
    assert "$SYS/broker/uptime" not in got["sys"] and len(got["sys"]) == 4


def test_a_handler_on_two_matching_filters_gets_each_message_once_in_one_batch() -> None:
    mqtt = FakeMqtt()
    batches: list[list[Message]] = []

    class Stage:
        def on_batch(self, batch: list[Message]) -> None:
            batches.append(batch)

    stage = Stage()
    mqtt.subscribe("vigil/v1/+/+/telemetry", stage.on_batch)
    mqtt.subscribe("vigil/v1/elevator/#", stage.on_batch)
    mqtt.publish_nowait("vigil/v1/elevator/el-1/telemetry", b"1")
    mqtt.publish_nowait("vigil/v1/elevator/el-2/telemetry", b"2")
    assert batches == []  # nothing runs inside publish
    assert mqtt.deliver_pending() == 2
    assert [[m.payload for m in b] for b in batches] == [[b"1", b"2"]]
    assert all(m.qos == 1 and not m.retain for m in batches[0])


def test_publishes_are_recorded_acknowledged_and_looped_back_later() -> None:
    mqtt = FakeMqtt()
    acks: list[bool] = []
    reasons: list[int] = []
    seen: list[str] = []

    def relay(batch: list[Message]) -> None:
        seen.extend(m.topic for m in batch)
        for m in batch:
            if m.topic.endswith("/in"):
                mqtt.publish_nowait(m.topic[:-3] + "/out", m.payload, qos=0, retain=True)

    mqtt.subscribe("t/#", relay)
    mqtt.publish_nowait("t/a/in", b"x", on_acked=acks.append, on_reason=reasons.append)
    mqtt.deliver_pending()
    assert seen == ["t/a/in", "t/a/out"]
    assert mqtt.published == [Published("t/a/in", b"x", 1, False), Published("t/a/out", b"x", 0, True)]
    assert (acks, reasons) == ([True], [0])
    mqtt.refuse = 0x87
    mqtt.publish_nowait("t/b", b"y", on_acked=acks.append, on_reason=reasons.append)
    assert (acks, reasons) == ([True, False], [0, 0x87])
    assert mqtt.topics("t/a") == ["t/a/in", "t/a/out"] and mqtt.payloads("t/+") == [b"y"]


def test_unsubscribe_pause_and_forget() -> None:
    mqtt = FakeMqtt()
    seen: list[str] = []

    def handler(batch: list[Message]) -> None:
        seen.extend(m.topic for m in batch)

    mqtt.subscribe_many(["a/+", "b/+"], handler)
    mqtt.forget(["a/+", "old/#"])
    assert mqtt.topic_filters == {"a/+", "b/+"} and mqtt.forgotten == {"old/#"}
    mqtt.unsubscribe_many(["a/+"], handler)
    mqtt.pause()
    mqtt.publish_nowait("a/1", b"")
    mqtt.publish_nowait("b/1", b"")
    assert mqtt.deliver_pending() == 0
    mqtt.resume()
    assert mqtt.deliver_pending() == 1
    assert seen == ["b/1"] and mqtt.topic_filters == {"b/+"}
