"""Start-up: rebuild alerting's in-memory state from its store and its configuration."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import msgspec

from alerting.config import AlertingConfig
from alerting.grouping import Grouper, GroupState
from alerting.lifecycle import AlertBook
from alerting.muting import MaintenanceCalendar, MaintenanceEntry, SilenceEntry, SilenceSet
from alerting.roster import DutyRoster, OverrideEntry
from alerting.stages import StormControl
from alerting.store import AlertStore

log = logging.getLogger(__name__)
_GROUP_DEC = msgspec.json.Decoder(GroupState)


def parse_time(text: str) -> float:
    """An ISO 8601 time (``Z`` allowed) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def restore(config: AlertingConfig, book: AlertBook[AlertStore], grouper: Grouper, silences: SilenceSet,
            maintenance: MaintenanceCalendar, roster: DutyRoster, storm: StormControl) -> None:
    """Open alerts, groups, silences, maintenance windows, roster overrides and held digest lines."""
    store = book.store
    for rec in store.open_alerts():
        book.remember(rec)
    for key, data in store.kv_all("group").items():
        try:
            grouper.restore(_GROUP_DEC.decode(data))
        except msgspec.DecodeError:
            log.warning("alerting: dropping unreadable group state %r", key[:100])
    for s in config.silences:
        silences.put(SilenceEntry(id=f"config-{len(silences.entries)}", matchers=s.matchers,
                                  starts_at=parse_time(s.starts_at), ends_at=parse_time(s.ends_at),
                                  author=s.author, comment=s.comment))
    for data in store.kv_all("silence").values():
        silences.put(msgspec.json.decode(data, type=SilenceEntry))
    for key, data in store.kv_all("maintenance").items():
        try:  # written by AlertDesk.create_maintenance, checked then; a later zone database may lack its zone
            maintenance.put(msgspec.json.decode(data, type=MaintenanceEntry))
        except (msgspec.DecodeError, ValueError, KeyError) as exc:
            log.warning("alerting: ignoring unreadable maintenance window %r (left in the store): %s", key[:100], exc)
    for i, o in enumerate(config.overrides):
        roster.overrides[f"config-{i}"] = OverrideEntry(
            id=f"config-{i}", roster=o.roster, person=o.person, starts_at=parse_time(o.starts_at),
            ends_at=parse_time(o.ends_at), reason=o.reason)
    for rcpt, data in store.kv_all("storm").items():
        since, lines = json.loads(data)
        storm.restore(rcpt, float(since), [str(x) for x in lines])
    for data in store.kv_all("override").values():
        o2 = msgspec.json.decode(data, type=OverrideEntry)
        roster.overrides[o2.id] = o2
