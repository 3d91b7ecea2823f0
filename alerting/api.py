"""The alerting HTTP API (aiohttp) for the console and other systems; OpenAPI at ``/api/openapi.json``.

Authentication: ``Authorization: Bearer <token>``; users, roles (operator, supervisor, admin) and
tokens come from the ``alerting.users`` config (only the tokens' digests are kept). Failed tokens are
limited per client address and over all clients (429 beyond). Times in queries and bodies are
RFC 3339 strings or epoch seconds; times in responses are RFC 3339 (alert fields) or epoch seconds
(log fields). Every query parameter is validated (400 naming it); list sizes are bounded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from alerting.access import GuessLimiter, TokenBook
from alerting.desk import Actor, DeskError, Forbidden, Invalid, NotFound, make_actor
from alerting.engine import AlertingEngine
from alerting.lifecycle import AlertRecord
from alerting.openapi import OPENAPI
from alerting.surface.core import AlertingSurface, as_json, iso
from alerting.surface.params import ID_RE, json_body, parse_time, query_int, query_text
from alerting.surface.views import (
    FILTER_COLUMNS,
    MAX_LIMIT,
    NOTIFICATION_STATUSES,
    STATUSES,
    AlertQuery,
    NotificationQuery,
)
from alerting.templates import mask_url
from alerting.workorders.desk import WorkOrderDesk

_SURFACE = web.AppKey("surface", AlertingSurface)
_TOKENS = web.AppKey("tokens", TokenBook)
_LIMITER = web.AppKey("limiter", GuessLimiter)
_ACTOR = web.RequestKey("actor", Actor)
MAX_TEXT = 4000
__all__ = ["FILTER_COLUMNS", "NOTIFICATION_STATUSES", "STATUSES", "build_app"]
PUBLIC = ("/api/openapi.json", "/api/health")
GRID_STAFF_PATHS = re.compile(r"/api/(me|grids|workorders(/.*)?)")
"""The only routes grid staff may use (the work orders of their grids); everything else is 403."""
WO_STAGES = ("new", "dispatched", "accepted", "en_route", "on_site", "handled", "verified", "closed", "returned")
log = logging.getLogger(__name__)


def _filters(q: Mapping[str, str]) -> dict[str, str]:
    out = {c: v for c in FILTER_COLUMNS if (v := query_text(q, c)) is not None}
    if "severity" in out and out["severity"] not in ("info", "warning", "major", "critical"):
        raise Invalid("severity must be info, warning, major or critical")
    return out


def _id(request: web.Request, name: str = "id") -> str:
    value = request.match_info[name]
    if not ID_RE.fullmatch(value):
        raise NotFound(f"no such {name} (ids are letters, digits and _.:-)")
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, default=str),
                        content_type="application/json")


def _actor(request: web.Request) -> Actor:
    actor = request.get(_ACTOR)
    assert isinstance(actor, Actor)
    return actor


def _str(body: dict[str, Any], key: str, default: str = "", limit: int = MAX_TEXT) -> str:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise Invalid(f"{key} must be a string")
    if len(v) > limit:
        raise Invalid(f"{key}: at most {limit} characters")
    return v


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authenticate(request: web.Request) -> Actor:
    limiter, client = request.app[_LIMITER], request.remote or "-"
    surface = request.app[_SURFACE]
    now = surface.clock()
    # Checked before the token: once an address (or everyone) guessed too often, even a right guess is refused.
    if limiter.blocked("*bearer*", client, now) is not None:
        raise DeskError(429, "too_many_failures", "too many failed tokens; wait a few minutes")
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    owner = request.app[_TOKENS].owner(token) if token else None
    if owner is None:
        if header:
            limiter.failed("*bearer*", client, now)
            surface.count("api_auth_failures")
        raise DeskError(401, "unauthorized", "missing or unknown bearer token")
    return make_actor(owner.name, owner.role, owner.unit)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path not in PUBLIC:
            request[_ACTOR] = actor = _authenticate(request)
            if actor.role == "grid_staff" and not GRID_STAFF_PATHS.fullmatch(request.path):
                raise Forbidden("grid staff only use the work orders of their grids")
        # A body, when sent, must be a JSON object, whether the route reads it or not; DELETE takes none.
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.body_exists \
                and await json_body(request) and request.method == "DELETE":
            raise Invalid("DELETE takes no body")
        return await handler(request)
    except DeskError as exc:
        return _json({"error": exc.code, "message": str(exc)}, exc.status)
    except web.HTTPException:
        raise
    except Exception:
        # A bug must not leak a traceback to the client; the log keeps it (and tests fail on it).
        log.exception("alerting API: %s %s failed", request.method, request.path)
        return _json({"error": "internal", "message": "internal error"}, 500)


# ---------------------------------------------------------------------- handlers

async def health(request: web.Request) -> web.Response:
    """Liveness."""
    return _json({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document."""
    return _json(OPENAPI)


