"""Shared pieces of the MQTT security tests: a registry with one account of each role and client helpers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from broker.mosquitto import MosquittoProcess
from broker.registry import DeviceRegistry

if TYPE_CHECKING:
    from vigil.runtime import Platform

PASSWORDS = {
    "elev-1": "dev-pw-1",
    "elev-2": "dev-pw-2",
    "vigil-platform": "platform-pw",
    "vigil-gw-elev": "gateway-pw",
    "control-room": "observer-pw",
    "duty-operator": "operator-pw",
}

REGISTRY = DeviceRegistry.from_data({
    "devices": [
        {"id": "elev-1", "kind": "elevator", "password": PASSWORDS["elev-1"], "attributes": {"rated_speed_mps": 1.75}},
        {"id": "elev-2", "kind": "elevator", "password": PASSWORDS["elev-2"], "attributes": {"rated_speed_mps": 1.75}},
    ],
    "services": [
        {"name": "vigil-platform", "role": "platform", "password": PASSWORDS["vigil-platform"]},
        {"name": "vigil-gw-elev", "role": "gateway", "kinds": ["elevator"], "password": PASSWORDS["vigil-gw-elev"]},
        {"name": "control-room", "role": "observer", "password": PASSWORDS["control-room"]},
        {"name": "duty-operator", "role": "operator", "password": PASSWORDS["duty-operator"]},
    ],
})

PLATFORM_CLIENT_ID = "vigil-platform-1"


def url(broker: MosquittoProcess, account: str) -> str:
    """The broker URL of a registry account on the listener it belongs to."""
    return broker.account_url(account, PASSWORDS[account])


def mqtt_sub(broker_url: str, topic: str, *, client_id: str | None = None, persistent: bool = False,
             seconds: float = 2.0, qos: int = 1) -> subprocess.CompletedProcess[str]:
    """``mosquitto_sub`` as a third-party client; returns after ``seconds`` of silence (``-W``)."""
    argv = ["mosquitto_sub", "-V", "mqttv5", "-L", f"{broker_url}/{topic}", "-q", str(qos), "-v",
            "-W", str(max(1, round(seconds)))]
    if client_id is not None:
        argv += ["-i", client_id]
    if persistent:
        argv += ["-c", "-x", "3600"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20)


def received_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The ``topic payload`` lines a ``mqtt_sub`` printed."""
    return [line for line in proc.stdout.splitlines() if line.strip()]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def broker_log(broker: MosquittoProcess) -> str:
    """Everything Mosquitto logged so far."""
    path = Path(broker.layout.data_dir) / "mosquitto.log"
    return path.read_text(errors="replace") if path.exists() else ""


REGISTRY_YAML = """
devices:
  - {id: elev-1, kind: elevator, password: dev-pw-1, attributes: {rated_speed_mps: 1.75}}
  - {id: elev-2, kind: elevator, password: dev-pw-2, attributes: {rated_speed_mps: 1.75}}
services:
  - {name: vigil-platform, role: platform, password: platform-pw}
  - {name: vigil-gw-elev, role: gateway, kinds: [elevator], password: gateway-pw}
  - {name: control-room, role: observer, password: observer-pw}
  - {name: duty-operator, role: operator, password: operator-pw}
"""


@contextlib.asynccontextmanager
async def running_platform(broker: MosquittoProcess, folder: Path,
                           services: tuple[str, ...] = ("rules",)) -> AsyncIterator[Platform]:
    """The real platform (``vigil run``'s objects) with a registry file, connected to ``broker``."""
    import msgspec

    from vigil.config import VigilConfig
    from vigil.runtime import build_platform, run_platform

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "registry.yaml").write_text(REGISTRY_YAML, encoding="utf-8")
    config = msgspec.convert({
        "node": "sec", "state_dir": str(folder / "state"), "services": list(services),
        "registry": str(folder / "registry.yaml"),
        "mqtt": {"url": url(broker, "vigil-platform"), "client_id": PLATFORM_CLIENT_ID},
        "health": {"enabled": False},
    }, VigilConfig)
    registry = DeviceRegistry.load(folder / "registry.yaml")
    platform = build_platform(config, registry)
    stop = asyncio.Event()
    task = asyncio.create_task(run_platform(platform, stop), name="platform")
    try:
        await wait_until(lambda: platform.mqtt.connected or task.done(), 15, "the platform's connection")
        if task.done():
            task.result()
        await asyncio.sleep(0.3)  # subscriptions are in place
        yield platform
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
