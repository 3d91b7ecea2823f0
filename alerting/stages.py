"""The stages of the alerting pipeline, in their order (see ``alerting.pipeline``).

Each stage wraps one pure core (lifecycle, grouping, muting, roster, templates, storm control) and does
one job on the batch; none of them commits, publishes or sends. Storm control's core (``StormControl``:
a sliding one-minute window per recipient, the rest held for a digest) lives here beside its stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from alerting import escalation as esc
from alerting.config import AlertingConfig, EscalationPolicy, Receiver
from alerting.grouping import ACKED, FIRING, RESOLVED, Grouper
from alerting.lifecycle import AlertBook, AlertRecord, apply_transition, new_alert_id
from alerting.muting import Muter
from alerting.pipeline import Arrival, Batch, Change, Letter, Notice
from alerting.roster import DutyRoster
from alerting.router import Router
from alerting.store import AlertStore
from alerting.templates import MessageTemplates, Rendered
from broker.clocksteps import WallClockSteps
from broker.contracts import AlertStatus, Rejected, dead_letter_topic, decode_transition, encode, make_dead_letter
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry

if TYPE_CHECKING:
    from alerting.workorders.desk import WorkOrderDesk

log = logging.getLogger(__name__)
_GROUP_ENC = msgspec.json.Encoder()

SEEN_WINDOW_S = 600.0
SEEN_MAX = 100_000
"""Transitions remembered (as 16-byte digests) to recognise repeated deliveries."""


def group_status(rec: AlertRecord) -> str:
    """An alert's status as the grouper counts it."""
    return {AlertStatus.FIRING: FIRING, AlertStatus.ACKNOWLEDGED: ACKED}.get(rec.status, RESOLVED)


class DedupStage:
    """Drops a transition seen before within ``SEEN_WINDOW_S``.

    The same transition can arrive more than once: handed over in-process and then echoed by the
    broker, once more per overlapping subscription of this process (MQTT 5 brokers send a copy per
    matching subscription), and again as a QoS 1 redelivery. Only the first counts.
    """

    name = "dedup"

    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self.seen: dict[bytes, float] = {}

    def first_sight(self, payload: bytes, now: float) -> bool:
        """Whether this exact payload is new within the window (and remember it)."""
        key = hashlib.blake2b(payload, digest_size=16).digest()
        seen = self.seen
        if key in seen:
            return False
        seen[key] = now
        while seen:  # insertion order is time order
            oldest_key, oldest = next(iter(seen.items()))
            if len(seen) <= SEEN_MAX and now - oldest <= SEEN_WINDOW_S:
                break
            del seen[oldest_key]
        return True

    def process(self, batch: Batch) -> Batch:
        """Keep the arrivals seen for the first time."""
        if batch.arrivals:
            kept = [a for a in batch.arrivals if self.first_sight(a.payload, batch.now)]
            self.counters["transitions_duplicate"] += len(batch.arrivals) - len(kept)
            batch.arrivals = kept
        return batch

    def shift(self, delta: float) -> None:
        """Remembered deliveries keep their window across a wall-clock step."""
        self.seen = {k: t + delta for k, t in self.seen.items()}


class DecodeStage:
    """Decodes MQTT payloads into ``Transition``; a refused one is counted and dead-lettered."""

    name = "decode"

    def __init__(self, mqtt: MqttClient, counters: Counter[str]) -> None:
        self.mqtt = mqtt
        self.counters = counters

    def process(self, batch: Batch) -> Batch:
        """Replace each undecoded arrival by its decoded transition (refused ones leave the batch)."""
        out: list[Arrival] = []
        for a in batch.arrivals:
            if a.transition is not None:
                self.counters["transitions"] += 1
                self.counters["transitions_local"] += 1
                out.append(a)
                continue
            try:
                t = decode_transition(a.payload)
            except Rejected as exc:
                self.counters["rejected"] += 1
                topic = a.message.topic if a.message is not None else ""
                letter = make_dead_letter("alerting", topic, a.payload, exc.reason, exc.detail)
                self.mqtt.publish_nowait(dead_letter_topic("alerting"), encode(letter))
                continue
            self.counters["transitions"] += 1
            out.append(Arrival(a.payload, a.received_at, t, a.message))
        batch.arrivals = out
        return batch


