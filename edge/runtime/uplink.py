"""A gateway's MQTT side, the same for every gateway: publish sink, command subscription, dead letters, signals.

``open_uplink`` publishes straight through ``broker.mqtt.MqttClient`` (highest throughput,
memory only while the broker is down) or, given a data folder, through an ``EdgeLink`` outbox
(``LinkPublisher``: store-and-forward, gateway identity, retained status and last will), or, given
NATS servers and a data folder, through a ``NatsEdgeLink`` outbox straight into a JetStream cluster
(``NatsLinkPublisher``: a record leaves the outbox once its partition stream stored it; docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.contracts import DeadLetter, dead_letter_topic, encode
from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLinkError
from edge.runtime.server import DeadLetterSink, PublishSink
from edge.runtime.sink import LinkPublisher, link_publisher

if TYPE_CHECKING:
    from broker.mqtt import Handler
    from edge.runtime.nats_link import NatsLinkPublisher


@dataclass(frozen=True)
class Uplink:
    """Where a gateway publishes, how it subscribes to platform commands, and its outbox sink if any."""

    publish: PublishSink
    subscribe: Callable[[str, Handler], None]
    sink: LinkPublisher | NatsLinkPublisher | None = None
    """The store-and-forward sink (``data_dir`` given), else None."""


@contextlib.asynccontextmanager
async def open_uplink(mqtt_url: str, *, client_id: str, data_dir: str | Path | None, gateway_name: str,
                      agent: str, telemetry_qos: int = 1, nats_servers: Sequence[str] | None = None,
                      **link_options: Any) -> AsyncIterator[Uplink]:
    """``MqttClient`` directly, or an outbox in ``data_dir`` as ``EdgeIdentity.for_gateway(gateway_name)``.

    With ``nats_servers`` (the NATS URLs of a cluster's nodes) the outbox is delivered by a
    ``NatsEdgeLink`` as JetStream publishes and ``mqtt_url`` is not used; otherwise by an ``EdgeLink``
    over MQTT. ``telemetry_qos`` applies to ``.../telemetry`` topics in the direct mode only (the outbox
    always delivers with QoS 1). ``link_options`` go to the link.

    Raises:
        MqttError: the broker URL is unusable.
        EdgeLinkError: the outbox folder is unusable or held by another process, or NATS servers
            were given without a data folder (the NATS uplink always keeps an outbox).
    """
    if nats_servers:
        if not data_dir:
            raise EdgeLinkError("the NATS uplink needs a data folder for its outbox (--data-dir)")
        from edge.runtime.nats_link import nats_link_publisher  # imports nats-py only when asked for

        identity = EdgeIdentity.for_gateway(gateway_name, agent=agent)
        async with nats_link_publisher(nats_servers, identity, Path(data_dir), **link_options) as nats_sink:
            yield Uplink(nats_sink.publish, nats_sink.link.subscribe, nats_sink)
        return
    if data_dir:
        identity = EdgeIdentity.for_gateway(gateway_name, agent=agent)
        async with link_publisher(mqtt_url, identity, Path(data_dir), **link_options) as sink:
            yield Uplink(sink.publish, sink.link.subscribe, sink)
        return
    from broker.mqtt import MqttClient  # the shared MQTT layer; imported here to keep the cores importable alone

    async with MqttClient(mqtt_url, client_id) as mqtt:
        if telemetry_qos == 1:
            yield Uplink(mqtt.publish, mqtt.subscribe)
            return

        async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
            qos = telemetry_qos if topic.endswith("/telemetry") else 1
            await mqtt.publish(topic, payload, qos=qos, retain=retain)

        yield Uplink(publish, mqtt.subscribe)


def dead_letter_sink(publish: PublishSink, stage: str) -> DeadLetterSink:
    """A dead-letter sink publishing contract ``DeadLetter`` records on ``vigil/v1/deadletter/{stage}``."""
    topic = dead_letter_topic(stage)

    async def sink(letter: DeadLetter) -> None:
        await publish(topic, encode(letter))

    return sink


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while inside (no-op where the loop cannot handle signals)."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
