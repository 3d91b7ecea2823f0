"""The Modbus gateway: poll every device of a tag map and publish per-asset contract messages.

For each poll of a Modbus device, every asset (Vigil device) whose tags live on it gets one
``Telemetry``: the values read well in ``metrics``, every tag's quality (``good``, ``bad``,
``uncertain``) in ``quality``, and ``tags_bad`` (how many of its tags could not be read). A tag
that could not be read is left out of ``metrics``: it is never published as a stale good value.
After ``offline_after`` failed polls in a row the asset's retained status says
``online=false, reason=<why>`` and its all-bad telemetry stops until something is read again
(the status carries the outage); the first good poll says online again. Tags with ``limits``
raise ``tag_limit`` events (``start``/``end``, level ``hihi``/``hi``/``lo``/``lolo``, with a deadband).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from broker.contracts import Channel, DeviceEvent, DeviceStatus, Severity, Telemetry, device_topic, encode
from edge.modbus.poller import DevicePoller, PollResult
from edge.modbus.tagmap import Limits, TagMap

log = logging.getLogger(__name__)

AGENT_NAME: Final = "vigil-edge-modbus"
_LEVEL_SEVERITY: Final = {"hihi": Severity.MAJOR, "lolo": Severity.MAJOR, "hi": Severity.WARNING,
                          "lo": Severity.WARNING}


class Sink(Protocol):
    """Where messages go: ``LinkPublisher.publish`` (store-and-forward) or any compatible coroutine."""

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> Awaitable[None]: ...


def limit_level(limits: Limits, value: float, current: str | None) -> str | None:
    """The alarm level of ``value`` given the level it is in now (leaving a level needs the deadband)."""
    db = limits.deadband
    if limits.hihi is not None and (value >= limits.hihi or (current == "hihi" and value > limits.hihi - db)):
        return "hihi"
    if limits.hi is not None and (value >= limits.hi or (current in ("hi", "hihi") and value > limits.hi - db)):
        return "hi"
    if limits.lolo is not None and (value <= limits.lolo or (current == "lolo" and value < limits.lolo + db)):
        return "lolo"
    if limits.lo is not None and (value <= limits.lo or (current in ("lo", "lolo") and value < limits.lo + db)):
        return "lo"
    return None


@dataclass(slots=True)
class _AssetState:
    kind: str
    site: str | None
    seq: int = 0
    online: bool | None = None
    levels: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Open limit events per metric: (level, event id)."""