async def me(request: web.Request) -> web.Response:
    """The authenticated user."""
    a = _actor(request)
    return _json({"name": a.name, "role": a.role, "unit": a.unit})


async def list_alerts(request: web.Request) -> web.Response:
    """List and filter alerts."""
    q = request.query
    status = [s for s in (query_text(q, "status") or "").split(",") if s] or None
    if status is not None and not set(status) <= set(STATUSES):
        raise Invalid(f"status is a comma-separated list of {', '.join(STATUSES)}")
    limit = query_int(q, "limit", 200, 1, MAX_LIMIT)
    offset = query_int(q, "offset", 0, 0, 1_000_000)
    filters = _filters(q)
    surface = request.app[_SURFACE]
    recs = surface.alerts(AlertQuery(status=tuple(status or ()), since=parse_time(q.get("since"), "since"),
                                     until=parse_time(q.get("until"), "until"), filters=tuple(filters.items()),
                                     limit=limit, offset=offset))
    return _json({"alerts": [surface.alert_json(r) for r in recs], "count": len(recs)})


async def get_alert(request: web.Request) -> web.Response:
    """One alert with its timeline and notifications."""
    surface = request.app[_SURFACE]
    aid = _id(request)
    rec = surface.alert(aid)
    timeline = [{"ts": iso(e.ts), "actor": e.actor, "action": e.action, "detail": e.detail}
                for e in surface.timeline(aid)]
    notes = [n.public() for n in surface.notifications(NotificationQuery(alert_id=aid, limit=100))]
    return _json({"alert": surface.alert_json(rec), "timeline": timeline, "notifications": notes})