class LifecycleStage:
    """Applies each transition to its alert (firing / re-fired / reopened / resolved), saving it in the book."""

    name = "lifecycle"

    def __init__(self, config: AlertingConfig, book: AlertBook[AlertStore], router: Router, registry: DeviceRegistry | None,
                 clock_steps: WallClockSteps | None, counters: Counter[str]) -> None:
        self.config = config
        self.book = book
        self.router = router
        self.registry = registry
        self.clock_steps = clock_steps
        self.counters = counters
        self.workorders: WorkOrderDesk | None = None

    def process(self, batch: Batch) -> Batch:
        """One ``Change`` per transition that changed an alert; one bad transition does not stop the others."""
        for a in batch.arrivals:
            t = a.transition
            assert t is not None  # the decode stage left only decoded arrivals
            try:
                ch = self._apply(a, batch.now)
            except Exception:
                self.counters["transition_errors"] += 1
                log.exception("alerting: transition %s for %s failed", t.rule, t.device_id)
                continue
            if ch is not None:
                batch.changes.append(ch)
        return batch

    def _apply(self, a: Arrival, now: float) -> Change | None:
        t = a.transition
        assert t is not None
        current = self.book.current(t.fingerprint)
        recent = self.book.store.latest_resolved(t.fingerprint) if current is None and t.status == "firing" else None
        site = self.registry.site_of(t.device_id) if self.registry is not None else None
        unit, industry = (site.unit, site.industry) if site is not None else ("", "")
        if self.workorders is not None and current is None:
            t = self.workorders.place(t, site)  # the case's grid, from its site or its position
        labels = dict(t.labels)
        labels.update(rule=t.rule, severity=t.severity.value, kind=t.kind.value, device_id=t.device_id,
                      site=t.site or "", unit=labels.get("unit") or unit, industry=labels.get("industry") or industry)
        plans = self.router.routes_for(labels)
        shift = self.clock_steps.frame_shift(now - t.ts.timestamp()) if self.clock_steps is not None else 0.0
        out = apply_transition(current, recent, t, now, new_id=new_alert_id(now), deadlines=self.config.deadlines,
                               reopen_window_s=self.config.reopen_window_s, unit=labels["unit"],
                               industry=labels["industry"], policy=plans[0].escalation, frame_shift_s=shift)
        self.counters[f"transition_{out.change}"] += 1
        if out.record is None or out.change in ("stale", "ignored"):
            return None
        rec = out.record
        self.book.save(rec, out.events)
        if self.workorders is not None:
            self.workorders.on_alert(rec, out.change, now)
        self.book.received(rec.id, a.received_at)
        return Change(rec, out.change, plans, renotify=out.change in ("reopened", "severity"))


class GroupingStage:
    """Puts changed alerts into their routes' groups and takes the groups whose flush is due."""

    name = "grouping"

    def __init__(self, grouper: Grouper, router: Router, counters: Counter[str]) -> None:
        self.grouper = grouper
        self.router = router
        self.counters = counters

    def process(self, batch: Batch) -> Batch:
        """Update groups with the batch's changes, then add every due flush."""
        for ch in batch.changes:
            rec = ch.record
            try:
                for plan in ch.plans or self.router.routes_for(rec.match_labels()):
                    self.grouper.update(plan, rec.match_labels(), rec.id, group_status(rec), batch.now,
                                        renotify=ch.renotify)
            except Exception:  # one bad alert must not stop the others
                self.counters["transition_errors"] += 1
                log.exception("alerting: grouping alert %s failed", rec.id)
        batch.flushes.extend(self.grouper.due(batch.now))
        return batch


class MutingStage:
    """Silences, maintenance windows and inhibition: muted alerts leave a flush and count as not yet notified."""

    name = "muting"

    def __init__(self, muter: Muter, grouper: Grouper, router: Router, policies: dict[str, EscalationPolicy],
                 book: AlertBook[AlertStore], counters: Counter[str]) -> None:
        self.muter = muter
        self.grouper = grouper
        self.router = router
        self.policies = policies
        self.book = book
        self.counters = counters

    def muted(self, rec: AlertRecord, now: float) -> bool:
        """Whether an alert is muted now (counted by kind of muting)."""
        reason = self.muter.mute_reason(rec.id, rec.match_labels(), now)
        if reason is not None:
            self.counters[f"muted_{reason.kind}"] += 1
            return True
        return False

    def process(self, batch: Batch) -> Batch:
        """One ``Notice`` per flush that still has something to say after muting."""
        now = batch.now
        for fl in batch.flushes:
            firing = [r for a in fl.firing if (r := self.book.open.get(a)) is not None]
            resolved = [r for a in fl.resolved if (r := self.book.store.get_alert(a)) is not None]
            muted = [r.id for r in firing if self.muted(r, now)]
            if muted:
                self.grouper.held_back(fl.key, muted)
                firing = [r for r in firing if r.id not in muted]
            resolved = [r for r in resolved if not self.muted(r, now)]
            if not firing and not resolved:
                self.counters["flushes_muted"] += 1
                continue
            plan = self.router.plans[fl.route_id]
            targets = list(plan.receivers)
            pol = self.policies.get(plan.escalation or "")
            if pol is not None and firing and not fl.repeat:
                targets += esc.immediate_targets(pol)
            head = firing[0] if firing else resolved[0]
            batch.notices.append(Notice(
                kind="repeat" if fl.repeat else ("firing" if firing else "resolved"), firing=firing,
                resolved=resolved, key=f"g:{fl.key}:{fl.seq}", targets=targets, unit=head.assigned_unit or head.unit,
                grid=head.labels.get("grid", "")))
        return batch


