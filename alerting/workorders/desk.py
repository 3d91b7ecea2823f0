"""Work orders wired into the alerting service: placing cases in grids, dispatch, milestones with
permissions, overdue escalation, field photos, reported incidents and figures.

Every case (a new alert) gets a work order; one placed in a grid is dispatched to it at once and its
staff are told with a link to the phone page. Each milestone is written to the alert's audit trail
(``wo_<action>``) and the alert is republished on ``vigil/v1/alerts/...`` with its ``work_order``
state. Grid staff (role ``grid_staff``) see and act only on their grids' orders: another grid's order
is answered 404, a centre action 403. Runs in the event loop thread, like the alert desk.
"""

from __future__ import annotations

import heapq
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from alerting import lifecycle
from alerting.config import WorkOrdersConfig, check_workorders
from alerting.desk import Actor, DeskError
from alerting.grids import Grid, GridBook
from alerting.lifecycle import AlertRecord, AuditEvent, LifecycleError
from alerting.ports import WorkOrderHost
from alerting.workorders import model
from alerting.workorders.figures import order_figures
from alerting.workorders.model import OrderError, WorkOrder
from alerting.workorders.store import OrderStore
from broker.calendar import HolidayCalendar, current_calendar
from broker.contracts import Alert, AlertStatus, Kind, Severity, Transition, WorkOrderState, encode
from broker.registry import Site

log = logging.getLogger(__name__)

FIELD_ACTIONS = ("accept", "depart", "arrive", "handle", "return")
CENTRE_ACTIONS = ("dispatch", "reassign", "verify", "close", "satisfaction")
ACTIONS = (*FIELD_ACTIONS, *CENTRE_ACTIONS, "comment")
CENTRE_MILESTONES = ("verified", "closed")
MAX_PHOTOS = 20
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
STAGE_ZH = {"new": "待派单", "dispatched": "已派单", "accepted": "已接单", "en_route": "已出发", "on_site": "已到场",
            "handled": "已处置", "verified": "已核查", "closed": "已办结", "returned": "已退单"}


def photo_type(data: bytes) -> str | None:
    """``jpg`` or ``png`` by the file's first bytes, else None."""
    if data.startswith(_JPEG):
        return "jpg"
    if data.startswith(_PNG):
        return "png"
    return None


def _text(body: dict[str, Any], key: str, limit: int = 4000, required: bool = False) -> str:
    v = body.get(key)
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise DeskError(400, "invalid", f"{key} must be a string")
    if len(v) > limit or any(ord(c) < 32 and c not in "\n\t" for c in v):
        raise DeskError(400, "invalid", f"{key}: at most {limit} printable characters")
    if required and not v.strip():
        raise DeskError(400, "invalid", f"{key} is required")
    return v


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= float(v) <= hi:
        raise DeskError(400, "invalid", f"{key} must be a number {lo} .. {hi}")
    return float(v)