def _action(fn: Callable[[AlertingSurface, str, Actor, dict[str, Any]], AlertRecord]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        aid = _id(request)
        body = await json_body(request)
        surface = request.app[_SURFACE]
        rec = fn(surface, aid, _actor(request), body)
        return _json({"alert": surface.alert_json(rec)})

    handler.__doc__ = fn.__doc__
    return handler


async def driver_text_action(request: web.Request) -> web.Response:
    """Send a text to the driver of the alert's vehicle (JT/T 808 0x8300); recorded in the timeline."""
    aid = _id(request)
    body = await json_body(request)
    surface = request.app[_SURFACE]
    rec, cid = surface.text_driver(aid, _actor(request), _str(body, "text"), emergency=body.get("emergency") is True)
    return _json({"alert": surface.alert_json(rec), "command_id": cid})


def _ack(d: AlertingSurface, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Acknowledge."""
    return d.acknowledge(aid, a, _str(b, "note"))


def _assign(d: AlertingSurface, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Assign."""
    return d.assign(aid, a, _str(b, "assignee") or None, _str(b, "unit") or None, _str(b, "note"))


def _comment(d: AlertingSurface, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Comment."""
    text = _str(b, "text")
    if not text.strip():
        raise Invalid("text is required")
    return d.comment(aid, a, text)


def _resolve(d: AlertingSurface, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Close with a reason."""
    return d.close(aid, a, _str(b, "reason"))


def _severity(d: AlertingSurface, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Change severity."""
    return d.set_severity(aid, a, _str(b, "severity"), _str(b, "reason"))


def _silence_json(s: Any) -> dict[str, Any]:
    return {"id": s.id, "matchers": s.matchers, "starts_at": iso(s.starts_at), "ends_at": iso(s.ends_at),
            "author": s.author, "comment": s.comment, "created_at": iso(s.created_at)}


async def list_silences(request: web.Request) -> web.Response:
    """Every silence in force or scheduled."""
    return _json({"silences": [_silence_json(s) for s in request.app[_SURFACE].silences()]})


async def put_silence(request: web.Request) -> web.Response:
    """Create (POST) or replace (PUT /{id}) a silence."""
    sid = _id(request) if "id" in request.match_info else None
    b = await json_body(request)
    matchers = b.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) and len(m) <= 500 for m in matchers) \
            or len(matchers) > 50:
        raise Invalid("matchers must be a list (at most 50) of strings like 'site=tower-a'")
    ends = parse_time(b.get("ends_at"), "ends_at")
    if ends is None:
        raise Invalid("ends_at is required")
    s = request.app[_SURFACE].create_silence(_actor(request), matchers, ends, parse_time(b.get("starts_at"), "starts_at"),
                                          _str(b, "comment"), sid)
    return _json({"silence": _silence_json(s)}, 200 if request.method == "PUT" else 201)


async def delete_silence(request: web.Request) -> web.Response:
    """Expire a silence."""
    sid = _id(request)
    request.app[_SURFACE].delete_silence(_actor(request), sid)
    return _json({"deleted": sid})


async def oncall(request: web.Request) -> web.Response:
    """Who is on duty (now, or ``at``) for a unit and role."""
    q = request.query
    shifts = request.app[_SURFACE].on_duty(parse_time(q.get("at"), "at"), query_text(q, "unit"), query_text(q, "role"))
    return _json({"on_duty": [as_json(s) for s in shifts]})


async def rosters(request: web.Request) -> web.Response:
    """Rosters, people (channels masked) and overrides."""
    surface = request.app[_SURFACE]
    return _json({
        "people": [{"id": p.id, "name": p.name, "roles": p.roles, "unit": p.unit,
                    "channels": [mask_url(u) for u in p.channels]} for p in surface.people()],
        "rosters": [msgspec.to_builtins(r) for r in surface.rosters()],
        "overrides": [msgspec.to_builtins(o) for o in surface.overrides()],
    })


async def add_override(request: web.Request) -> web.Response:
    """Add a roster override (supervisor or admin)."""
    if not _actor(request).at_least("supervisor"):
        raise Forbidden("operators cannot change rosters")
    b = await json_body(request)
    start, end = parse_time(b.get("starts_at"), "starts_at"), parse_time(b.get("ends_at"), "ends_at")
    if start is None or end is None:
        raise Invalid("starts_at and ends_at are required")
    o = request.app[_SURFACE].add_override(_actor(request), _str(b, "roster"), _str(b, "person"), start, end,
                                        _str(b, "reason"))
    return _json({"override": msgspec.to_builtins(o)}, 201)


async def delete_override(request: web.Request) -> web.Response:
    """Remove a roster override (supervisor or admin)."""
    oid = _id(request)
    request.app[_SURFACE].delete_override(_actor(request), oid)
    return _json({"deleted": oid})


async def figures(request: web.Request) -> web.Response:
    """Handling figures for a period: counts by industry/site/unit, MTTA, MTTR, closure and on-time rates."""
    q = request.query
    filters = _filters(q)
    return _json(request.app[_SURFACE].figures(parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until"),
                                            filters))


async def notifications(request: web.Request) -> web.Response:
    """The notification log (``status=dead`` for the dead-letter list)."""
    q = request.query
    rows = request.app[_SURFACE].notifications(NotificationQuery(
        status=query_text(q, "status"), alert_id=query_text(q, "alert_id", 128),
        limit=query_int(q, "limit", 200, 1, MAX_LIMIT)))
    return _json({"notifications": [r.public() for r in rows]})


async def notification(request: web.Request) -> web.Response:
    """One notification with every delivery attempt."""
    surface = request.app[_SURFACE]
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise NotFound("notification ids are positive integers")
    nid = int(raw)
    row = surface.notification(nid)
    return _json({"notification": row.public(), "attempts": [as_json(a) for a in surface.attempts(nid)]})


def _orders(request: web.Request) -> WorkOrderDesk:
    wo = request.app[_SURFACE].workorders
    if wo is None:
        raise NotFound("work orders are not enabled (alerting.workorders.enabled)")
    return wo


async def list_grids(request: web.Request) -> web.Response:
    """Grids with outline, staff and open cases (grid staff: their own)."""
    wo = _orders(request)
    mine = wo.grids_of(_actor(request))
    return _json({"grids": [g for g in wo.grid_rows() if mine is None or g["id"] in mine]})


async def list_workorders(request: web.Request) -> web.Response:
    """Work orders by stage and grid, newest first (grid staff: their grids; ``mine=1``: accepted by me)."""
    q = request.query
    stages = [s for s in (query_text(q, "stage") or "").split(",") if s] or None
    if stages is not None and not set(stages) <= set(WO_STAGES):
        raise Invalid(f"stage is a comma-separated list of {', '.join(WO_STAGES)}")
    mine = query_text(q, "mine")
    if mine not in (None, "0", "1"):
        raise Invalid("mine is 0 or 1")
    wo = _orders(request)
    rows = wo.orders(_actor(request), stages=stages, grid=query_text(q, "grid", 64), mine=mine == "1",
                     since=parse_time(q.get("since"), "since"), until=parse_time(q.get("until"), "until"),
                     limit=query_int(q, "limit", 200, 1, MAX_LIMIT), offset=query_int(q, "offset", 0, 0, 1_000_000))
    return _json({"workorders": [wo.view(o) for o in rows], "count": len(rows)})


async def get_workorder(request: web.Request) -> web.Response:
    """One work order with the case's timeline."""
    wo = _orders(request)
    oid = _id(request)
    o = wo.get(_actor(request), oid)
    timeline = [{"ts": e.ts, "actor": e.actor, "action": e.action, "detail": e.detail} for e in wo.timeline(oid)]
    return _json({"workorder": wo.view(o), "timeline": timeline})


async def workorder_action(request: web.Request) -> web.Response:
    """A milestone or centre action on a work order (``{action}``: accept, depart, arrive, handle, return,
    dispatch, reassign, verify, close, satisfaction, comment)."""
    oid = _id(request)
    body = await json_body(request)
    wo = _orders(request)
    o = wo.act(_actor(request), oid, request.match_info["action"], body)
    return _json({"workorder": wo.view(o)})


async def report_incident(request: web.Request) -> web.Response:
    """Grid staff report an incident: ``{category, summary, lat, lon, place, severity}`` opens a case."""
    body = await json_body(request)
    wo = _orders(request)
    o = wo.report(_actor(request), body)
    return _json({"workorder": wo.view(o)}, 201)


async def workorder_figures(request: web.Request) -> web.Response:
    """Work-order figures: response, arrival, closure, on-time per milestone, closure and satisfaction rates,
    by grid, unit, category and person."""
    q = request.query
    filters = {c: v for c in ("grid", "unit", "category") if (v := query_text(q, c, 64)) is not None}
    return _json(_orders(request).figures(_actor(request), parse_time(q.get("since"), "since"),
                                          parse_time(q.get("until"), "until"), filters))


async def stats(request: web.Request) -> web.Response:
    """The service's counters."""
    return _json(request.app[_SURFACE].stats())


def build_app(svc: AlertingEngine) -> web.Application:
    """The aiohttp application serving the API for one service."""
    api = svc.config.api
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=api.max_body_bytes)
    app[_SURFACE] = AlertingSurface(svc)
    app[_TOKENS] = TokenBook.from_users(svc.config.users, strict=False)
    app[_LIMITER] = GuessLimiter(api.auth_failures, api.auth_window_s, api.auth_failures_global)
    r = app.router
    r.add_get("/api/health", health)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/api/me", me)
    r.add_get("/api/alerts", list_alerts)
    r.add_get("/api/alerts/{id}", get_alert)
    r.add_post("/api/alerts/{id}/ack", _action(_ack))
    r.add_post("/api/alerts/{id}/assign", _action(_assign))
    r.add_post("/api/alerts/{id}/comment", _action(_comment))
    r.add_post("/api/alerts/{id}/resolve", _action(_resolve))
    r.add_post("/api/alerts/{id}/driver-text", driver_text_action)
    r.add_post("/api/alerts/{id}/severity", _action(_severity))
    r.add_get("/api/silences", list_silences)
    r.add_post("/api/silences", put_silence)
    r.add_put("/api/silences/{id}", put_silence)
    r.add_delete("/api/silences/{id}", delete_silence)
    r.add_get("/api/oncall", oncall)
    r.add_get("/api/rosters", rosters)
    r.add_post("/api/rosters/overrides", add_override)
    r.add_delete("/api/rosters/overrides/{id}", delete_override)
    r.add_get("/api/figures", figures)
    r.add_get("/api/notifications", notifications)
    r.add_get("/api/notifications/{id}", notification)
    r.add_get("/api/stats", stats)
    r.add_get("/api/grids", list_grids)
    r.add_get("/api/workorders", list_workorders)
    r.add_post("/api/workorders", report_incident)
    r.add_get("/api/workorders/figures", workorder_figures)
    r.add_get("/api/workorders/{id}", get_workorder)
    r.add_post("/api/workorders/{id}/{action}", workorder_action)
    return app

