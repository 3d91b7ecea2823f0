"""The console's HTTP adapter (aiohttp): pages, JSON API, Server-Sent Events, login, CSRF and audit.

Every ``/api`` request needs a session cookie (browsers) or ``Authorization: Bearer <token>``
(scripts, with an alerting user's token). State-changing requests from a session must carry the
session's CSRF token in ``X-CSRF-Token`` and, when the browser sends one, a same-host ``Origin``.
Every state-changing request is written to the console's audit log with its outcome. Failed
logins and bearer tokens are limited per (user, address) and globally; every query parameter and
path id is validated (400/404 naming it). Evidence images are served only through the console's own
routes after the evidence policy checked them (``alerting.evidence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from alerting.surface import Actor, DeskError, EvidenceRefused, make_actor, query_int, query_text
from console import board
from console.auth import Session, allowed, bearer_account, check_login, csrf_ok
from console.errors import ConsoleError
from console.fieldwork import GRID_STAFF_PATHS, raw_upload
from console.fieldwork import add_routes as add_fieldwork_routes
from console.maintenance import maintenance_json, window_request
from console.params import (
    ApiError,
    body_of,
    device_id_param,
    parse_time,
    path_id,
    seconds_param,
    text_field,
)
from console.push import HEARTBEAT, sse_frame
from console.views import ConsoleViews

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "vigil_session"
_SVC = web.AppKey("console", ConsoleViews)
_CALLER = web.RequestKey("caller", object)
_AUDIT = web.RequestKey("audit", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/", "/index.html", "/api/login", "/api/health", "/favicon.ico", "/h5/")
_STATIC_PATH = re.compile(r"/static/[A-Za-z0-9_\-][A-Za-z0-9_.\-/]{0,119}")
ACTIONS = ("ack", "assign", "comment", "resolve", "silence", "driver_text")
MAX_SERIES_S = 31 * 86400
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the user, and the session when it came from a browser."""

    user: str
    role: str
    unit: str
    session: Session | None

    @property
    def actor(self) -> Actor:
        """The alerting desk's view of the caller."""
        return make_actor(self.user, self.role, self.unit)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, default=str),
                        content_type="application/json")


def _svc(request: web.Request) -> ConsoleViews:
    return request.app[_SVC]


def _caller(request: web.Request) -> Caller:
    c = request.get(_CALLER)
    if not isinstance(c, Caller):
        raise ApiError(401, "unauthorized", "log in first")
    return c


def _client(request: web.Request) -> str:
    return request.remote or "-"


def _need(caller: Caller, permission: str) -> None:
    if not allowed(caller.role, permission):
        raise ApiError(403, "forbidden", f"role {caller.role} may not {permission}")


# ---------------------------------------------------------------------- middleware