class TargetsStage:
    """Turns targets (receivers, people, roles and rosters on duty, grid staff) into recipients."""

    name = "targets"

    def __init__(self, config: AlertingConfig, roster: DutyRoster) -> None:
        self.config = config
        self.roster = roster
        self.receivers: dict[str, Receiver] = {r.name: r for r in config.receivers}
        self.workorders: WorkOrderDesk | None = None

    def process(self, batch: Batch) -> Batch:
        """Address every notice that has no recipients yet."""
        for n in batch.notices:
            if n.recipients is None:
                n.recipients = self.resolve(n.targets, n.unit, batch.now, n.grid)
        return batch

    def resolve(self, targets: list[str], unit: str, now: float, grid: str = "") -> list[str]:
        """Targets (``person:``, ``role:``, ``roster:``, ``receiver:``, ``grid:staff|duty`` or a receiver name) as
        recipients, in order, without repeats."""
        out: list[str] = []
        for t in targets:
            kind, _, name = t.partition(":")
            if not name:
                kind, name = "receiver", kind
            found: list[str] = []
            if kind == "receiver":
                found = [f"receiver:{name}"]
            elif kind == "person":
                found = [f"person:{name}"]
            elif kind == "role":
                found = [f"person:{p}" for p in self.roster.people_for_role(name, unit, now)]
            elif kind == "roster":
                s = self.roster.shift(name, now)
                found = [f"person:{s.person}"] if s is not None else []
            elif kind == "grid" and name == "staff" and self.workorders is not None:
                found = [f"person:{p}" for p in self.workorders.staff_of(grid)]
            elif kind == "grid" and name == "duty" and self.workorders is not None:
                found = [f"person:{p}" for p in self.workorders.on_duty_in(grid, now)]
            for f in found:
                if f not in out:
                    out.append(f)
        return out

    def recipient(self, key: str) -> tuple[list[str], str]:
        """A recipient's Apprise URLs (in failover order) and locale."""
        kind, _, name = key.partition(":")
        if kind == "receiver" and (r := self.receivers.get(name)) is not None:
            return list(r.urls), r.locale or self.config.locale
        if kind == "person" and (p := self.roster.people.get(name)) is not None:
            return list(p.channels), p.locale or self.config.locale
        return [], self.config.locale


class RenderStage:
    """Writes each notice's text once per recipient, in the recipient's locale."""

    name = "render"

    def __init__(self, templates: MessageTemplates, locale_of: Callable[[str], str]) -> None:
        self.templates = templates
        self.locale_of = locale_of

    def process(self, batch: Batch) -> Batch:
        """One ``Letter`` per notice and recipient."""
        for n in batch.notices:
            for rcpt in n.recipients or ():
                locale = self.locale_of(rcpt)
                if n.kind == "digest":
                    lines = n.lines or []
                    title = "告警汇总" if locale == "zh" else "Digest"
                    text = Rendered(f"{title} ({len(lines)})", "\n".join(lines[:200]), None)
                else:
                    text = self.templates.render(n.kind, n.firing, n.resolved, locale, n.step)
                batch.letters.append(Letter(n, rcpt, text))
        return batch


