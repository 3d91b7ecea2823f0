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
rule state intact. With a registry file (``RegisteredDevices``) a partition subscribes one filter
per own device, so the broker sends it only its devices; without one it receives every device
topic and drops the other partitions' messages right after parsing the topic.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

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


class _Verdict:
    """A topic whose messages are not decoded (see ``_SKIP`` and ``_OTHER_PARTITION``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_SKIP: Final = _Verdict("skip")
"""Not device input here (platform topics, commands, the other lane's channels): neither decoded nor counted."""
_OTHER_PARTITION: Final = _Verdict("other partition")
"""A device of another partition: counted in ``other_partition``."""
_TopicPlan = DeviceTopic | tuple[RejectReason, str] | _Verdict


def partition_of(device_id: str, count: int) -> int:
    """The partition (0 .. count-1) a device belongs to; stable across processes and restarts."""
    return zlib.crc32(device_id.encode()) % count


def device_filter(kind: str, device_id: str, channel: str = "+") -> str:
    """The topic filter of one device's channel (``+``: all of its channels)."""
    return f"{TOPIC_ROOT}/{kind}/{device_id}/{channel}"


def partition_devices(kinds: Mapping[str, str], index: int, count: int) -> dict[str, str]:
    """The devices (id -> kind) of partition ``index`` of ``count``: every device lands in exactly one."""
    return {dev: kind for dev, kind in kinds.items() if partition_of(dev, count) == index}


class RegisteredDevices:
    """``known_device`` for a registry file: re-reads the file when it changes, so new devices are heard
    without a restart (the broker reloads the same file on SIGHUP).

    ``kinds`` (device id -> kind) lets a partition subscribe per device; ``on_change`` callbacks run
    after every successful reload (the ingest re-subscribes there).
    """

    def __init__(self, path: str | Path, devices: Iterable[str], *, check_every_s: float = 2.0,
                 kinds: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.devices = frozenset(devices)
        self.kinds: dict[str, str] = dict(kinds) if kinds is not None else {}
        self.reloads = 0
        self.on_change: list[Callable[[], None]] = []
        self._check_every = check_every_s
        self._next_check = time.monotonic() + check_every_s
        self._mtime = self._stat()

    def check(self) -> bool:
        """Re-read the file now if it changed (also done, at most every ``check_every_s``, on lookups)."""
        self._next_check = time.monotonic() + self._check_every
        return self._refresh()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def __call__(self, device_id: str) -> bool:
        self.refresh_if_due()
        return device_id in self.devices

    def refresh_if_due(self) -> None:
        """Re-read the file if it changed and ``check_every_s`` passed since the last look."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every
            self._refresh()

    def _refresh(self) -> bool:
        from broker.registry import DeviceRegistry, RegistryError

        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            registry = DeviceRegistry.load(self.path)
        except RegistryError as exc:
            # Keep hearing the devices already known; a half-written file must not silence them.
            log.warning("registry %s not reloaded: %s", self.path, exc)
            return False
        self.devices = frozenset(registry.devices)
        self.kinds = {dev.id: dev.kind.value for dev in registry.devices.values()}
        self.reloads += 1
        log.info("registry %s reloaded: %d devices", self.path, len(self.devices))
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:
                log.exception("registry %s: a reload callback failed", self.path)
        return True


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
        self._lanes: tuple[dict[str, _TopicPlan], dict[str, _TopicPlan]] = ({}, {})
        """Per lane (index: whether the lane skips alarm channels), what to do with a topic: the checks
        before decoding depend only on the topic, so they run once per topic, not once per message."""
        self.fleet = known_device if isinstance(known_device, RegisteredDevices) and self.partition else None
        """With a partition and a registry: subscribe per device, so the broker sends only this partition's."""
        self.subscribed: dict[str, str] = {}
        """Devices (id -> kind) this partition subscribes to, per device (empty: one filter for all)."""

    def owns(self, device_id: str) -> bool:
        """Whether this process handles the device (always, unless partitioned)."""
        return self.partition is None or partition_of(device_id, self.partition[1]) == self.partition[0]

    def _device_filters(self, devices: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(telemetry session filters, alarm lane filters) of these devices."""
        main = [device_filter(kind, dev) for dev, kind in devices.items()]
        if self.alarm_mqtt is None:
            return main, []
        alarm = [device_filter(kind, dev, ch.value) for dev, kind in devices.items()
                 for ch in (Channel.EVENT, Channel.STATUS)]
        return main, alarm

    def _subscribe_partition(self) -> None:
        """Subscribe this partition's registered devices one filter each; drop other partitions' filters."""
        assert self.fleet is not None and self.partition is not None
        mine = partition_devices(self.fleet.kinds, *self.partition)
        others = {dev: kind for dev, kind in self.fleet.kinds.items() if dev not in mine}
        added = {dev: kind for dev, kind in mine.items() if self.subscribed.get(dev) != kind}
        removed = {dev: kind for dev, kind in self.subscribed.items() if mine.get(dev) != kind}
        if removed:
            main, alarm = self._device_filters(removed)
            self.mqtt.unsubscribe_many(main, self.on_batch)
            if self.alarm_mqtt is not None:
                self.alarm_mqtt.unsubscribe_many(alarm, self.on_alarm_batch)
        if added:
            main, alarm = self._device_filters(added)
            self.mqtt.subscribe_many(main, self.on_batch)
            if self.alarm_mqtt is not None:
                self.alarm_mqtt.subscribe_many(alarm, self.on_alarm_batch)
        # A persistent session may still hold the one-for-all filters or another layout's devices.
        stale_main, stale_alarm = self._device_filters(others)
        self.mqtt.forget([DEVICE_LEVEL_FILTER, *stale_main])
        if self.alarm_mqtt is not None:
            self.alarm_mqtt.forget([*ALARM_FILTERS, *stale_alarm])
        self.subscribed = mine
        if added or removed:
            log.info("%s: partition %d/%d subscribes %d devices (%d added, %d removed)", self.stage,
                     self.partition[0], self.partition[1], len(mine), len(added), len(removed))

    def add_consumer(self, channels: set[Channel], consumer: DeviceConsumer) -> None:
        """Deliver validated messages of these channels to ``consumer`` in batches."""
        if not self._consumers:
            if self.fleet is not None:
                # Partitioned with a registry: one filter per own device (each of its channels, so a
                # wrong channel is still dead-lettered); re-subscribed when the registry file changes.
                self._subscribe_partition()
                self.fleet.on_change.append(self._subscribe_partition)
            else:
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

    def _plan(self, topic: str, skip_alarms: bool) -> _TopicPlan:
        """What every message on ``topic`` gets in this lane (cached per lane, bounded)."""
        plan: _TopicPlan
        # Platform topics of the same depth (transitions) and commands to devices are not input.
        if topic.startswith(_PLATFORM_PREFIXES) or topic.endswith("/command"):
            plan = _SKIP
        elif skip_alarms and topic.endswith(_ALARM_SUFFIXES):
            plan = _SKIP  # the alarm lane's session receives these
        elif self.partition is not None and not self._is_mine(topic):
            plan = _OTHER_PARTITION
        else:
            parsed = self._topics.get(topic)
            plan = parsed if parsed is not None else self._parse(topic)
        lane = self._lanes[skip_alarms]
        if len(lane) > 500_000:
            lane.clear()
        lane[topic] = plan
        return plan

    def _handle(self, batch: list[Message], skip_alarms: bool) -> None:
        good: dict[Channel, list[DeviceMessage]] = {}
        decode, limit, known = decode_device_payload, self.max_payload, self.known_device
        lane = self._lanes[skip_alarms]
        devices: frozenset[str] | None = None
        if isinstance(known, RegisteredDevices):
            # One look at the registry file per batch; then a set lookup per message.
            known.refresh_if_due()
            devices = known.devices
        for msg in batch:
            topic = msg.topic
            plan = lane.get(topic)
            if plan is None:
                plan = self._plan(topic, skip_alarms)
            if plan.__class__ is not DeviceTopic:
                if plan is _SKIP:
                    continue
                if plan is _OTHER_PARTITION:
                    self.other_partition += 1
                    continue
            try:
                if isinstance(plan, tuple):
                    raise Rejected(*plan)
                dm = decode(plan, msg.payload, limit, msg.received_at)  # type: ignore[arg-type]
                if devices is not None:
                    if dm.device_id not in devices:
                        raise Rejected(RejectReason.UNKNOWN_DEVICE, f"device {dm.device_id!r} is not registered")
                elif known is not None and not known(dm.device_id):
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
