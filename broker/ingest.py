"""The platform boundary: one subscription per process validates device messages once.

Stages that consume device data (rules, storage, the console's live view) register with a
``DeviceIngest`` instead of subscribing themselves, so a process running several stages
decodes each message once and dead-letters a bad one once. Refused messages are counted by
reason and published on ``vigil/v1/deadletter/{stage}`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from broker.contracts import (
    MAX_PAYLOAD_BYTES,
    TOPIC_ROOT,
    Channel,
    DeviceMessage,
    Rejected,
    RejectReason,
    dead_letter_topic,
    decode_device_message,
    encode,
    make_dead_letter,
)
from broker.mqtt import Message, MqttClient

log = logging.getLogger(__name__)

DEVICE_LEVEL_FILTER = f"{TOPIC_ROOT}/+/+/+"
_PLATFORM_PREFIXES = tuple(f"{TOPIC_ROOT}/{p}/" for p in ("transitions", "alerts", "deadletter", "gateways"))

DeviceConsumer = Callable[[list[DeviceMessage]], None]


class DeviceIngest:
    """Validates device telemetry, events and status and fans them out to stages."""

    def __init__(self, mqtt: MqttClient, stage: str = "ingest", *, max_payload: int = MAX_PAYLOAD_BYTES,
                 known_device: Callable[[str], bool] | None = None) -> None:
        self.mqtt = mqtt
        self.stage = stage
        self.max_payload = max_payload
        self.known_device = known_device
        self.accepted = 0
        self.rejected: Counter[RejectReason] = Counter()
        self._consumers: dict[Channel, list[DeviceConsumer]] = {}
        self._last_warning = 0.0

    def add_consumer(self, channels: set[Channel], consumer: DeviceConsumer) -> None:
        """Deliver validated messages of these channels to ``consumer`` in batches."""
        if not self._consumers:
            # One filter for every five-level topic, so that messages on a wrong channel or of
            # an unknown kind are seen and dead-lettered rather than silently never delivered.
            self.mqtt.subscribe(DEVICE_LEVEL_FILTER, self.on_batch)
        for ch in channels:
            self._consumers.setdefault(ch, []).append(consumer)

    def on_batch(self, batch: list[Message]) -> None:
        """MQTT handler: validate, dead-letter the bad ones, hand the good ones on."""
        good: dict[Channel, list[DeviceMessage]] = {}
        for msg in batch:
            topic = msg.topic
            # Platform topics of the same depth (transitions) and commands to devices are not input.
            if topic.startswith(_PLATFORM_PREFIXES) or topic.endswith("/command"):
                continue
            try:
                dm = decode_device_message(msg.topic, msg.payload, self.max_payload, msg.received_at)
                if self.known_device is not None and not self.known_device(dm.device_id):
                    raise Rejected(RejectReason.UNKNOWN_DEVICE, f"device {dm.device_id!r} is not registered")
            except Rejected as exc:
                self.reject(msg, exc.reason, exc.detail)
                continue
            good.setdefault(dm.channel, []).append(dm)
        for channel, messages in good.items():
            self.accepted += len(messages)
            for consumer in self._consumers.get(channel, ()):
                consumer(messages)

    def reject(self, msg: Message, reason: RejectReason, detail: str) -> None:
        """Count a refused message and publish its dead letter."""
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_warning > 5.0:
            self._last_warning = now
            log.warning("%s: refused message on %r: %s: %s (refused so far: %s)", self.stage, msg.topic[:200],
                        reason.value, detail[:200], dict(self.rejected))
        letter = make_dead_letter(self.stage, msg.topic, msg.payload, reason, detail)
        self.mqtt.publish_nowait(dead_letter_topic(self.stage), encode(letter))
