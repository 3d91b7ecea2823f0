"""The storage stage: stores device messages, alert changes and dead letters via the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path

from broker.contracts import (
    ALERTS_FILTER,
    DEAD_LETTER_FILTER,
    Channel,
    DeviceEvent,
    DeviceMessage,
    DeviceStatus,
    Rejected,
    RejectReason,
    Telemetry,
    dead_letter_topic,
    decode_alert,
    decode_dead_letter,
    encode,
    make_dead_letter,
)
from broker.ingest import DeviceIngest
from broker.mqtt import Message, MqttClient, NotDurable
from broker.registry import DeviceRegistry
from storage.backends import BackendError, OutboxDrainer, StorageBackend, create_backend
from storage.config import StorageConfig
from storage.lineproto import LineEncoder
from storage.outbox import Outbox, OutboxError

log = logging.getLogger(__name__)

STAGE = "storage"


class StorageService:
    """Writes every accepted message to the durable outbox in its handler; a task drains it.

    The handler returns only after the lines are in the outbox file, and the MQTT client
    acknowledges the messages only after the handler returned, so a point is never in neither
    place. Alert states and dead letters arrive on their own topics and are stored the same way.
    """

    def __init__(self, config: StorageConfig, *, mqtt: MqttClient, ingest: DeviceIngest,
                 registry: DeviceRegistry, state_dir: Path, backend: StorageBackend | None = None) -> None:
        self.config = config
        self.mqtt = mqtt
        self.ingest = ingest
        self.registry = registry
        self.state_dir = state_dir
        self.encoder = LineEncoder()
        oc = config.outbox
        self.outbox = Outbox(state_dir / "outbox", max_bytes=oc.max_bytes, segment_bytes=oc.segment_bytes,
                             fsync=oc.fsync, overflow=oc.overflow, min_free_bytes=oc.min_free_bytes)
        self.backend = backend if backend is not None else create_backend(config, state_dir)
        self.drainer = OutboxDrainer(self.outbox, self.backend, config.writer, on_refused=self._on_refused)
        self.counters: dict[str, int] = {
            "telemetry": 0, "events": 0, "status": 0, "alerts": 0, "dead_letters": 0, "undecodable": 0,
            "not_stored": 0, "not_durable_batches": 0, "not_durable_retries": 0,
        }
        self._sites: dict[str, str | None] = {}
        self._opened = False
        self._rejected_path = state_dir / "rejected.jsonl"

    # ------------------------------------------------------------------ lifecycle

    def attach(self) -> None:
        """Open the outbox and register the ingest consumer and the alert / dead-letter subscriptions."""
        self._open_outbox()
        channels = set()
        if self.config.store_telemetry:
            channels.add(Channel.TELEMETRY)
        if self.config.store_events:
            channels.add(Channel.EVENT)
        if self.config.store_status:
            channels.add(Channel.STATUS)
        if channels:
            self.ingest.add_consumer(channels, self.on_device_messages)
        if self.config.store_alerts:
            self.mqtt.subscribe(ALERTS_FILTER, self.on_alerts)
        if self.config.store_dead_letters:
            self.mqtt.subscribe(DEAD_LETTER_FILTER, self.on_dead_letters)

    def _open_outbox(self) -> None:
        if not self._opened:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.outbox.open()
            self._opened = True

    async def run(self) -> None:
        """Drain the outbox until cancelled; on the way out sync the outbox and close the backend."""
        self._open_outbox()
        log.info("storage: writing to %s (%d lines pending in the outbox)", self.backend.name,
                 self.outbox.pending_lines)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.drainer.run(), name="storage-drain")
                if self.config.outbox.fsync == "interval":
                    tg.create_task(self._sync_periodically(), name="storage-outbox-sync")
        finally:
            await self._flush_on_stop()
            # The outbox stays open: the MQTT client may still deliver (and then acknowledge) messages
            # until it is stopped after the stages, and those must reach the disk too.
            self.outbox.flush()
            with contextlib.suppress(Exception):
                await self.backend.close()

    async def _flush_on_stop(self) -> None:
        limit = self.config.writer.shutdown_flush_s
        if limit <= 0 or not self.outbox.pending_lines or self.drainer.unavailable_since is not None:
            return
        with contextlib.suppress(TimeoutError, BackendError):
            async with asyncio.timeout(limit):
                await self.drainer.drain_all()
        if self.outbox.pending_lines:
            log.info("storage: %d lines stay in the outbox for the next start", self.outbox.pending_lines)

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.outbox.fsync_interval_s)
            fd = self.outbox.sync_handle()
            if fd is not None:
                await asyncio.to_thread(_sync_and_close, fd)

    def close(self) -> None:
        """Close the outbox files (after the MQTT client stopped; tests and tools)."""
        if self._opened:
            self.outbox.close()
            self._opened = False

    def stats(self) -> dict[str, float]:
        """Counters of the handlers, the outbox and the drainer."""
        out: dict[str, float] = {f"stored_{k}": float(v) for k, v in self.counters.items()}
        out.update({f"outbox_{k}": float(v) for k, v in self.outbox.counters.items()})
        out.update({f"writer_{k}": float(v) for k, v in self.drainer.counters.items()})
        out["outbox_pending_lines"] = float(self.outbox.pending_lines)
        out["outbox_pending_bytes"] = float(self.outbox.pending_bytes)
        out["outbox_max_bytes"] = float(self.outbox.max_bytes)
        out["outbox_failing"] = 1.0 if self.outbox.last_error else 0.0
        out["fields_skipped"] = float(sum(self.encoder.skipped.values()))
        since = self.drainer.unavailable_since
        out["backend_unavailable_s"] = time.monotonic() - since if since is not None else 0.0
        return out

    # ------------------------------------------------------------------ handlers

    def on_device_messages(self, batch: list[DeviceMessage]) -> None:
        """Ingest consumer: telemetry, events and status to line protocol, then to the outbox."""
        enc = self.encoder
        telemetry = enc.telemetry
        sites = self._sites
        lines: list[str] = []
        append = lines.append
        counts = {"telemetry": 0, "events": 0, "status": 0, "not_stored": 0}
        for dm in batch:
            payload = dm.payload
            line: str | None
            if isinstance(payload, Telemetry):
                # The site named in the message, else the registry's (cached per device).
                device = dm.device_id
                site = payload.site or (sites[device] if device in sites else self._site(device, payload))
                line = telemetry(dm.kind, device, site, payload)
                counts["telemetry"] += 1
            elif isinstance(payload, DeviceEvent):
                line = enc.event(dm.kind, dm.device_id, self._site(dm.device_id, payload), payload)
                counts["events"] += 1
            elif isinstance(payload, DeviceStatus):
                line = enc.status(dm.kind, dm.device_id, self._site(dm.device_id, payload), payload, dm.received_at)
                counts["status"] += 1
            else:
                line = None
            if line is None:
                counts["not_stored"] += 1
            else:
                append(line)
        counters = self.counters
        for key, count in counts.items():
            counters[key] += count
        self._append(lines)

    def on_alerts(self, batch: list[Message]) -> None:
        """MQTT handler for ``vigil/v1/alerts/#``: one point per alert state change."""
        lines: list[str] = []
        for msg in batch:
            if not msg.payload:
                continue  # a cleared retained alert
            try:
                alert = decode_alert(msg.payload)
            except Rejected as exc:
                self._undecodable(msg, exc)
                continue
            lines.append(self.encoder.alert(alert))
            self.counters["alerts"] += 1
        self._append(lines)

    def on_dead_letters(self, batch: list[Message]) -> None:
        """MQTT handler for ``vigil/v1/deadletter/#``: one point per refused message."""
        lines: list[str] = []
        for msg in batch:
            try:
                letter = decode_dead_letter(msg.payload)
            except Rejected as exc:
                # Not re-published as a dead letter: that could loop.
                self.counters["undecodable"] += 1
                log.debug("storage: undecodable dead letter on %s: %s", msg.topic, exc)
                continue
            lines.append(self.encoder.dead_letter(letter))
            self.counters["dead_letters"] += 1
        self._append(lines)

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        payload = "\n".join(lines).encode("utf-8")
        try:
            self._append_payload(payload, len(lines))
        except NotDurable:
            self.counters["not_durable_batches"] += 1
            raise

    def _append_payload(self, payload: bytes, count: int) -> None:
        """Append or raise ``NotDurable`` (the MQTT client then holds the batch and retries this)."""
        try:
            appended = self.outbox.append_payload(payload, count)
        except OutboxError as exc:
            raise NotDurable(f"storage outbox: {exc}", lambda: self._retry_append(payload, count)) from exc
        if appended:  # else refused by the drop_newest overflow policy (counted and logged there)
            self.drainer.notify()

    def _retry_append(self, payload: bytes, count: int) -> None:
        self.counters["not_durable_retries"] += 1
        self._append_payload(payload, count)

    def _site(self, device_id: str, payload: object) -> str | None:
        site = getattr(payload, "site", None)
        if site:
            return str(site)
        try:
            return self._sites[device_id]
        except KeyError:
            dev = self.registry.device(device_id)
            found = dev.site if dev is not None else None
            if len(self._sites) > 100_000:
                self._sites.clear()
            self._sites[device_id] = found
            return found

    def _undecodable(self, msg: Message, exc: Rejected) -> None:
        self.counters["undecodable"] += 1
        letter = make_dead_letter(STAGE, msg.topic, msg.payload, exc.reason, exc.detail)
        self.mqtt.publish_nowait(dead_letter_topic(STAGE), encode(letter))

    def _on_refused(self, line: bytes, exc: BackendError) -> None:
        """A line the backend refused on its own: kept in ``rejected.jsonl``, logged, dead-lettered."""
        record = {"ts": time.time(), "status": exc.status, "error": exc.detail,
                  "line": line.decode("utf-8", "replace")}
        try:
            with open(self._rejected_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as oexc:
            log.error("storage: cannot record a refused line in %s: %s", self._rejected_path, oexc)
        log.warning("storage: %s refused a point (%s): %s", self.backend.name, exc, line[:200])
        if not line.startswith(b"dead_letters"):  # a refused dead letter is not dead-lettered again
            letter = make_dead_letter(STAGE, f"storage/{self.backend.name}", line, RejectReason.SCHEMA,
                                      f"backend refused the point: {exc}")
            self.mqtt.publish_nowait(dead_letter_topic(STAGE), encode(letter))


def _sync_and_close(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)