def _authenticate(request: web.Request, svc: ConsoleViews) -> Caller | None:
    header = request.headers.get("Authorization", "")
    if header:
        # Scripts' bearer tokens count against the same limiter as logins (user unknown: one key per address).
        now, client = svc.clock(), _client(request)
        if svc.throttle.blocked("*bearer*", client, now) is not None:
            raise ApiError(429, "locked", "too many failed tokens; wait a few minutes")
        acct = bearer_account(svc.accounts, header[7:].strip()) if header[:7].lower() == "bearer " else None
        if acct is None:
            svc.throttle.failed("*bearer*", client, now)
            svc.counters["bearer_failed"] += 1
            return None
        return Caller(acct.name, acct.role, acct.unit, None)
    s = svc.sessions.get(request.cookies.get(COOKIE), svc.clock())
    return Caller(s.user, s.role, s.unit, s) if s is not None else None


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, CSRF, security headers, JSON errors and the audit of every change."""
    svc = _svc(request)
    path = request.path
    unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
    caller: Caller | None = None
    try:
        if path.startswith("/static/") and (not _STATIC_PATH.fullmatch(path) or ".." in path):
            # aiohttp's static handler answers 500 for over-long names (ENAMETOOLONG); refuse odd names first.
            raise ApiError(404, "not_found", "no such file")
        if not (path in PUBLIC or path.startswith("/static/")):
            caller = _authenticate(request, svc)
            if caller is None:
                raise ApiError(401, "unauthorized", "log in first")
            request[_CALLER] = caller
            if caller.role == "grid_staff" and not GRID_STAFF_PATHS.fullmatch(path):
                raise ApiError(403, "forbidden", "grid staff use the phone page (/h5/) for their grids' cases")
            if unsafe and caller.session is not None:
                if not _same_origin(request):
                    raise ApiError(403, "bad_origin", "cross-site request refused")
                if not csrf_ok(caller.session, request.headers.get("X-CSRF-Token")):
                    raise ApiError(403, "csrf", "missing or wrong CSRF token")
        # A body, when sent, must be a JSON object, whether the route reads it or not; DELETE takes none
        # (the page sends ``{}``).
        if unsafe and request.body_exists and not raw_upload(request) and await body_of(request) \
                and request.method == "DELETE":
            raise ApiError(400, "invalid", "DELETE takes no body")
        resp = await handler(request)
    except (ApiError, DeskError) as exc:
        resp = _json({"error": exc.code, "message": str(exc)}, exc.status)
    except web.HTTPException:
        raise
    except Exception:
        # A bug must not leak a traceback to the browser; the log keeps it (and tests fail on it).
        log.exception("console: %s %s failed", request.method, path)
        resp = _json({"error": "internal", "message": "internal error"}, 500)
    if unsafe and path.startswith("/api/") and path not in ("/api/login", "/api/logout") and caller is not None:
        resource = request.match_info.route.resource
        action = f"{request.method} {resource.canonical if resource is not None else path}"
        svc.journal.audit(svc.clock(), caller.user, caller.role, action, path, resp.status, request.get(_AUDIT, {}),
                          _client(request))
        svc.counters["actions"] += 1
    if path.startswith("/static/"):
        # Revalidate on every load (cheap: Last-Modified / 304) so an upgrade never runs stale modules.
        resp.headers.setdefault("Cache-Control", "no-cache")
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    return resp


def _audit_fields(request: web.Request, fields: dict[str, Any]) -> None:
    request[_AUDIT] = fields


# ---------------------------------------------------------------------- pages and session

async def index(request: web.Request) -> web.StreamResponse:
    """The single page (its modules load from /static/)."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    """Liveness."""
    return _json({"ok": True})


def _session_json(svc: ConsoleViews, caller: Caller) -> dict[str, Any]:
    if caller.role == "grid_staff":  # field staff see their grids, not the centre's directory
        wo = svc.alerting.workorders
        return {"user": caller.user, "role": caller.role, "unit": caller.unit,
                "csrf": caller.session.csrf if caller.session else None,
                "expires_at": caller.session.expires_at if caller.session else None,
                "config": {"title": svc.config.title, "timezone": svc.config.timezone, "locale": svc.config.locale},
                "grids": sorted(wo.grids_of(caller.actor) or ()) if wo is not None else [],
                "permissions": {}, "workorders": {"field": True, "centre": False}}
    return {"user": caller.user, "role": caller.role, "unit": caller.unit,
            "csrf": caller.session.csrf if caller.session else None,
            "expires_at": caller.session.expires_at if caller.session else None,
            "config": {"title": svc.config.title, "timezone": svc.config.timezone, "locale": svc.config.locale,
                       "gcj02": svc.config.gcj02_basemap},
            "permissions": {p: allowed(caller.role, p) for p in ("alert.handle", "silence.create", "roster.edit",
                                                                  "audit.view", "maintenance.edit")},
            "workorders": {"field": False, "centre": svc.alerting.workorders is not None},
            "people": [{"id": p.id, "name": p.name, "unit": p.unit} for p in svc.alerting.people()],
            "users": sorted(svc.accounts),
            "units": sorted({s.unit for s in svc.registry.sites.values() if s.unit}
                            | {p.unit for p in svc.alerting.people() if p.unit}),
            "sites": [{"id": s.id, "name": s.name, "industry": s.industry, "unit": s.unit}
                      for s in svc.registry.sites.values()],
            "industries": sorted({s.industry for s in svc.registry.sites.values() if s.industry})}


async def login(request: web.Request) -> web.Response:
    """Log in with an alerting user name and token; sets the session cookie."""
    svc = _svc(request)
    now = svc.clock()
    client = _client(request)
    if not _same_origin(request):
        raise ApiError(403, "bad_origin", "cross-site request refused")
    body = await body_of(request)
    name, password = text_field(body, "username", 100), text_field(body, "password", 500)
    if svc.throttle.blocked(name, client, now) is not None:
        svc.journal.audit(now, name or "-", "-", "login", name, 429, {}, client)
        raise ApiError(429, "locked", "too many failed logins; wait a few minutes")
    acct = check_login(svc.accounts, name, password)
    if acct is None:
        svc.throttle.failed(name, client, now)
        svc.counters["logins_failed"] += 1
        svc.journal.audit(now, name or "-", "-", "login", name, 401, {}, client)
        raise ApiError(401, "bad_login", "wrong user name or password")
    svc.throttle.succeeded(name, client)
    s = svc.sessions.open(acct, now)
    svc.counters["logins"] += 1
    svc.journal.audit(now, acct.name, acct.role, "login", acct.name, 200, {}, client)
    resp = _json(_session_json(svc, Caller(s.user, s.role, s.unit, s)))
    resp.set_cookie(COOKIE, s.id, max_age=int(svc.config.session_ttl_s), httponly=True, samesite="Strict",
                    secure=svc.config.secure_cookies or request.secure, path="/")
    return resp


async def logout(request: web.Request) -> web.Response:
    """End the session."""
    svc = _svc(request)
    c = _caller(request)
    if c.session is not None:
        svc.sessions.close(c.session.id)
    svc.journal.audit(svc.clock(), c.user, c.role, "logout", c.user, 200, {}, _client(request))
    resp = _json({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def session(request: web.Request) -> web.Response:
    """The current user, CSRF token and the page's configuration."""
    return _json(_session_json(_svc(request), _caller(request)))


