"""JT/T 808 terminals known to Vigil's device registry file (vehicles and their ``jt808`` identity)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from broker.contracts import Kind
from edge.jt808.registrations import TerminalIdentity

log = logging.getLogger("edge.jt808.gateway")


@dataclass(frozen=True, slots=True)
class RegistryTerminals:
    """Terminal lookup in Vigil's device registry: a known vehicle and its ``jt808`` terminal identity."""

    path: str

    def lookup(self, device_id: str) -> bool:
        """Whether the registry file lists this vehicle (the file is re-read when it changes)."""
        return device_id in _registry_vehicles(self.path, _mtime(self.path))

    def check(self, device_id: str, sent: TerminalIdentity) -> list[str]:
        """Mismatching registration fields; a vehicle without a ``jt808`` identity on file cannot register."""
        expected = _registry_vehicles(self.path, _mtime(self.path)).get(device_id)
        if expected is None:
            return ["jt808 (the registry holds no terminal identity for this vehicle)"]
        return expected.mismatches(sent)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


_REGISTRY_CACHE: dict[str, tuple[float, dict[str, TerminalIdentity | None]]] = {}


def _registry_vehicles(path: str, mtime: float) -> dict[str, TerminalIdentity | None]:
    cached = _REGISTRY_CACHE.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    from broker.registry import DeviceRegistry, RegistryError

    try:
        reg = DeviceRegistry.load(path)
        vehicles = {d.id: (TerminalIdentity(d.jt808.manufacturer, d.jt808.model, d.jt808.terminal_id,
                                            d.jt808.plate_colour, d.jt808.plate) if d.jt808 is not None else None)
                    for d in reg.devices.values() if d.kind is Kind.VEHICLE}
    except RegistryError as exc:
        log.error("jt808: cannot load registry: %s; keeping the previous terminal list", exc)
        vehicles = cached[1] if cached is not None else {}
    _REGISTRY_CACHE[path] = (mtime, vehicles)
    return vehicles
