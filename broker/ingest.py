"""The platform boundary: one subscription per process validates device messages once.

Stages that consume device data (rules, storage, the console's live view) register with a
``DeviceIngest`` instead of subscribing themselves, so a process running several stages
decodes each message once and dead-letters a bad one once. Refused messages are counted by
reason and published on ``vigil/v1/deadletter/{stage}`` with the reason.

Alarm lane: with a second client (``alarm_mqtt``), events and status arrive on their own MQTT
session, socket and read loop, so an alarm never queues behind a telemetry backlog in the
broker, in the socket or in this process; the telemetry session skips those channels.
Partitions: ``partition=(index, count)`` keeps only the devices whose id hashes to ``index``
(CRC-32, the same in every process), so N processes split the fleet with per-device order and
rule state intact.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from broker.contracts import (
    MAX_PAYLOAD_BYTES,
    TOPIC_ROOT,
    Channel,
    DeviceMessage,
    DeviceTopic,
    Rejected,
    RejectReason,
    dead_letter_topic,
    decode_device_payload,
    encode,
    make_dead_letter,
    parse_device_topic,
)
from broker.mqtt import Message, MqttClient, NotDurable

log = logging.getLogger(__name__)

DEVICE_LEVEL_FILTER = f"{TOPIC_ROOT}/+/+/+"
ALARM_FILTERS = (f"{TOPIC_ROOT}/+/+/{Channel.EVENT.value}", f"{TOPIC_ROOT}/+/+/{Channel.STATUS.value}")
_ALARM_SUFFIXES = (f"/{Channel.EVENT.value}", f"/{Channel.STATUS.value}")
_PLATFORM_PREFIXES = tuple(f"{TOPIC_ROOT}/{p}/" for p in ("transitions", "alerts", "deadletter", "gateways"))

DeviceConsumer = Callable[[list[DeviceMessage]], None]


def partition_of(device_id: str, count: int) -> int:
    """The partition (0 .. count-1) a device belongs to; stable across processes and restarts."""
    return zlib.crc32(device_id.encode()) % count


class RegisteredDevices:
    """``known_device`` for a registry file: re-reads the file when it changes, so new devices are heard
    without a restart (the broker reloads the same file on SIGHUP)."""

    def __init__(self, path: str | Path, devices: Iterable[str], *, check_every_s: float = 2.0) -> None:
        self.path = Path(path)
        self.devices = frozenset(devices)
        self.reloads = 0
        self._check_every = check_every_s
        self._next_check = time.monotonic() + check_every_s
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def __call__(self, device_id: str) -> bool:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every
            self._refresh()
        return device_id in self.devices

    def _refresh(self) -> None:
        from broker.registry import DeviceRegistry, RegistryError

        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self.devices = frozenset(DeviceRegistry.load(self.path).devices)
        except RegistryError as exc:
            # Keep hearing the devices already known; a half-written file must not silence them.
            log.warning("registry %s not reloaded: %s", self.path, exc)
            return
        self.reloads += 1
        log.info("registry %s reloaded: %d devices", self.path, len(self.devices))


class DeviceIngest:
    """Validates device telemetry, events and status and fans them out to stages."""

    def __init__(self, mqtt: MqttClient, stage: str = "ingest", *, max_payload: int = MAX_PAYLOAD_BYTES,
                 known_device: Callable[[str], bool] | None = None, alarm_mqtt: MqttClient | None = None,
                 partition: tuple[int, int] | None = None) -> None:
        self.mqtt = mqtt
        self.alarm_mqtt = alarm_mqtt
        self.stage = stage
        self.max_payload = max_payload
        self.known_device = known_device
        if partition is not None and not (partition[1] >= 1 and 0 <= partition[0] < partition[1]):
            raise ValueError(f"partition must be (index, count) with 0 <= index < count, got {partition}")
        self.partition = partition if partition is not None and partition[1] > 1 else None
        self.accepted = 0
        self.other_partition = 0
        self.rejected: Counter[RejectReason] = Counter()
        self._consumers: dict[Channel, list[DeviceConsumer]] = {}
        self._last_warning = 0.0
        self._mine: dict[str, bool] = {}
        self._topics: dict[str, DeviceTopic | tuple[RejectReason, str]] = {}
        """Parsed device topics (a fleet has a few per device; parsing is a split and a regex)."""

    def add_consumer(self, channels: set[Channel], consumer: DeviceConsumer) -> None:
        """Deliver validated messages of these channels to ``consumer`` in batches."""
        if not self._consumers:
            # One filter for every five-level topic, so that messages on a wrong channel or of
            # an unknown kind are seen and dead-lettered rather than silently never delivered.
            self.mqtt.subscribe(DEVICE_LEVEL_FILTER, self.on_batch)
            if self.alarm_mqtt is not None:
                for topic_filter in ALARM_FILTERS:
                    self.alarm_mqtt.subscribe(topic_filter, self.on_alarm_batch)
        for ch in channels:
            self._consumers.setdefault(ch, []).append(consumer)

    def on_alarm_batch(self, batch: list[Message]) -> None:
        """MQTT handler of the alarm lane (events and status only)."""
        self._handle(batch, False)

    def on_batch(self, batch: list[Message]) -> None:
        """MQTT handler: validate, dead-letter the bad ones, hand the good ones on."""
        self._handle(batch, self.alarm_mqtt is not None)

    def _is_mine(self, topic: str) -> bool:
        """Whether this process's partition owns the device of a device topic (malformed topics: yes)."""
        mine = self._mine.get(topic)
        if mine is None:
            parts = topic.split("/")
            mine = len(parts) != 5 or partition_of(parts[3], self.partition[1]) == self.partition[0]  # type: ignore[index]
            if len(self._mine) > 500_000:
                self._mine.clear()
            self._mine[topic] = mine
        return mine

    def _parse(self, topic: str) -> DeviceTopic | tuple[RejectReason, str]:
        try:
            parsed: DeviceTopic | tuple[RejectReason, str] = parse_device_topic(topic)
        except Rejected as exc:
            parsed = (exc.reason, exc.detail)  # a fresh exception each time: re-raising one grows its traceback
        if len(self._topics) > 500_000:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def _handle(self, batch: list[Message], skip_alarms: bool) -> None:
        good: dict[Channel, list[DeviceMessage]] = {}
        decode, limit, known, topics = decode_device_payload, self.max_payload, self.known_device, self._topics
        partitioned = self.partition is not None
        for msg in batch:
            topic = msg.topic
            # Platform topics of the same depth (transitions) and commands to devices are not input.
            if topic.startswith(_PLATFORM_PREFIXES) or topic.endswith("/command"):
                continue
            if skip_alarms and topic.endswith(_ALARM_SUFFIXES):
                continue  # the alarm lane's session receives these
            if partitioned and not self._is_mine(topic):
                self.other_partition += 1
                continue
            parsed = topics.get(topic)
            if parsed is None:
                parsed = self._parse(topic)
            try:
                if isinstance(parsed, tuple):
                    raise Rejected(*parsed)
                dm = decode(parsed, msg.payload, limit, msg.received_at)
                if known is not None and not known(dm.device_id):
                    raise Rejected(RejectReason.UNKNOWN_DEVICE, f"device {dm.device_id!r} is not registered")
            except Rejected as exc:
                self.reject(msg, exc.reason, exc.detail)
                continue
            channel_batch = good.get(dm.channel)
            if channel_batch is None:
                good[dm.channel] = [dm]
            else:
                channel_batch.append(dm)
        not_durable: list[NotDurable] = []
        for channel, messages in good.items():
            self.accepted += len(messages)
            for consumer in self._consumers.get(channel, ()):
                try:
                    consumer(messages)
                except NotDurable as exc:
                    # The other consumers still get the batch; only the failed work is retried.
                    not_durable.append(exc)
        if not_durable:
            raise NotDurable.combine(not_durable)

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