# ---------------------------------------------------------------------- alerts

async def get_board(request: web.Request) -> web.Response:
    """A page of the alert board (server-side filter, sort and paging)."""
    svc = _svc(request)
    try:
        q = board.BoardQuery.parse(request.query, svc.config.max_page_size)
    except board.BoardQueryError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return web.Response(body=svc.board_body(q, request.query.get("facets") == "1"), content_type="application/json")


async def get_alert(request: web.Request) -> web.Response:
    """One alert with timeline, notifications, evidence, rule and place."""
    return _json(_svc(request).alert_detail(path_id(request)))


async def alert_snapshot(request: web.Request) -> web.Response:
    """The alert's evidence image, read through the evidence policy (never a redirect to the device's URL)."""
    svc = _svc(request)
    rec = svc.alerting.alert(path_id(request))
    if not rec.snapshot_url:
        raise ApiError(404, "not_found", "this alert has no snapshot")
    try:
        snap = await asyncio.to_thread(svc.evidence.read, rec.snapshot_url)
    except EvidenceRefused as exc:
        svc.counters[f"evidence_refused_{exc.reason}"] += 1
        raise ApiError(404, "not_found", f"snapshot not available ({exc.reason})") from None
    return web.Response(body=snap.data, content_type=snap.content_type,
                        headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"})


async def alert_series(request: web.Request) -> web.Response:
    """The alerting device's telemetry around the alert (``before``/``after`` seconds, default 10/5 min)."""
    svc = _svc(request)
    rec = svc.alerting.alert(path_id(request))
    before = seconds_param(request, "before", 600.0, 7 * 86400.0)
    after = seconds_param(request, "after", 300.0, 7 * 86400.0)
    end = min(rec.ends_at or svc.clock(), rec.starts_at + after) if rec.ends_at else svc.clock()
    data = await svc.series(rec.device_id, rec.starts_at - before, max(end, rec.starts_at + 1.0))
    data.update(starts_at=rec.starts_at, ends_at=rec.ends_at, values=rec.values)
    return _json(data)


async def alert_action(request: web.Request) -> web.Response:
    """Acknowledge, assign, comment, resolve or silence one alert."""
    svc = _svc(request)
    c = _caller(request)
    aid, action = path_id(request), request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, "not_found", f"no action {action[:40]!r}")
    body = await body_of(request)
    request[_AUDIT] = {k: v for k, v in body.items() if isinstance(v, str | int | float)}
    alerting, actor = svc.alerting, c.actor
    if action == "silence":
        _need(c, "silence.create")
        alerting.alert(aid)  # 404 before the body is judged
        try:
            minutes = float(body.get("duration_min", 60))
        except (TypeError, ValueError):
            raise ApiError(400, "invalid", "duration_min must be a number") from None
        if not math.isfinite(minutes) or not 1 <= minutes <= 7 * 24 * 60:
            raise ApiError(400, "invalid", "duration_min must be 1 .. 10080")
        s = alerting.silence_alert(aid, actor, str(body.get("scope", "rule_device")), minutes,
                               text_field(body, "comment", 1000))
        return _json({"silence": _silence_json(s)}, 201)
    _need(c, "alert.handle")
    if action == "ack":
        rec = alerting.acknowledge(aid, actor, text_field(body, "note"))
    elif action == "assign":
        rec = alerting.assign(aid, actor, text_field(body, "assignee", 100) or None, text_field(body, "unit", 100) or None,
                          text_field(body, "note"))
    elif action == "comment":
        rec = alerting.comment(aid, actor, text_field(body, "text"))
    elif action == "resolve":
        rec = alerting.close(aid, actor, text_field(body, "reason", 1000))
    elif action == "driver_text":  # vehicle alerts: JT/T 808 0x8300 to the driver (docs/vehicles.md)
        rec, _cid = alerting.text_driver(aid, actor, text_field(body, "text", 1000))
    else:
        raise ApiError(404, "not_found", f"no action {action!r}")
    return _json({"alert": alerting.alert_json(rec)})