def _iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class ModbusGateway:
    """Runs one ``DevicePoller`` per device of the tag map and publishes what they read."""

    def __init__(self, tagmap: TagMap, sink: Sink, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.tagmap = tagmap
        self.sink = sink
        self.clock = clock
        # rng: the reconnect backoff jitter (seeded by the scenario runner so runs repeat exactly).
        self.pollers = {d.name: DevicePoller(d, tagmap.tags[d.name], clock=clock, rng=rng) for d in tagmap.devices}
        self._specs = {d.name: d for d in tagmap.devices}
        self.assets = {a: _AssetState(kind, site) for a, (kind, site) in tagmap.assets().items()}
        self.counters: Counter[str] = Counter()
        """Named as every gateway's (``edge.runtime.counters``): ``published``, ``publish_failures``, plus
        ``telemetry``, ``events``, ``status_changes``, ``missed_polls``, ... (a poller has no connections to count)."""
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Poll every device on its own schedule until cancelled."""
        self._tasks = [asyncio.create_task(self._device_loop(name), name=f"modbus-poll-{name}")
                       for name in self.pollers]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for poller in self.pollers.values():
                await poller.close()

    async def _device_loop(self, name: str) -> None:
        poller = self.pollers[name]
        interval = self._specs[name].poll_interval_s
        next_at = time.monotonic()
        while True:
            try:
                await self.poll_device(name)
            except asyncio.CancelledError:
                raise
            except Exception:  # publishing failed (disk full): count, keep polling
                self.counters["publish_failures"] += 1
                log.exception("modbus %s: poll cycle failed", poller.spec.name)
            next_at += interval
            now = time.monotonic()
            if next_at < now:
                # Fell behind (slow device, loaded machine): skip the missed polls, keep the cadence.
                self.counters["missed_polls"] += int((now - next_at) // interval) + 1
                next_at = now + interval
            await asyncio.sleep(max(0.0, next_at - now))

    async def poll_device(self, name: str) -> PollResult:
        """Poll one device once and publish the result."""
        result = await self.pollers[name].poll_once()
        await self.publish(result)
        return result

    async def publish(self, result: PollResult) -> None:
        """Turn one poll into telemetry, status changes and limit events per asset.

        Pure apart from the sink: no I/O of its own, so the scenario runner drives it with
        ``DevicePoller.complete`` results on a scripted clock (scenario/modbus_adapter.py).
        """
        spec = self._specs[result.device]
        poller = self.pollers[result.device]
        by_asset: dict[str, list[Any]] = {}
        for r in result.readings:
            by_asset.setdefault(r.tag.asset, []).append(r)
        ts = _iso(result.ts)
        offline = poller.failures_in_row >= spec.offline_after
        for asset, readings in by_asset.items():
            st = self.assets[asset]
            metrics: dict[str, Any] = {}
            quality: dict[str, str] = {}
            bad = 0
            for r in readings:
                quality[r.tag.name] = r.quality
                if r.quality == "bad":
                    bad += 1
                    continue
                metrics[r.tag.name] = r.value
            metrics["tags_bad"] = bad
            if bad == len(readings) and st.online is False:
                # Already reported offline: its retained status says so; an all-bad message per poll for
                # the whole outage would only fill the outbox and the store.
                self.counters["telemetry_suppressed_offline"] += 1
            else:
                st.seq += 1
                await self.sink(device_topic(st.kind, asset, Channel.TELEMETRY),
                                encode(Telemetry(ts=ts, metrics=metrics, site=st.site, seq=st.seq, quality=quality)))
                self.counters["telemetry"] += 1
                self.counters["published"] += 1
                self.counters["tags_published"] += len(readings)
            await self._limits(asset, st, readings, result.ts)
            online: bool | None
            if bad < len(readings):
                online = True
            elif offline:
                online = False
            else:
                online = st.online  # one failed poll is not an outage yet
            if online is not None and online != st.online:
                reason = "polling" if online else (poller.last_failure or next(iter(result.reasons), "no_response"))
                detail = {"device": spec.name, "host": spec.host, "port": spec.port, "unit": spec.unit}
                await self.sink(device_topic(st.kind, asset, Channel.STATUS),
                                encode(DeviceStatus(ts=ts, online=online, reason=reason, agent=AGENT_NAME,
                                                    detail=detail)), retain=True)
                self.counters["status_changes"] += 1
                self.counters["published"] += 1
                st.online = online

    async def _limits(self, asset: str, st: _AssetState, readings: list[Any], ts: float) -> None:
        for r in readings:
            limits = r.tag.limits
            if limits is None or r.quality == "bad" or isinstance(r.value, bool | str) or r.value is None:
                continue
            current = st.levels.get(r.tag.name)
            level = limit_level(limits, float(r.value), current[0] if current else None)
            if current is not None and current[0] == level:
                continue
            if current is not None:
                await self._event(st, asset, DeviceEvent(
                    ts=_iso(ts), type="tag_limit", state="end", event_id=current[1], measure=float(r.value),
                    data={"tag": r.tag.name, "level": current[0]}))
                del st.levels[r.tag.name]
            if level is not None:
                event_id = f"{asset}-{r.tag.name}-{level}-{int(ts * 1000)}"
                limit = getattr(limits, level)
                await self._event(st, asset, DeviceEvent(
                    ts=_iso(ts), type="tag_limit", state="start", event_id=event_id, measure=float(r.value),
                    severity=_LEVEL_SEVERITY[level], message=f"{r.tag.name} {level} {r.value:g} {r.tag.unit}".strip(),
                    data={"tag": r.tag.name, "level": level, "limit": limit, "unit": r.tag.unit}))
                st.levels[r.tag.name] = (level, event_id)

    async def _event(self, st: _AssetState, asset: str, event: DeviceEvent) -> None:
        await self.sink(device_topic(st.kind, asset, Channel.EVENT), encode(event))
        self.counters["events"] += 1
        self.counters["published"] += 1

    def status_detail(self) -> dict[str, Any]:
        """Figures for the gateway's heartbeat."""
        return {
            "devices": len(self.pollers),
            "devices_connected": sum(1 for p in self.pollers.values() if p.connected),
            "assets": len(self.assets),
            "assets_offline": sum(1 for a in self.assets.values() if a.online is False),
            **{k: v for k, v in self.counters.items()},
        }

    def stats(self) -> dict[str, Any]:
        """Counters of the gateway and of each poller."""
        return {"gateway": dict(self.counters),
                "devices": {n: {**p.counters, "reasons": dict(p.reasons)} for n, p in self.pollers.items()}}
