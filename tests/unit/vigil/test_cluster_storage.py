"""The written position of a partition's storage (vigil.cluster_storage): which stream sequence InfluxDB has.

Real storage stage (outbox on disk, the embedded SQLite backend), the in-memory MQTT client for the
ingest. ``stored_seq`` may only move past a batch once the drainer has written that batch's lines, and
the catch-up ingest stores without subscribing anything on the partition's client.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from broker.contracts import Telemetry, encode
from broker.ingest import DeviceIngest
from broker.mqtt import Message
from broker.registry import DeviceRegistry
from storage.config import StorageConfig
from tests.support.mqtt_fake import FakeMqtt
from vigil.cluster_storage import PartitionStorage


def _batch(device: str, first: int, count: int) -> list[Message]:
    return [Message(f"vigil/v1/elevator/{device}/telemetry",
                    encode(Telemetry(ts=datetime.fromtimestamp(1_700_000_000 + i, UTC), seq=i,
                                     metrics={"speed_mps": 1.0})), 1, False, time.time())
            for i in range(first, first + count)]


async def test_stored_seq_follows_what_the_drainer_wrote(tmp_path: Path) -> None:
    mqtt = FakeMqtt()
    ingest = DeviceIngest(mqtt, stage="p0")  # type: ignore[arg-type]
    storage = PartitionStorage(StorageConfig(), mqtt=mqtt, ingest=ingest, registry=DeviceRegistry({}, {}, {}),  # type: ignore[arg-type]
                               state_dir=tmp_path / "storage", stored_seq=7, known=None, stage="p0")
    storage.attach()
    try:
        ingest.on_batch(_batch("e1", 0, 5))
        storage.appended(12)
        ingest.on_batch(_batch("e1", 5, 5))
        storage.appended(17)
        assert storage.written_seq() == 7  # in the outbox, not written yet
        assert await storage.service.drainer.drain_all() == 10
        assert storage.written_seq() == 17
        storage.appended(18)  # a batch that stored nothing (e.g. refused messages) moves with the last
        assert storage.written_seq() == 18

        # The catch-up path stores through its own ingest; nothing new subscribed on the partition's client.
        filters = mqtt.topic_filters
        storage.catch_up(_batch("e2", 0, 3))
        storage.appended(21)
        assert mqtt.topic_filters == filters
        assert storage.written_seq() == 18
        assert await storage.service.drainer.drain_all() == 3
        assert storage.written_seq() == 21 and storage.caught_up == 3
    finally:
        storage.service.close()