# ---------------------------------------------------------------------- silences

def _silence_json(s: Any) -> dict[str, Any]:
    return {"id": s.id, "matchers": s.matchers, "starts_at": s.starts_at, "ends_at": s.ends_at, "author": s.author,
            "comment": s.comment, "created_at": s.created_at}


async def list_silences(request: web.Request) -> web.Response:
    """Silences in force or scheduled, and the recurring maintenance windows."""
    svc = _svc(request)
    now = svc.clock()
    return _json({"now": now, "silences": [_silence_json(s) | {"active": s.active(now)} for s in svc.alerting.silences()],
                  "maintenance": svc.maintenance()})


async def create_silence(request: web.Request) -> web.Response:
    """Create a silence: matchers, and ``ends_at`` or ``duration_min``."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "silence.create")
    body = await body_of(request)
    request[_AUDIT] = {"matchers": body.get("matchers"), "comment": body.get("comment")}
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) and len(m) <= 500 for m in matchers) \
            or len(matchers) > 50:
        raise ApiError(400, "invalid", "matchers must be a list (at most 50) of strings like 'site=tower-a'")
    now = svc.clock()
    start = parse_time(body.get("starts_at"), "starts_at")
    start = now if start is None else start
    end = parse_time(body.get("ends_at"), "ends_at")
    if end is None:
        try:
            minutes = float(body.get("duration_min", 60))
        except (TypeError, ValueError):
            raise ApiError(400, "invalid", "duration_min must be a number") from None
        if not math.isfinite(minutes) or not 1 <= minutes <= 366 * 24 * 60:
            raise ApiError(400, "invalid", "duration_min must be 1 .. 527040")
        end = start + minutes * 60
    s = svc.alerting.create_silence(c.actor, [m.strip() for m in matchers if m.strip()], end, start,
                                text_field(body, "comment", 1000))
    return _json({"silence": _silence_json(s)}, 201)


async def expire_silence(request: web.Request) -> web.Response:
    """Expire a silence now."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "silence.expire")
    sid = path_id(request)
    request[_AUDIT] = {"silence": sid}
    svc.alerting.delete_silence(c.actor, sid)
    return _json({"expired": sid})


async def create_maintenance(request: web.Request) -> web.Response:
    """Create a recurring maintenance window (supervisors): ``name, matchers, weekdays, start, end`` (local
    ``HH:MM``; an end before the start spans midnight) or ``duration_min``, ``timezone``, ``until`` date."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "maintenance.edit")
    body = await body_of(request)
    request[_AUDIT] = {k: body.get(k) for k in ("name", "matchers", "weekdays", "start", "end", "duration_min",
                                                 "timezone", "until")}
    w = window_request(body, svc.config.timezone)
    m = svc.alerting.create_maintenance(c.actor, w.name, w.matchers, w.weekdays, w.start, w.duration_min,
                                        w.timezone, w.until, w.comment)
    return _json({"maintenance": maintenance_json(m)}, 201)


async def delete_maintenance(request: web.Request) -> web.Response:
    """Delete a run-time maintenance window (supervisors)."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "maintenance.edit")
    wid = path_id(request)
    request[_AUDIT] = {"maintenance": wid}
    old = svc.alerting.delete_maintenance(c.actor, wid)
    return _json({"deleted": wid, "name": old.name})


