"""The console's state and views: live device state, the alert board, details, map, duty, figures.

The console runs in the same process as the alerting stage (``peers["alerting"]``) and uses only
its public surface (``alerting.surface.AlertingSurface``): typed reads of open alerts (memory) and
history (its store), commands through its desk (which checks roles, records the audit trail,
commits and publishes on MQTT), and alert changes through ``watch()``. Device data arrives through
the shared ``DeviceIngest``. The HTTP side (``console.web``) is a thin adapter over the view methods here;
``console.service.ConsoleService`` adds the stage's runtime interface (attach, run).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from alerting.surface import (
    SEVERITY_RANK,
    AlertingSurface,
    AlertingUnavailable,
    AlertQuery,
    AlertRecord,
    EvidenceConfig,
    EvidencePolicy,
    EvidenceRefused,
    NotificationQuery,
    as_json,
)
from broker.contracts import Alert
from broker.ingest import DeviceIngest
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from console import board
from console.auth import LoginThrottle, SessionBook, accounts_from
from console.config import ConsoleConfig, MapFeature
from console.errors import ConsoleError as ConsoleError  # re-exported; raised when the console cannot start
from console.geo import LayerFileError, bounds_of, load_geojson_layers, wgs84_to_gcj02
from console.history import HistoryReader, reader_for
from console.journal import ConsoleJournal
from console.live import LiveDevices
from console.push import PushHub

_JSON = msgspec.json.Encoder()


class ConsoleViews:
    """The console's state and the views behind its pages (the stage itself is ``console.service.ConsoleService``)."""

    def __init__(self, config: ConsoleConfig, *, mqtt: MqttClient, ingest: DeviceIngest, registry: DeviceRegistry,
                 state_dir: Path, peers: dict[str, object] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        alerting = (peers or {}).get("alerting")
        if alerting is None:
            raise ConsoleError("the console needs the alerting stage in the same process: list 'alerting' "
                               "before 'console' in services")
        self.config = config
        self.mqtt = mqtt
        self.ingest = ingest
        self.registry = registry
        self.clock = clock
        try:
            self.alerting = AlertingSurface.of(alerting)
        except AlertingUnavailable as exc:
            raise ConsoleError(f"console: peers['alerting'] is {exc}") from None
        self.tz = ZoneInfo(config.timezone)
        self.live = LiveDevices(config.chart_points, config.track_points)
        self.hub = PushHub(config.sse_queue)
        self.sessions = SessionBook(config.session_ttl_s)
        self.throttle = LoginThrottle(config.login_failures, config.login_window_s, config.login_failures_global)
        self.accounts = accounts_from(self.alerting.users())
        ev = self.alerting.evidence_config()
        self.evidence = EvidencePolicy(EvidenceConfig(dir=config.evidence_dir or ev.dir, hosts=ev.hosts,
                                                      max_bytes=ev.max_bytes, timeout_s=ev.timeout_s))
        state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = ConsoleJournal(state_dir / "console.sqlite3")
        self.history: HistoryReader | None = reader_for((peers or {}).get("storage"))
        self.layers = self._load_layers()
        self.counters: Counter[str] = Counter()
        self.port: int | None = None
        self.started = asyncio.Event()
        self._seen_alerts: set[str] = self.alerting.open_ids()
        self.alert_version = 0
        self._board_cache: dict[tuple[board.BoardQuery, bool], bytes] = {}
        self._board_cache_key: tuple[int, int] = (-1, -1)

    def _load_layers(self) -> list[MapFeature]:
        layers = list(self.config.map.areas)
        if self.config.map.layers_file:
            try:
                layers += load_geojson_layers(Path(self.config.map.layers_file))
            except LayerFileError as exc:
                raise ConsoleError(f"console.map.layers_file: {exc}") from None
        return layers

    # ------------------------------------------------------------------ counters

    def stats(self) -> dict[str, float]:
        """Counters: pages connected, events pushed, resyncs, logins, actions, devices tracked."""
        out = {k: float(v) for k, v in self.counters.items()}
        out.update(pages=float(len(self.hub.clients)), events_pushed=float(self.hub.published),
                   page_resyncs=float(self.hub.resyncs), sessions=float(len(self.sessions.sessions)),
                   devices_live=float(len(self.live.devices)))
        return out

    @property
    def url(self) -> str:
        """Where the console answers (after it started)."""
        return f"http://{self.config.host}:{self.port or self.config.port}/"

    # ------------------------------------------------------------------ inputs

    def on_alert_change(self, alert: Alert) -> None:
        """Push one alert change to every page; keep the device's state when an alert is new."""
        rec = self.alerting.find_alert(alert.id)
        if rec is None:
            return
        if alert.id not in self._seen_alerts and rec.is_open:
            self._seen_alerts.add(alert.id)
            self._keep_snapshot(rec)
        elif not rec.is_open:
            self._seen_alerts.discard(alert.id)
        self.alert_version += 1
        self.hub.publish("alert", self.alerting.alert_json(rec))
        self.counters["alert_changes"] += 1

    def _keep_snapshot(self, rec: AlertRecord) -> None:
        dev = self.live.devices.get(rec.device_id)
        data: dict[str, Any] = {"values": dict(rec.values)}
        if dev is not None:
            data.update(device_values=dict(dev.values), quality=dict(dev.quality), values_ts=dev.values_ts,
                        last_event=dev.last_event)
        self.journal.put_snapshot(rec.id, self.clock(), rec.device_id, data)

    # ------------------------------------------------------------------ the board and one alert

    def board_body(self, q: board.BoardQuery, with_facets: bool) -> bytes:
        """The board page as JSON, shared by every page asking the same question until an alert changes.

        Fifty operators refreshing after the same alert change cost one query, not fifty; the cache
        also expires every second because deadlines and mutes move with time.
        """
        key = (self.alert_version, int(self.clock()))
        if key != self._board_cache_key:
            self._board_cache.clear()
            self._board_cache_key = key
        body = self._board_cache.get((q, with_facets))
        if body is None:
            body = _JSON.encode(self.board(q, with_facets))
            if len(self._board_cache) < 512:
                self._board_cache[(q, with_facets)] = body
            self.counters["board_queries"] += 1
        else:
            self.counters["board_cache_hits"] += 1
        return body

    def board(self, q: board.BoardQuery, with_facets: bool) -> dict[str, Any]:
        """A page of the alert board, the critical alerts nobody took, and optionally facet counts."""
        svc = self.alerting
        open_recs = svc.open_alerts()
        if q.in_memory:
            total, page = board.select(open_recs, q)
        else:
            if q.text:
                # Text search over history scans the newest 5,000 matching rows (bounded work per request).
                found = [r for r in svc.alerts(AlertQuery(status=q.statuses, filters=q.filters, limit=5000))
                         if board.matches_text(r, q.text)]
                total, page = len(found), found[q.offset:q.offset + q.limit]
            else:
                hq = AlertQuery(status=q.statuses, filters=q.filters, limit=q.limit, offset=q.offset)
                page = svc.alerts(hq)
                total = svc.count_alerts(hq)
        out: dict[str, Any] = {
            "total": total, "offset": q.offset, "limit": q.limit,
            "alerts": [svc.alert_json(r) for r in page],
            "critical": [svc.alert_json(r) for r in self._unmuted(board.critical_unacknowledged(open_recs, 200))[:50]],
        }
        if with_facets:
            out["facets"] = board.facets(open_recs)
        return out

    def _unmuted(self, recs: list[AlertRecord]) -> list[AlertRecord]:
        # A silenced or maintenance-muted critical alert stays on the board but does not sound.
        now = self.clock()
        return [r for r in recs if self.alerting.mute_reason(r, now) is None]

    def alert_detail(self, alert_id: str) -> dict[str, Any]:
        """An alert with its timeline, notifications (with attempts), evidence and place. Raises ``DeskError``."""
        svc = self.alerting
        rec = svc.alert(alert_id)
        timeline = [{"ts": e.ts, "actor": e.actor, "action": e.action, "detail": e.detail}
                    for e in svc.timeline(alert_id)]
        notes = []
        for n in svc.notifications(NotificationQuery(alert_id=alert_id, limit=100)):
            row = n.public()
            row.pop("body", None)
            row["attempts_log"] = [as_json(a) for a in svc.attempts(n.id)]
            row["recipient_name"] = self._recipient_name(n.recipient)
            notes.append(row)
        dev = self.registry.device(rec.device_id)
        site = self.registry.site_of(rec.device_id)
        return {
            "alert": svc.alert_json(rec),
            "timeline": timeline,
            "notifications": notes,
            "snapshot": self.journal.snapshot(alert_id),
            "snapshot_image": self.evidence_href(rec.snapshot_url, rec.id),
            "rule": {"name": rec.rule, "description": rec.description, "values": rec.values, "labels": rec.labels,
                     "fingerprint": rec.fingerprint, "policy": rec.esc_policy},
            "device": {"id": rec.device_id, "kind": str(rec.kind), "name": dev.name if dev else "",
                       "site": site.id if site else rec.site, "site_name": site.name if site else "",
                       "position": self.device_position(rec.device_id)},
        }

    def _recipient_name(self, key: str) -> str:
        kind, _, name = key.partition(":")
        if kind == "person" and (p := self.alerting.person(name)) is not None:
            return p.name or name
        return name

    def evidence_href(self, url: str | None, alert_id: str | None = None) -> str | None:
        """A console link for an allowed snapshot reference, else None.

        The page never loads a device-supplied URL: files in the evidence store go through
        ``/evidence/``, snapshots on allow-listed evidence hosts through ``/api/alerts/{id}/snapshot``.
        """
        from urllib.parse import quote

        if not url:
            return None
        try:
            kind, target = self.evidence.classify(url)
        except EvidenceRefused as exc:
            self.counters[f"evidence_refused_{exc.reason}"] += 1
            return None
        if kind == "store" and self.evidence.root is not None:
            return "/evidence/" + quote(Path(target).relative_to(self.evidence.root).as_posix())
        return f"/api/alerts/{quote(alert_id, safe='')}/snapshot" if alert_id else None

    # ------------------------------------------------------------------ devices and the map

    def _open_by_device(self) -> dict[str, list[AlertRecord]]:
        out: dict[str, list[AlertRecord]] = {}
        for r in self.alerting.open_alerts():
            out.setdefault(r.device_id, []).append(r)
        return out

    def display(self, lon: float, lat: float) -> list[float]:
        """A WGS-84 position in the basemap's datum."""
        if self.config.gcj02_basemap:
            lon, lat = wgs84_to_gcj02(lon, lat)
        return [round(lon, 6), round(lat, 6)]

    def device_position(self, device_id: str) -> list[float] | None:
        """Where to draw a device: its reported position, its own coordinates, or its site's."""
        live = self.live.devices.get(device_id)
        pos = live.position() if live is not None else None
        if pos is None:
            dev = self.registry.device(device_id)
            lat = dev.attributes.get("lat") if dev else None
            lon = dev.attributes.get("lon") if dev else None
            if isinstance(lat, int | float) and isinstance(lon, int | float):
                pos = (float(lon), float(lat))
        if pos is None:
            site = self.registry.site_of(device_id)
            if site is not None and site.lat is not None and site.lon is not None:
                pos = (site.lon, site.lat)
        return self.display(*pos) if pos is not None else None

    def device_row(self, device_id: str, now: float, open_by_device: dict[str, list[AlertRecord]],
                   ) -> dict[str, Any]:
        """One device for the list and the map."""
        dev = self.registry.device(device_id)
        live = self.live.devices.get(device_id)
        site = self.registry.site_of(device_id)
        alerts = open_by_device.get(device_id, [])
        worst = max(alerts, key=lambda r: SEVERITY_RANK[r.severity]).severity.value if alerts else None
        return {
            "id": device_id, "kind": str(dev.kind) if dev else (live.kind if live else ""),
            "name": dev.name if dev else "", "registered": dev is not None,
            "site": site.id if site else (dev.site if dev else None), "site_name": site.name if site else "",
            "industry": site.industry if site else "", "unit": site.unit if site else "",
            "online": live.online(now, self.config.offline_after_s) if live else False,
            "last_seen": live.last_seen if live else None,
            "status_reason": live.status_reason if live else None,
            "values": dict(live.values) if live else {}, "values_ts": live.values_ts if live else None,
            "open_alerts": len(alerts), "worst_severity": worst,
            "position": self.device_position(device_id),
        }

    def devices(self, params: dict[str, str]) -> dict[str, Any]:
        """The device registry with live state, filtered by kind, site, online and text."""
        now = self.clock()
        ids = list(self.registry.devices) + [d for d in self.live.devices if d not in self.registry.devices]
        obd = self._open_by_device()
        rows = [self.device_row(d, now, obd) for d in ids]
        if params.get("kind"):
            rows = [r for r in rows if r["kind"] == params["kind"]]
        if params.get("site"):
            rows = [r for r in rows if r["site"] == params["site"]]
        if params.get("online") in ("true", "false"):
            rows = [r for r in rows if r["online"] == (params["online"] == "true")]
        text = (params.get("q") or "").lower()
        if text:
            rows = [r for r in rows if text in r["id"].lower() or text in r["name"].lower()
                    or text in (r["site_name"] or "").lower()]
        rank = {k.value: v + 1 for k, v in SEVERITY_RANK.items()}
        rows.sort(key=lambda r: (-rank.get(r["worst_severity"] or "", 0), not r["online"], r["id"]))
        online = sum(1 for r in rows if r["online"])
        return {"total": len(rows), "online": online, "devices": rows[:2000]}

    def device_detail(self, device_id: str) -> dict[str, Any] | None:
        """One device: live state, open alerts and recent alert history."""
        if self.registry.device(device_id) is None and device_id not in self.live.devices:
            return None
        now = self.clock()
        row = self.device_row(device_id, now, self._open_by_device())
        hist = self.alerting.alerts(AlertQuery(filters=(("device_id", device_id),), limit=50))
        dev = self.registry.device(device_id)
        live = self.live.devices.get(device_id)
        return {"device": row, "attributes": dict(dev.attributes) if dev else {},
                "labels": dict(dev.labels) if dev else {}, "quality": dict(live.quality) if live else {},
                "last_event": live.last_event if live else None,
                "alerts": [self.alerting.alert_json(r) for r in hist]}

    async def series(self, device_id: str, since: float, until: float) -> dict[str, Any]:
        """Numeric telemetry of a device in [since, until] from memory, or from storage for older windows."""
        points = self.live.series(device_id, since, until)
        source = "memory"
        live = self.live.devices.get(device_id)
        oldest = live.series[0][0] if live is not None and live.series else None
        if self.history is not None and (oldest is None or oldest > since + 1.0):
            dev = self.registry.device(device_id)
            kind = str(dev.kind) if dev else (live.kind if live else "")
            stored = await self.history.aread(kind, device_id, since, until)
            if stored:
                cut = points[0][0] if points else float("inf")
                points = [p for p in stored if p[0] < cut] + points
                source = "storage"
        return {"device_id": device_id, "since": since, "until": until, "source": source,
                "points": [{"ts": t, "values": v} for t, v in points]}

    def map_data(self) -> dict[str, Any]:
        """Everything the map draws: layers, sites, devices, tracks and alert markers."""
        now = self.clock()
        obd = self._open_by_device()
        sites: list[dict[str, Any]] = []
        for s in self.registry.sites.values():
            if s.lat is None or s.lon is None:
                continue
            n_open = sum(len(obd.get(d.id, [])) for d in self.registry.devices.values() if d.site == s.id)
            sites.append({"id": s.id, "name": s.name, "industry": s.industry, "unit": s.unit,
                          "position": self.display(s.lon, s.lat), "open_alerts": n_open})
        ids = list(self.registry.devices) + [d for d in self.live.devices if d not in self.registry.devices]
        devices = [r for r in (self.device_row(d, now, obd) for d in ids) if r["position"] is not None]
        for r in devices:
            r.pop("values", None)
            live = self.live.devices.get(r["id"])
            if live is not None and r["kind"] == "vehicle":
                r["speed_kmh"] = live.values.get("speed_kmh")
                r["heading_deg"] = live.values.get("heading_deg")
        tracks = {d: [self.display(lon, lat) for _, lon, lat in live.track]
                  for d, live in self.live.devices.items() if len(live.track) > 1}
        markers = []
        for d, recs in obd.items():
            pos = self.device_position(d)
            if pos is None:
                continue
            worst = max(recs, key=lambda r: SEVERITY_RANK[r.severity])
            markers.append({"device_id": d, "position": pos, "count": len(recs), "alert_id": worst.id,
                            "severity": worst.severity.value, "status": worst.status.value,
                            "summary": worst.summary, "summary_en": worst.summary_en})

        def feats(fs: list[MapFeature]) -> list[dict[str, Any]]:
            return [{"name": f.name, "kind": f.kind, "color": f.color, "coordinates": f.coordinates} for f in fs]

        grids = self._map_grids()
        bounds = self.config.map.bounds
        if bounds is None:
            pts: list[tuple[float, float]] = [(s["position"][0], s["position"][1]) for s in sites]
            pts += [(d["position"][0], d["position"][1]) for d in devices]
            pts += [c for f in self.layers + self.config.map.geofences + self.config.map.routes for c in f.coordinates]
            pts += [(c[0], c[1]) for gr in grids for c in gr["coordinates"]]
            bounds = bounds_of(pts) or (120.0, 30.1, 120.3, 30.4)
        return {"bounds": list(bounds), "gcj02": self.config.gcj02_basemap,
                "layers": feats(self.layers), "geofences": feats(self.config.map.geofences),
                "routes": feats(self.config.map.routes), "sites": sites, "devices": devices,
                "tracks": tracks, "markers": markers, "grids": grids}

    def _map_grids(self) -> list[dict[str, Any]]:
        """Grids (work orders) with their outline in display coordinates and their open cases."""
        wo = self.alerting.workorders
        if wo is None:
            return []
        out = []
        for g in wo.grid_rows():
            out.append({"id": g["id"], "name": g["name"], "open_cases": g["open_cases"],
                        "overdue_cases": g["overdue_cases"], "centre": self.display(*g["centre"]),
                        "coordinates": [self.display(lon, lat) for lon, lat in g["outline"]]})
        return out

    # ------------------------------------------------------------------ duty and figures

    def duty(self) -> dict[str, Any]:
        """Who is on duty now, the rosters' coming shifts, and escalations in progress."""
        svc = self.alerting
        now = self.clock()
        rosters = [{"name": r.name, "role": r.role, "unit": r.unit, "rotation": r.rotation, "handovers": r.handovers,
                    "members": r.members, "upcoming": [as_json(u) for u in svc.upcoming_shifts(r.name, now)]}
                   for r in svc.rosters()]
        escalations = [{"alert": svc.alert_json(e.alert), "policy": e.policy, "steps": [as_json(s) for s in e.steps],
                        "repeats": e.repeats} for e in svc.escalations(now, limit=100)]
        people = [{"id": p.id, "name": p.name, "roles": p.roles, "unit": p.unit} for p in svc.people()]
        overrides = [{"id": o.id, "roster": o.roster, "person": o.person, "starts_at": o.starts_at,
                      "ends_at": o.ends_at, "reason": o.reason, "author": o.author}
                     for o in svc.overrides(active_at=now)]
        return {"now": now, "on_duty": [as_json(d) for d in svc.on_duty(now)], "rosters": rosters, "people": people,
                "overrides": overrides, "escalations": escalations}

    def day_start(self, now: float) -> float:
        """Local midnight (configured zone) of the day containing ``now``."""
        local = datetime.fromtimestamp(now, self.tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def figures(self, days: int) -> dict[str, Any]:
        """Today's and the last ``days`` days' handling figures, per industry and site, and a daily series."""
        now = self.clock()
        today = self.day_start(now)
        since = (datetime.fromtimestamp(today, self.tz) - timedelta(days=days - 1)).timestamp()
        recs = self.alerting.alerts_started(since, None)
        todays = [r for r in recs if r.starts_at >= today]

        def grouped(key: Callable[[AlertRecord], str]) -> dict[str, dict[str, Any]]:
            groups: dict[str, list[AlertRecord]] = {}
            for r in recs:
                groups.setdefault(key(r), []).append(r)
            out = {}
            for k, rs in groups.items():
                f = self.alerting.handling_figures(rs, now)
                f.pop("by", None)
                out[k] = f
            return out

        daily: Counter[str] = Counter()
        for r in recs:
            daily[datetime.fromtimestamp(r.starts_at, self.tz).strftime("%Y-%m-%d")] += 1
        days_list = [(datetime.fromtimestamp(today, self.tz) - timedelta(days=i)).strftime("%Y-%m-%d")
                     for i in range(days - 1, -1, -1)]
        return {"now": now, "since": since, "days": days, "today": self.alerting.handling_figures(todays, now),
                "period": self.alerting.handling_figures(recs, now), "by_industry": grouped(lambda r: r.industry or "-"),
                "by_site": grouped(lambda r: r.site or "-"), "by_unit": grouped(lambda r: r.assigned_unit or r.unit or "-"),
                "daily": [{"date": d, "count": daily.get(d, 0)} for d in days_list]}

    def maintenance(self) -> list[dict[str, Any]]:
        """The recurring maintenance windows: the config file's and those created at run time."""
        return [as_json(w) for w in self.alerting.maintenance_windows()]

    async def close_pages(self) -> None:
        """Tell every connected page the server is going away (they reconnect)."""
        for c in list(self.hub.clients):
            with contextlib.suppress(asyncio.QueueFull):
                c.queue.put_nowait(b"")
