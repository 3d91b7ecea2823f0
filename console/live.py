"""Live device state for the console: last values, last seen, online, recent series and vehicle tracks.

Pure: fed validated ``DeviceMessage`` batches and asked questions with the current time. Memory is
bounded per device (ring buffers); devices the registry does not know are tracked too, up to a cap,
so a misconfigured registry still shows what is arriving.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from broker.contracts import DeviceEvent, DeviceMessage, DeviceStatus, MetricValue, Telemetry

MAX_DEVICES = 100_000


@dataclass
class DeviceLive:
    """What the console knows about one device right now."""

    device_id: str
    kind: str
    values: dict[str, MetricValue] = field(default_factory=dict)
    quality: dict[str, str] = field(default_factory=dict)
    values_ts: float | None = None
    last_seen: float | None = None
    status_online: bool | None = None
    status_reason: str | None = None
    status_ts: float | None = None
    last_event: dict[str, Any] | None = None
    series: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)
    track: deque[tuple[float, float, float]] = field(default_factory=deque)

    def online(self, now: float, offline_after_s: float) -> bool:
        """Offline when the last status (after the last data) says so; else online with recent data or status."""
        if self.status_online is False and (self.last_seen is None or (self.status_ts or 0.0) >= self.last_seen):
            return False
        if self.last_seen is not None and now - self.last_seen <= offline_after_s:
            return True
        return bool(self.status_online)

    def position(self) -> tuple[float, float] | None:
        """The last WGS-84 ``(lon, lat)`` this device reported, if any."""
        return _position(self.values, require_fix=False)


class LiveDevices:
    """Every device's live state, fed by the ingest consumer; remembers which devices changed."""

    def __init__(self, chart_points: int = 360, track_points: int = 300, max_devices: int = MAX_DEVICES) -> None:
        self.chart_points = chart_points
        self.track_points = track_points
        self.max_devices = max_devices
        self.devices: dict[str, DeviceLive] = {}
        self.changed: set[str] = set()
        self.dropped = 0

    def _get(self, device_id: str, kind: str) -> DeviceLive | None:
        dev = self.devices.get(device_id)
        if dev is None:
            if len(self.devices) >= self.max_devices:
                self.dropped += 1
                return None
            dev = self.devices[device_id] = DeviceLive(device_id, kind, series=deque(maxlen=self.chart_points),
                                                       track=deque(maxlen=self.track_points))
        return dev

    def apply(self, batch: list[DeviceMessage]) -> None:
        """Take in a batch of validated device messages (telemetry, events, status)."""
        for m in batch:
            dev = self._get(m.device_id, m.kind.value)
            if dev is None:
                continue
            p = m.payload
            seen = m.received_at or None
            if isinstance(p, Telemetry):
                ts = p.ts.timestamp()
                if dev.values_ts is None or ts >= dev.values_ts:
                    dev.values.update(p.metrics)
                    if p.quality:
                        dev.quality.update(p.quality)
                    dev.values_ts = ts
                nums = {k: float(v) for k, v in p.metrics.items()
                        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
                if nums:
                    _insert_sorted(dev.series, (ts, nums))
                pos = _position(p.metrics)
                if pos is not None:
                    _insert_sorted(dev.track, (ts, pos[0], pos[1]))
                seen = seen or ts
            elif isinstance(p, DeviceStatus):
                dev.status_online = p.online
                dev.status_reason = p.reason
                dev.status_ts = p.ts.timestamp() if p.ts is not None else m.received_at
                seen = seen if p.online else None
            elif isinstance(p, DeviceEvent):
                ts = p.ts.timestamp()
                dev.last_event = {"ts": ts, "type": p.type, "state": p.state, "message": p.message,
                                  "snapshot_url": p.snapshot_url}
                seen = seen or ts
            if seen is not None and (dev.last_seen is None or seen > dev.last_seen):
                dev.last_seen = seen
            self.changed.add(m.device_id)

    def take_changed(self) -> set[str]:
        """The ids of devices changed since the last call."""
        out, self.changed = self.changed, set()
        return out

    def series(self, device_id: str, since: float | None = None, until: float | None = None,
               ) -> list[tuple[float, dict[str, float]]]:
        """Recent numeric telemetry of one device in [since, until], oldest first."""
        dev = self.devices.get(device_id)
        if dev is None:
            return []
        return [(t, v) for t, v in dev.series if (since is None or t >= since) and (until is None or t <= until)]

    def track(self, device_id: str, since: float | None = None) -> list[tuple[float, float, float]]:
        """Recent ``(ts, lon, lat)`` positions of one device, oldest first."""
        dev = self.devices.get(device_id)
        if dev is None:
            return []
        return [p for p in dev.track if since is None or p[0] >= since]


def _position(metrics: dict[str, MetricValue], require_fix: bool = True) -> tuple[float, float] | None:
    lat, lon = metrics.get("lat"), metrics.get("lon")
    if isinstance(lat, bool) or isinstance(lon, bool) or not isinstance(lat, int | float) \
            or not isinstance(lon, int | float):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if require_fix and metrics.get("gnss_fixed") is False:
        return None
    return float(lon), float(lat)


def _insert_sorted(buf: deque[Any], item: tuple[Any, ...]) -> None:
    # Devices normally report in order; a late message (store-and-forward) is put in its place.
    if not buf or buf[-1][0] <= item[0]:
        buf.append(item)
        return
    if buf.maxlen is not None and len(buf) == buf.maxlen and item[0] < buf[0][0]:
        return
    items = list(buf)
    i = len(items)
    while i > 0 and items[i - 1][0] > item[0]:
        i -= 1
    items.insert(i, item)
    buf.clear()
    buf.extend(items[-buf.maxlen:] if buf.maxlen else items)