# ---------------------------------------------------------------------- devices, map, duty, figures

async def list_devices(request: web.Request) -> web.Response:
    """Devices with online state, last seen, current values and open alerts."""
    q = request.query
    params = {k: v for k in ("kind", "site", "q") if (v := query_text(q, k, 100)) is not None}
    online = query_text(q, "online")
    if online is not None and online not in ("true", "false"):
        raise ApiError(400, "invalid", "online must be true or false")
    if online is not None:
        params["online"] = online
    return _json(_svc(request).devices(params))


async def get_device(request: web.Request) -> web.Response:
    """One device."""
    data = _svc(request).device_detail(device_id_param(request))
    if data is None:
        raise ApiError(404, "not_found", "no such device")
    return _json(data)


async def device_series(request: web.Request) -> web.Response:
    """A device's numeric telemetry for ``since``..``until`` (default the last hour)."""
    svc = _svc(request)
    device_id = device_id_param(request)
    if svc.registry.device(device_id) is None and device_id not in svc.live.devices:
        raise ApiError(404, "not_found", "no such device")
    now = svc.clock()
    until = parse_time(request.query.get("until"), "until")
    until = now if until is None else until
    since = parse_time(request.query.get("since"), "since")
    since = until - 3600 if since is None else since
    if not 0 <= until - since <= MAX_SERIES_S:
        raise ApiError(400, "invalid", "since must be before until, at most 31 days apart")
    return _json(await svc.series(device_id, since, until))


async def map_data(request: web.Request) -> web.Response:
    """Layers, sites, devices, tracks and alert markers."""
    return _json(_svc(request).map_data())


async def duty(request: web.Request) -> web.Response:
    """On duty now, rosters, overrides, escalations in progress."""
    return _json(_svc(request).duty())


async def add_override(request: web.Request) -> web.Response:
    """Someone covers a roster for a period (supervisors and admins)."""
    svc = _svc(request)
    c = _caller(request)
    body = await body_of(request)
    request[_AUDIT] = {k: v for k, v in body.items() if isinstance(v, str | int | float)}
    _need(c, "roster.edit")
    start, end = parse_time(body.get("starts_at"), "starts_at"), parse_time(body.get("ends_at"), "ends_at")
    if start is None or end is None:
        raise ApiError(400, "invalid", "starts_at and ends_at are required")
    o = svc.alerting.add_override(c.actor, text_field(body, "roster", 100), text_field(body, "person", 100), start,
                                  end, text_field(body, "reason", 500))
    return _json({"override": {"id": o.id, "roster": o.roster, "person": o.person, "starts_at": o.starts_at,
                               "ends_at": o.ends_at}}, 201)


async def delete_override(request: web.Request) -> web.Response:
    """Remove a roster override (supervisors and admins)."""
    svc = _svc(request)
    c = _caller(request)
    request[_AUDIT] = {"override": request.match_info["id"]}
    _need(c, "roster.edit")
    svc.alerting.delete_override(c.actor, request.match_info["id"])
    return _json({"deleted": request.match_info["id"]})


async def figures(request: web.Request) -> web.Response:
    """Handling figures for today and the last ``days`` days (1..92)."""
    days = query_int(request.query, "days", 7, 1, 92)
    return _json(_svc(request).figures(days))


async def audit_log(request: web.Request) -> web.Response:
    """The console's audit trail (supervisors and admins)."""
    c = _caller(request)
    _need(c, "audit.view")
    limit = query_int(request.query, "limit", 200, 1, 2000)
    return _json({"entries": _svc(request).journal.audit_log(user=query_text(request.query, "user", 100),
                                                             limit=limit)})