class WorkOrderDesk:
    """The work orders of one alerting service."""

    def __init__(self, svc: WorkOrderHost, cfg: WorkOrdersConfig, state_dir: Path) -> None:
        check_workorders(svc.config, files=False)  # ``vigil run`` builds services without alerting's cross-checks
        self.svc = svc
        self.cfg = cfg
        self.grids = GridBook.load(cfg.grids_file, cfg.grids_check_s)
        self.calendar: HolidayCalendar = (HolidayCalendar.load(cfg.calendar_file) if cfg.calendar_file
                                          else current_calendar())
        self.tz = ZoneInfo(svc.config.timezone)
        self.store = OrderStore(svc.store.db)
        self.open: dict[str, WorkOrder] = {o.id: o for o in self.store.open_orders()}
        self._timers: list[tuple[float, str]] = []
        self._timer_at: dict[str, float] = {}
        for o in self.open.values():
            self._schedule(o)
        evidence = svc.config.evidence.dir
        self.photos_dir = Path(cfg.photos_dir) if cfg.photos_dir else (
            Path(evidence) / "workorders" if evidence else state_dir / "photos")
        self.user_grids = {u.name: frozenset(u.grids) for u in svc.config.users}
        self.page_url = cfg.page_url or svc.config.console_url.rstrip("/") + "/h5/"

    # ------------------------------------------------------------------ placing and creating

    def position(self, site: Site | None, values: dict[str, Any]) -> tuple[float | None, float | None]:
        """A case's location: its site's, else the alert's ``lat``/``lon`` values (moving vehicles)."""
        if site is not None and site.lat is not None and site.lon is not None:
            return site.lat, site.lon
        lat, lon = values.get("lat"), values.get("lon")
        if isinstance(lat, int | float) and isinstance(lon, int | float) and not isinstance(lat, bool) \
                and not isinstance(lon, bool):
            return float(lat), float(lon)
        return None, None

    def place(self, t: Transition, site: Site | None) -> Transition:
        """The transition with a ``grid`` label from its location (a given ``grid`` label is kept)."""
        if "grid" in t.labels or not self.grids.grids:
            return t
        g = self.grids.locate(*self.position(site, dict(t.values)))
        return t if g is None else msgspec.structs.replace(t, labels={**t.labels, "grid": g.id})

    def on_alert(self, rec: AlertRecord, change: str, now: float) -> None:
        """A new (or reopened, never ordered) alert becomes a work order, dispatched when it has a grid."""
        if rec.kind is Kind.VIGIL:
            return  # the platform's own health alerts are for its operators, not a case for a grid
        if change not in ("new", "reopened") or rec.id in self.open:
            return
        earlier = self.store.get(rec.id) if change == "reopened" else None
        if earlier is not None:  # closed, and the rule fired again within the reopen window: the case starts over
            order = model.reopen(earlier, now)
            events = [self._event(rec.id, now, "system", "reopened", {"reopens": str(order.reopens)})]
            grid = self.grids.grids.get(order.grid)
            if grid is not None:
                order = model.dispatch(order, "system", now, grid.id, self._due(order, now), grid.unit)
                events.append(self._event(rec.id, now, "system", "dispatched", {"grid": grid.id}))
                self._notify_staff(order, grid, now, "重新派单")
            self._put(order)
            self.svc.store.add_events(events)
            return
        site = self.svc.registry.site_of(rec.device_id) if self.svc.registry is not None else None
        lat, lon = self.position(site, dict(rec.values))
        labels = rec.labels
        category = labels.get("category") or rec.rule
        grid = self.grids.grids.get(labels.get("grid", ""))
        pol = model.choose_policy(self.cfg.policies, category, rec.severity.value)
        order = WorkOrder(id=rec.id, unit=(grid.unit if grid else "") or rec.assigned_unit or rec.unit,
                          category=category, severity=rec.severity.value, summary=rec.summary,
                          source="grid_staff" if labels.get("source") == "grid_staff" else "device",
                          reporter=labels.get("reporter", ""), lat=lat, lon=lon,
                          place=labels.get("place") or (site.name if site else ""), policy=pol.name if pol else "",
                          created_at=rec.starts_at, updated_at=now)
        events = [self._event(rec.id, now, "system", "created", {"source": order.source})]
        if grid is not None:
            order = model.dispatch(order, "system", now, grid.id, self._due(order, now), grid.unit)
            events.append(self._event(rec.id, now, "system", "dispatched", {"grid": grid.id}))
            self._notify_staff(order, grid, now, "派单")
        self.svc.counters["workorders_created"] += 1
        self._put(order)
        self.svc.store.add_events(events)

    def _due(self, order: WorkOrder, now: float) -> dict[str, float]:
        pol = next((p for p in self.cfg.policies if p.name == order.policy), None)
        return model.deadlines(pol, now, self.calendar.add_working_days, self.tz)

    @staticmethod
    def _event(oid: str, now: float, actor: str, action: str, detail: dict[str, str] | None = None) -> AuditEvent:
        return AuditEvent(alert_id=oid, ts=now, actor=actor, action=f"wo_{action}", detail=detail or {})

    def _put(self, order: WorkOrder) -> None:
        self.store.put(order)
        if order.is_open:
            self.open[order.id] = order
            self._schedule(order)
        else:
            self.open.pop(order.id, None)

    def _schedule(self, order: WorkOrder) -> None:
        at = model.next_due(order)
        cur = self._timer_at.get(order.id)
        if at is None or (cur is not None and cur <= at):
            return  # an earlier entry re-evaluates the order; steps never pile up duplicates
        self._timer_at[order.id] = at
        heapq.heappush(self._timers, (at, order.id))

    # ------------------------------------------------------------------ reading

    def grids_of(self, actor: Actor) -> frozenset[str] | None:
        """The grids an actor is bound to (grid staff), or None for the centre (every grid)."""
        return self.user_grids.get(actor.name, frozenset()) if actor.role == "grid_staff" else None

    def get(self, actor: Actor, order_id: str) -> WorkOrder:
        """One order the actor may see. Raises ``DeskError`` 404 (also for another grid's order)."""
        o = self.open.get(order_id) or self.store.get(order_id)
        mine = self.grids_of(actor)
        if o is None or (mine is not None and o.grid not in mine):
            raise DeskError(404, "not_found", f"no work order {order_id!r}")
        return o

    def orders(self, actor: Actor, *, stages: list[str] | None = None, grid: str | None = None,
               mine: bool = False, since: float | None = None, until: float | None = None,
               limit: int = 200, offset: int = 0) -> list[WorkOrder]:
        """Orders the actor may see, newest first."""
        allowed = self.grids_of(actor)
        grids: set[str] | None = None if allowed is None else set(allowed)
        if grid is not None:
            grids = {grid} if grids is None or grid in grids else set()
        out = self.store.query(stages=stages, grids=grids, since=since, until=until,
                               filters={"assignee": actor.name} if mine else None, limit=limit, offset=offset)
        return out

    def view(self, o: WorkOrder) -> dict[str, Any]:
        """An order for the API (epoch seconds), with its grid, alert status and phone-page link."""
        g = self.grids.grids.get(o.grid)
        rec = self.svc.open.get(o.id) or self.svc.store.get_alert(o.id)
        out: dict[str, Any] = msgspec.to_builtins(o)
        out.update(stage_zh=STAGE_ZH.get(o.stage, o.stage), next_due=model.next_due(o), link=self.link(o.id),
                   grid_name=g.name if g else "", street=g.street if g else "", community=g.community if g else "",
                   alert_status=rec.status.value if rec else None, rule=rec.rule if rec else "",
                   kind=rec.kind.value if rec else "", device_id=rec.device_id if rec else "",
                   photos=[f"{i}" for i in range(len(o.photos))])
        return out

    def timeline(self, order_id: str) -> list[AuditEvent]:
        """The case's audit trail (alert and work-order events)."""
        return self.svc.store.events(order_id)

    def link(self, order_id: str) -> str:
        """The case on the phone page."""
        return f"{self.page_url}#case/{order_id}"

    def figures(self, actor: Actor, since: float | None, until: float | None,
                filters: dict[str, str] | None = None) -> dict[str, Any]:
        """Work-order figures for cases opened in [since, until) that the actor may see."""
        allowed = self.grids_of(actor)
        orders = self.store.query(since=since, until=until, grids=allowed, filters=filters, limit=1_000_000)
        out = order_figures(orders, self.svc.clock())
        out.update(since=since, until=until)
        return out

    def grid_rows(self) -> list[dict[str, Any]]:
        """Every grid with its outline and open cases (for the map and the centre)."""
        counts: dict[str, int] = {}
        overdue: dict[str, int] = {}
        for o in self.open.values():
            counts[o.grid] = counts.get(o.grid, 0) + 1
            overdue[o.grid] = overdue.get(o.grid, 0) + bool(o.overdue)
        return [{"id": g.id, "name": g.name, "street": g.street, "community": g.community, "unit": g.unit,
                 "staff": list(g.staff), "outline": g.outline(), "centre": list(g.centre()),
                 "open_cases": counts.get(g.id, 0), "overdue_cases": overdue.get(g.id, 0)}
                for g in self.grids.grids.values()]

    # ------------------------------------------------------------------ actions

    def act(self, actor: Actor, order_id: str, action: str, body: dict[str, Any]) -> WorkOrder:
        """Apply one action (see ``ACTIONS``) with its body; checks the role and the grid, audits, publishes.

        Raises:
            DeskError: 400 bad input, 403 not allowed, 404 unknown (or another grid's) order, 409 illegal now.
        """
        if action not in ACTIONS:
            raise DeskError(404, "not_found", f"no work-order action {action[:40]!r}")
        now = self.svc.clock()
        args = self._args(action, body)  # input errors first, whoever asks
        o = self.get(actor, order_id)
        self._may(actor, o, action)
        try:
            new = self._apply(o, actor.name, now, action, args)
        except OrderError as exc:
            status = {"conflict": 409, "invalid": 400, "too_far": 400}.get(exc.code, 400)
            raise DeskError(status, exc.code, str(exc)) from None
        detail = {k: str(v) for k, v in args.items() if k not in ("photos",)}
        if action == "arrive" and new.arrive_distance_m is not None:
            detail.update(distance_m=f"{new.arrive_distance_m:.0f}", flagged=str(new.arrive_flagged).lower())
        self._record(o, new, actor, action, detail, now)
        return new

    def _args(self, action: str, b: dict[str, Any]) -> dict[str, Any]:
        if action in ("accept", "depart"):
            return {"note": _text(b, "note", 1000)}
        if action == "arrive":
            return {"lat": _number(b, "lat", -90, 90), "lon": _number(b, "lon", -180, 180),
                    "accuracy_m": _number(b, "accuracy_m", 0, 1e6) if b.get("accuracy_m") is not None else 0.0}
        if action == "handle":
            return {"notes": _text(b, "notes", 4000, required=True)}
        if action in ("return",):
            return {"reason": _text(b, "reason", 1000, required=True)}
        if action in ("dispatch", "reassign"):
            return {"grid": _text(b, "grid", 64, required=True), "reason": _text(b, "reason", 1000,
                                                                                 required=action == "reassign")}
        if action == "verify":
            passed = b.get("passed", True)
            if not isinstance(passed, bool):
                raise DeskError(400, "invalid", "passed must be true or false")
            return {"passed": passed, "note": _text(b, "note", 1000)}
        if action == "close":
            return {"note": _text(b, "note", 1000)}
        if action == "satisfaction":
            return {"result": _text(b, "result", 40, required=True), "note": _text(b, "note", 1000)}
        return {"text": _text(b, "text", 4000, required=True)}  # comment

    def _may(self, actor: Actor, o: WorkOrder, action: str) -> None:
        if actor.role == "grid_staff":
            if action in CENTRE_ACTIONS:
                raise DeskError(403, "forbidden", f"grid staff cannot {action} (the centre does)")
            return  # get() already checked the grid
        if action in FIELD_ACTIONS:
            raise DeskError(403, "forbidden", f"{action} is done by the grid's staff on the phone page")
        if not actor.at_least("supervisor") and actor.unit and o.unit not in ("", actor.unit):
            raise DeskError(403, "forbidden", f"work order {o.id} belongs to unit {o.unit!r}")

    def _apply(self, o: WorkOrder, who: str, now: float, action: str, a: dict[str, Any]) -> WorkOrder:
        if action in ("dispatch", "reassign"):
            grid = self.grids.grids.get(a["grid"])
            if grid is None:
                raise OrderError("invalid", f"unknown grid {a['grid']!r}")
            if action == "reassign" and o.stage in ("new", "returned"):
                raise OrderError("conflict", f"nothing to reassign: work order {o.id} is {o.stage} (dispatch it)")
            new = model.dispatch(o, who, now, grid.id, self._due(o, now), grid.unit, a["reason"])
            self._notify_staff(new, grid, now, "改派" if action == "reassign" else "派单")
            return new
        if action == "accept":
            return model.accept(o, who, now)
        if action == "depart":
            return model.depart(o, who, now)
        if action == "arrive":
            return model.arrive(o, who, now, a["lat"], a["lon"], self.cfg.arrive_max_m, self.cfg.arrive_mode)
        if action == "handle":
            return model.handle(o, who, now, a["notes"], [])
        if action == "return":
            return model.give_back(o, who, now, a["reason"])
        if action == "verify":
            return model.verify(o, who, now, a["passed"], a["note"])
        if action == "close":
            return model.close(o, who, now)
        if action == "satisfaction":
            return model.record_satisfaction(o, who, now, a["result"], a["note"])
        return msgspec.structs.replace(o, updated_at=now)  # comment: the text goes to the audit trail

    def _record(self, old: WorkOrder, new: WorkOrder, actor: Actor, action: str, detail: dict[str, str],
                now: float) -> None:
        """Store the order, audit it on the alert, acknowledge / close the alert with it, publish, commit."""
        svc = self.svc
        self._put(new)
        rec = svc.open.get(new.id) or svc.store.get_alert(new.id)
        events = [self._event(new.id, now, actor.name, action, detail)]
        if rec is None:
            svc.store.add_events(events)
            svc.commit()
            return
        touched = msgspec.structs.replace(rec, updated_at=now, reason=f"{STAGE_ZH.get(new.stage, new.stage)} "
                                          f"({actor.name})")
        try:
            if action == "accept" and rec.status is AlertStatus.FIRING:
                touched, ev = lifecycle.acknowledge(touched, actor.name, now, "接单 / accepted the work order")
                events.append(ev)
            elif action == "close" and rec.is_open:
                touched, ev = lifecycle.close(touched, actor.name, now, "办结 / work order closed"
                                              + (f": {detail['note']}" if detail.get("note") else ""))
                events.append(ev)
            elif action == "comment":
                touched, ev = lifecycle.comment(touched, actor.name, now, detail["text"])
                events.append(ev)
        except LifecycleError:
            pass  # the alert moved on by itself (a rule cleared it); the order's own step stands
        svc.counters[f"workorders_{action}"] += 1
        svc.record_action(rec, touched, events)

    # ------------------------------------------------------------------ reported incidents

    def report(self, actor: Actor, body: dict[str, Any]) -> WorkOrder:
        """Grid staff report an incident (category, text, place): a case in the same flow as a device alert."""
        if actor.role != "grid_staff" and not actor.at_least("supervisor"):
            raise DeskError(403, "forbidden", "incidents are reported by grid staff")
        category = _text(body, "category", 64, required=True)
        summary = _text(body, "summary", 500, required=True)
        place = _text(body, "place", 200)
        lat, lon = _number(body, "lat", -90, 90), _number(body, "lon", -180, 180)
        sev = _text(body, "severity", 10) or "major"
        if sev not in ("info", "warning", "major", "critical"):
            raise DeskError(400, "invalid", "severity must be info, warning, major or critical")
        g = self.grids.locate(lat, lon)
        mine = self.grids_of(actor)
        if g is None and mine:
            g = self.grids.grids.get(sorted(mine)[0])
        now = self.svc.clock()
        ts = datetime.fromtimestamp(now, UTC)
        labels = {"category": category, "source": "grid_staff", "reporter": actor.name, "place": place}
        if g is not None:
            labels["grid"] = g.id
        t = Transition(ts=ts, fingerprint=f"report:{secrets.token_hex(8)}", rule="field_report", status="firing",
                       severity=Severity(sev), kind=Kind.SENSOR, device_id="field-report", labels=labels,
                       summary=summary, summary_en=summary, values={"lat": lat, "lon": lon}, started_at=ts,
                       source_ts=ts, received_at=now)
        self.svc.on_local_transitions([(t, encode(t))])
        aid = self.svc.by_fingerprint.get(t.fingerprint)
        o = self.open.get(aid or "")
        if o is None:
            raise DeskError(409, "conflict", "the report did not open a case")
        self.svc.counters["workorders_reported"] += 1
        return o

    # ------------------------------------------------------------------ photos

    def check_photo(self, actor: Actor, order_id: str, size: int | None) -> WorkOrder:
        """Whether the actor may add a photo of this size now (before the upload is read)."""
        o = self.get(actor, order_id)
        if actor.role != "grid_staff" and not actor.at_least("supervisor"):
            raise DeskError(403, "forbidden", "photos are added by the grid's staff")
        if not o.is_open:
            raise DeskError(409, "conflict", f"work order {o.id} is closed")
        if len(o.photos) >= MAX_PHOTOS:
            raise DeskError(409, "conflict", f"at most {MAX_PHOTOS} photos per case")
        if size is not None and size > self.cfg.photo_max_bytes:
            raise DeskError(413, "too_large", f"a photo is at most {self.cfg.photo_max_bytes} bytes")
        return o

    def write_photo(self, data: bytes) -> str:
        """Check and store an uploaded image under a random name; returns its name (runs in a thread)."""
        if len(data) > self.cfg.photo_max_bytes:
            raise DeskError(413, "too_large", f"a photo is at most {self.cfg.photo_max_bytes} bytes")
        ext = photo_type(data)
        if ext is None:
            raise DeskError(400, "not_image", "a photo must be a JPEG or PNG image")
        name = f"{datetime.now(UTC):%Y%m}/{secrets.token_hex(16)}.{ext}"
        path = self.photos_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return name

    def attach_photo(self, actor: Actor, order_id: str, name: str) -> WorkOrder:
        """Add a stored photo to the order (audited)."""
        o = self.check_photo(actor, order_id, None)
        now = self.svc.clock()
        new = msgspec.structs.replace(o, photos=[*o.photos, name], updated_at=now)
        self._record(o, new, actor, "photo", {"photo": str(len(new.photos) - 1)}, now)
        return new

    def photo_path(self, actor: Actor, order_id: str, index: int) -> Path:
        """The file of an order's n-th photo. Raises ``DeskError`` 404."""
        o = self.get(actor, order_id)
        if not 0 <= index < len(o.photos):
            raise DeskError(404, "not_found", "no such photo")
        path = (self.photos_dir / o.photos[index]).resolve()
        if not path.is_relative_to(self.photos_dir.resolve()):
            raise DeskError(404, "not_found", "no such photo")
        return path

    # ------------------------------------------------------------------ timers, notifications, publishing

    def tick(self, now: float) -> None:
        """Reload changed grids; flag overdue milestones and tell the policy's escalation targets."""
        self.grids.maybe_reload(now)
        seen: set[str] = set()
        while self._timers and self._timers[0][0] <= now:
            popped, oid = heapq.heappop(self._timers)
            if self._timer_at.get(oid) == popped:
                del self._timer_at[oid]
            o = self.open.get(oid)
            if o is None or oid in seen:
                continue
            seen.add(oid)
            new, missed = model.check_overdue(o, now)
            if not missed:
                self._schedule(o)
                continue
            self._put(new)
            rec = self.svc.open.get(oid) or self.svc.store.get_alert(oid)
            events = [self._event(oid, now, "system", "overdue", {"milestone": m}) for m in missed]
            if rec is not None:
                self.svc.save(msgspec.structs.replace(rec, updated_at=now,
                                                      reason=f"超时 overdue: {', '.join(missed)}"), events)
            else:
                self.svc.store.add_events(events)
            self.svc.counters["workorders_overdue"] += len(missed)
            pol = next((p for p in self.cfg.policies if p.name == new.policy), None)
            targets = list(pol.escalate) if pol else ["grid:staff"]
            if all(m in CENTRE_MILESTONES for m in missed):  # the centre is late, not the grid: tell the centre
                targets = [t for t in targets if not t.startswith("grid:")] or ["role:shift_lead"]
            rcpts = self.svc.resolve_targets(targets, new.unit, now, grid=new.grid)
            names = "、".join(_MILESTONE_ZH.get(m, m) for m in missed)
            self._notify(rcpts, f"【超时】{new.summary or new.id} {names}超时",
                         f"网格 {new.grid or '-'}，当前 {STAGE_ZH.get(new.stage, new.stage)}，"
                         f"超时环节：{names}\n{self.link(oid)}", f"wo:{oid}:overdue:{','.join(missed)}:{now:.3f}",
                         oid, now)

    def staff_of(self, grid_id: str) -> list[str]:
        """Person ids of a grid's staff."""
        g = self.grids.grids.get(grid_id)
        return list(g.staff) if g else []

    def on_duty_in(self, grid_id: str, now: float) -> list[str]:
        """Who of a grid's staff is on duty now: members of rosters for role ``grid_staff`` whose ``unit`` is the
        grid's id; without such a roster (or nobody on shift), all the grid's staff."""
        shifts = self.svc.roster.on_duty(now, unit=grid_id, role="grid_staff") if grid_id else []
        on = [s.person for s in shifts if s.unit == grid_id]
        return on or self.staff_of(grid_id)

    def _notify_staff(self, order: WorkOrder, grid: Grid, now: float, what: str) -> None:
        rcpts = [f"person:{p}" for p in self.on_duty_in(grid.id, now)]
        due = order.due.get("accepted")
        limit = f"，请于 {datetime.fromtimestamp(due, self.tz):%H:%M} 前接单" if due else ""
        self._notify(rcpts, f"【{what}】{order.summary or order.category}",
                     f"{grid.name}：{order.place or '-'}{limit}\n{self.link(order.id)}",
                     f"wo:{order.id}:{what}:{order.reassigns}:{order.returns}:{now:.3f}", order.id, now)

    def _notify(self, rcpts: list[str], title: str, body: str, key: str, oid: str, now: float) -> None:
        for rcpt in rcpts:
            nid = self.svc.store.add_notification(
                dedup_key=f"{key}:{rcpt}", kind="workorder", recipient=rcpt, alert_ids=[oid], title=title, body=body,
                attach=None, created_at=now, source_ts=None, received_at=None)
            if nid is not None:
                self.svc.queue_notification(nid)
                self.svc.counters["workorder_notifications"] += 1

    def decorate(self, alert: Alert) -> Alert:
        """The alert message with its work order's state."""
        o = self.open.get(alert.id) or self.store.get(alert.id)
        if o is None:
            return alert
        nd = model.next_due(o)
        return msgspec.structs.replace(alert, work_order=WorkOrderState(
            stage=o.stage, grid=o.grid, assignee=o.assignee, source=o.source, policy=o.policy,
            next_due=datetime.fromtimestamp(nd, UTC) if nd is not None else None, overdue=list(o.overdue)))


_MILESTONE_ZH = {"accepted": "接单", "en_route": "出发", "on_site": "到场", "handled": "处置", "verified": "核查",
                 "closed": "办结"}
