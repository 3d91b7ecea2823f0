"""A StorageService wired like the runtime does it (one MqttClient, one DeviceIngest), for tests and benches."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from broker.contracts import Kind
from broker.ingest import DeviceIngest
from broker.mqtt import MqttClient
from broker.registry import Device, DeviceRegistry, Site
from storage.config import StorageConfig
from storage.service import StorageService


def registry(devices: dict[str, Kind], site: str = "tower-a") -> DeviceRegistry:
    """Every device at one site."""
    return DeviceRegistry.build([Site(id=site)], [Device(id=d, kind=k, site=site) for d, k in devices.items()], [])


@dataclass
class RunningStorage:
    """The service, its client and its run task."""

    service: StorageService
    mqtt: MqttClient
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_storage(config: StorageConfig, broker_url: str, state_dir: Path, reg: DeviceRegistry,
                          client_id: str | None = None) -> AsyncIterator[RunningStorage]:
    """Attach, connect and run a StorageService; cancel and disconnect on exit."""
    mqtt = MqttClient(broker_url, client_id or f"storage-{uuid.uuid4().hex[:8]}", backoff_min=0.05, backoff_max=0.5)
    ingest = DeviceIngest(mqtt, stage="test-ingest")
    service = StorageService(config, mqtt=mqtt, ingest=ingest, registry=reg, state_dir=state_dir)
    service.attach()
    await mqtt.start()
    task = asyncio.create_task(service.run(), name="storage-under-test")
    try:
        yield RunningStorage(service, mqtt, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mqtt.stop()
        service.close()


async def eventually(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> None:
    """Poll a blocking predicate (in a thread) until it holds.

    Raises:
        TimeoutError: it did not hold within ``timeout``.
    """
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(step)