async def evidence(request: web.Request) -> web.StreamResponse:
    """An evidence snapshot from the evidence store (logged-in users only; checked by the evidence policy)."""
    svc = _svc(request)
    root = svc.evidence.root
    rel = request.match_info["path"]
    if root is None:
        raise ApiError(404, "not_found", "no evidence folder configured")
    if rel.startswith("/") or "\0" in rel:
        raise ApiError(404, "not_found", "no such snapshot")
    try:
        snap = await asyncio.to_thread(svc.evidence.read, str(root / rel))
    except EvidenceRefused as exc:
        svc.counters[f"evidence_refused_{exc.reason}"] += 1
        raise ApiError(404, "not_found", f"no such snapshot ({exc.reason})") from None
    return web.Response(body=snap.data, content_type=snap.content_type,
                        headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"})


# ---------------------------------------------------------------------- server push

async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``alert`` (one alert changed), ``devices`` (changed devices), ``resync``, ``logout``."""
    svc = _svc(request)
    c = _caller(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    client = svc.hub.connect(c.user)
    svc.counters["pages_connected"] += 1
    try:
        await resp.write(b"retry: 2000\n\n" + sse_frame(0, "hello", {"user": c.user, "now": svc.clock()}))
        while True:
            try:
                frame = await asyncio.wait_for(client.queue.get(), svc.config.heartbeat_s)
            except TimeoutError:
                frame = HEARTBEAT
                if c.session is not None and svc.sessions.get(c.session.id, svc.clock()) is None:
                    await resp.write(sse_frame(0, "logout", {"reason": "session ended"}))
                    break
            if frame == b"":
                break
            chunks = [frame]
            while not client.queue.empty() and len(chunks) < 200:
                more = client.queue.get_nowait()
                if more == b"":
                    break
                chunks.append(more)
            await resp.write(b"".join(chunks))
            client.sent += len(chunks)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        svc.hub.disconnect(client)
    return resp


# ---------------------------------------------------------------------- the application

def build_app(svc: ConsoleViews) -> web.Application:
    """The console's aiohttp application."""
    app = web.Application(middlewares=[guard], client_max_size=256 * 1024)
    app[_SVC] = svc
    r = app.router
    r.add_get("/", index)
    r.add_get("/api/health", health)
    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    r.add_get("/api/session", session)
    r.add_get("/api/board", get_board)
    r.add_get("/api/alerts/{id}", get_alert)
    r.add_get("/api/alerts/{id}/series", alert_series)
    r.add_get("/api/alerts/{id}/snapshot", alert_snapshot)
    r.add_post("/api/alerts/{id}/{action}", alert_action)
    r.add_get("/api/silences", list_silences)
    r.add_post("/api/silences", create_silence)
    r.add_delete("/api/silences/{id}", expire_silence)
    r.add_post("/api/maintenance", create_maintenance)
    r.add_delete("/api/maintenance/{id}", delete_maintenance)
    r.add_get("/api/devices", list_devices)
    r.add_get("/api/devices/{id}", get_device)
    r.add_get("/api/devices/{id}/series", device_series)
    r.add_get("/api/map", map_data)
    r.add_get("/api/duty", duty)
    r.add_post("/api/duty/overrides", add_override)
    r.add_delete("/api/duty/overrides/{id}", delete_override)
    r.add_get("/api/figures", figures)
    r.add_get("/api/audit", audit_log)
    r.add_get("/api/events", events)
    r.add_get("/evidence/{path:.+}", evidence)
    add_fieldwork_routes(r, lambda rq: _svc(rq).alerting.workorders, lambda rq: _caller(rq).actor, _audit_fields,
                         lambda rq: _svc(rq).clock())
    r.add_static("/static/", STATIC, append_version=False)
    return app


async def serve(svc: ConsoleViews) -> None:
    """Run the web server until cancelled."""
    runner = web.AppRunner(build_app(svc), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, svc.config.host, svc.config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConsoleError(f"console: cannot listen on {svc.config.listen}: {exc.strerror or exc} "
                           "(change console.listen)") from None
    addrs = runner.addresses  # the bound sockets' names: the real port when listen asked for :0
    svc.port = int(addrs[0][1]) if addrs else svc.config.port
    svc.started.set()
    log.info("console: serving on %s", svc.url)
    try:
        await asyncio.Event().wait()
    finally:
        await svc.close_pages()
        with contextlib.suppress(Exception):
            await runner.cleanup()