@dataclass
class StormControl:
    """Per-recipient sliding one-minute window; what does not fit waits for the next digest."""

    max_per_minute: int
    digest_s: float = 60.0
    _sent: dict[str, deque[float]] = field(default_factory=dict)
    _held: dict[str, list[str]] = field(default_factory=dict)
    _held_since: dict[str, float] = field(default_factory=dict)

    def admit(self, recipient: str, now: float) -> bool:
        """Whether a notification to ``recipient`` may go out now (counts it when it may)."""
        q = self._sent.setdefault(recipient, deque())
        while q and q[0] <= now - 60.0:
            q.popleft()
        if len(q) >= self.max_per_minute:
            return False
        q.append(now)
        return True

    def hold(self, recipient: str, line: str, now: float) -> None:
        """Keep a held notification's title for the recipient's next digest."""
        self._held.setdefault(recipient, []).append(line)
        self._held_since.setdefault(recipient, now)

    def held_for(self, recipient: str) -> tuple[float, list[str]] | None:
        """(since, lines) held for a recipient, for persistence."""
        if recipient not in self._held_since:
            return None
        return self._held_since[recipient], list(self._held.get(recipient, []))

    def restore(self, recipient: str, since: float, lines: list[str]) -> None:
        """Put back held lines loaded from the store."""
        self._held[recipient] = list(lines)
        self._held_since[recipient] = since

    def due_digests(self, now: float) -> list[tuple[str, list[str]]]:
        """Digests due: recipients whose oldest held line waited ``digest_s``."""
        out = []
        for rcpt, since in list(self._held_since.items()):
            if now - since >= self.digest_s:
                out.append((rcpt, self._held.pop(rcpt, [])))
                del self._held_since[rcpt]
        return out

    def next_due(self) -> float | None:
        """When the next digest is due."""
        return min(self._held_since.values()) + self.digest_s if self._held_since else None

    def shift(self, delta: float) -> list[str]:
        """Move the rate windows and digest waits by a step of the wall clock (``delta`` s); returns who waits."""
        for q in self._sent.values():
            for i in range(len(q)):
                q[i] += delta
        for rcpt in self._held_since:
            self._held_since[rcpt] += delta
        return list(self._held_since)

    def held(self) -> int:
        """How many notifications wait for a digest."""
        return sum(len(v) for v in self._held.values())


class StormStage:
    """Above ``storm.max_per_minute`` notifications a minute to one recipient, the rest wait for a digest."""

    name = "storm"

    def __init__(self, storm: StormControl, store: AlertStore, counters: Counter[str]) -> None:
        self.storm = storm
        self.store = store
        self.counters = counters

    def process(self, batch: Batch) -> Batch:
        """Admit or hold each letter (digests themselves always go)."""
        for letter in batch.letters:
            if letter.notice.kind == "digest" or self.storm.admit(letter.recipient, batch.now):
                continue
            rcpt = letter.recipient
            self.storm.hold(rcpt, letter.text.title, batch.now)
            self.store.kv_put("storm", rcpt, json.dumps(self.storm.held_for(rcpt), ensure_ascii=False))
            letter.status = "digested"
            self.counters["notifications_digested"] += 1
        return batch


class OutboxStage:
    """Writes the letters and the flushed groups' state into the store's open transaction (durable on commit)."""

    name = "outbox"

    def __init__(self, config: AlertingConfig, book: AlertBook[AlertStore], grouper: Grouper, counters: Counter[str],
                 to_deliver: Callable[[int, float | None], None]) -> None:
        self.config = config
        self.book = book
        self.grouper = grouper
        self.counters = counters
        self.to_deliver = to_deliver
        """Hands a new outbox id (and its transition's receipt time) to delivery, which sends it after the commit."""

    def process(self, batch: Batch) -> Batch:
        """Add each letter to the outbox once (by dedup key); pending ones are queued for delivery."""
        store = self.book.store
        for fl in batch.flushes:
            g = self.grouper.groups.get(fl.key)
            if g is None:
                store.kv_delete("group", fl.key)
            else:
                store.kv_put("group", fl.key, _GROUP_ENC.encode(g).decode())
        for letter in batch.letters:
            n, rcpt, text = letter.notice, letter.recipient, letter.text
            if n.kind == "digest":
                nid = store.add_notification(
                    dedup_key=n.key, kind="digest", recipient=rcpt, alert_ids=[], title=text.title, body=text.body,
                    attach=None, created_at=batch.now, source_ts=None, received_at=None)
                if nid is not None:
                    batch.queued.append(nid)
                    self.to_deliver(nid, None)
                continue
            trigger = max(n.firing or n.resolved, key=lambda r: r.updated_at)
            nid = store.add_notification(
                dedup_key=f"{n.key}:{rcpt}", kind=n.kind, recipient=rcpt,
                alert_ids=[r.id for r in n.firing] + [r.id for r in n.resolved], title=text.title, body=text.body,
                attach=text.attach if self.config.attach_snapshots else None, created_at=batch.now,
                source_ts=trigger.source_ts, received_at=trigger.received_at, status=letter.status)
            if nid is None:
                self.counters["notifications_deduplicated"] += 1
            elif letter.status == "pending":
                self.counters["notifications_queued"] += 1
                batch.queued.append(nid)
                self.to_deliver(nid, self.book.received_at.get(trigger.id))
        return batch
