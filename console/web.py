"""The console's HTTP adapter (aiohttp): pages, JSON API, Server-Sent Events, login, CSRF and audit.

Every ``/api`` request needs a session cookie (browsers) or ``Authorization: Bearer <token>``
(scripts, with an alerting user's token). State-changing requests from a session must carry the
session's CSRF token in ``X-CSRF-Token`` and, when the browser sends one, a same-host ``Origin``.
Every state-changing request is written to the console's audit log with its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from alerting.desk import Actor, DeskError
from console import board
from console.auth import Session, allowed, check_login, csrf_ok
from console.push import HEARTBEAT, sse_frame
from console.service import ConsoleError, ConsoleService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "vigil_session"
_SVC = web.AppKey("console", ConsoleService)
_CALLER = web.RequestKey("caller", object)
_AUDIT = web.RequestKey("audit", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/", "/index.html", "/api/login", "/api/health", "/favicon.ico")
CSP = ("default-src 'self'; img-src 'self' data: http: https:; style-src 'self' 'unsafe-inline'; "
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
        return Actor(self.user, self.role, self.unit)  # type: ignore[arg-type]


class ApiError(Exception):
    """An HTTP error with a machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, default=str),
                        content_type="application/json")


def _svc(request: web.Request) -> ConsoleService:
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


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "invalid", "body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid", "body must be a JSON object")
    return data


def _text(body: dict[str, Any], key: str, limit: int = 4000) -> str:
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ApiError(400, "invalid", f"{key} must be a string")
    return v[:limit]


def parse_time(value: Any, name: str) -> float | None:
    """Epoch seconds from a number or an RFC 3339 string with an offset. Raises ``ApiError``."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid", f"{name}: not a time (RFC 3339 or epoch seconds)") from None
    if dt.tzinfo is None:
        raise ApiError(400, "invalid", f"{name}: give a time zone offset")
    return dt.timestamp()


# ---------------------------------------------------------------------- middleware

def _authenticate(request: web.Request, svc: ConsoleService) -> Caller | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip().encode()
        for acct in svc.accounts.values():
            if hmac.compare_digest(acct.token.encode(), token):
                return Caller(acct.name, acct.role, acct.unit, None)
        return None
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
        if not (path in PUBLIC or path.startswith("/static/")):
            caller = _authenticate(request, svc)
            if caller is None:
                raise ApiError(401, "unauthorized", "log in first")
            request[_CALLER] = caller
            if unsafe and caller.session is not None:
                if not _same_origin(request):
                    raise ApiError(403, "bad_origin", "cross-site request refused")
                if not csrf_ok(caller.session, request.headers.get("X-CSRF-Token")):
                    raise ApiError(403, "csrf", "missing or wrong CSRF token")
        resp = await handler(request)
    except (ApiError, DeskError) as exc:
        resp = _json({"error": exc.code, "message": str(exc)}, exc.status)
    except web.HTTPException:
        raise
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


# ---------------------------------------------------------------------- pages and session

async def index(request: web.Request) -> web.StreamResponse:
    """The single page (its modules load from /static/)."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    """Liveness."""
    return _json({"ok": True})


def _session_json(svc: ConsoleService, caller: Caller) -> dict[str, Any]:
    return {"user": caller.user, "role": caller.role, "unit": caller.unit,
            "csrf": caller.session.csrf if caller.session else None,
            "expires_at": caller.session.expires_at if caller.session else None,
            "config": {"title": svc.config.title, "timezone": svc.config.timezone, "locale": svc.config.locale,
                       "gcj02": svc.config.gcj02_basemap},
            "permissions": {p: allowed(caller.role, p) for p in ("alert.handle", "silence.create", "roster.edit",
                                                                  "audit.view")},
            "people": [{"id": p.id, "name": p.name, "unit": p.unit} for p in svc.alerting.roster.people.values()],
            "users": sorted(svc.accounts),
            "units": sorted({s.unit for s in svc.registry.sites.values() if s.unit}
                            | {p.unit for p in svc.alerting.roster.people.values() if p.unit}),
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
    if svc.throttle.blocked(client, now):
        svc.journal.audit(now, "-", "-", "login", client, 429, {}, client)
        raise ApiError(429, "locked", "too many failed logins; wait a few minutes")
    body = await _body(request)
    name, password = _text(body, "username", 100), _text(body, "password", 500)
    acct = check_login(svc.accounts, name, password)
    if acct is None:
        svc.throttle.failed(client, now)
        svc.counters["logins_failed"] += 1
        svc.journal.audit(now, name or "-", "-", "login", name, 401, {}, client)
        raise ApiError(401, "bad_login", "wrong user name or password")
    svc.throttle.succeeded(client)
    s = svc.sessions.open(acct, now)
    svc.counters["logins"] += 1
    svc.journal.audit(now, acct.name, acct.role, "login", acct.name, 200, {}, client)
    resp = _json(_session_json(svc, Caller(s.user, s.role, s.unit, s)))
    resp.set_cookie(COOKIE, s.id, max_age=int(svc.config.session_ttl_s), httponly=True, samesite="Strict",
                    secure=svc.config.secure_cookies, path="/")
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
    return _json(_svc(request).alert_detail(request.match_info["id"]))


async def alert_series(request: web.Request) -> web.Response:
    """The alerting device's telemetry around the alert (``before``/``after`` seconds, default 10/5 min)."""
    svc = _svc(request)
    rec = svc.desk.get(request.match_info["id"])
    try:
        before = float(request.query.get("before", "600"))
        after = float(request.query.get("after", "300"))
    except ValueError:
        raise ApiError(400, "invalid", "before and after are seconds") from None
    end = min(rec.ends_at or svc.clock(), rec.starts_at + after) if rec.ends_at else svc.clock()
    data = await svc.series(rec.device_id, rec.starts_at - before, max(end, rec.starts_at + 1.0))
    data.update(starts_at=rec.starts_at, ends_at=rec.ends_at, values=rec.values)
    return _json(data)


async def alert_action(request: web.Request) -> web.Response:
    """Acknowledge, assign, comment, resolve or silence one alert."""
    svc = _svc(request)
    c = _caller(request)
    aid, action = request.match_info["id"], request.match_info["action"]
    body = await _body(request)
    request[_AUDIT] = {k: v for k, v in body.items() if isinstance(v, str | int | float)}
    desk, actor = svc.desk, c.actor
    if action == "silence":
        _need(c, "silence.create")
        rec = desk.get(aid)
        try:
            minutes = float(body.get("duration_min", 60))
        except (TypeError, ValueError):
            raise ApiError(400, "invalid", "duration_min must be a number") from None
        if not 1 <= minutes <= 7 * 24 * 60:
            raise ApiError(400, "invalid", "duration_min must be 1 .. 10080")
        scope = body.get("scope", "rule_device")
        matchers = {"device": [f"device_id={rec.device_id}"], "rule": [f"rule={rec.rule}"],
                    "rule_device": [f"rule={rec.rule}", f"device_id={rec.device_id}"]}.get(str(scope))
        if matchers is None:
            raise ApiError(400, "invalid", "scope is device, rule or rule_device")
        if not actor.at_least("supervisor") and actor.unit:
            matchers.append(f"unit={actor.unit}")
        now = svc.clock()
        s = desk.create_silence(actor, matchers, now + minutes * 60, now, _text(body, "comment", 1000)
                                or f"silenced from alert {aid}")
        desk.comment(aid, actor, f"静默 {minutes:.0f} 分钟 / silenced for {minutes:.0f} min ({', '.join(s.matchers)})")
        return _json({"silence": _silence_json(s)}, 201)
    _need(c, "alert.handle")
    if action == "ack":
        rec = desk.acknowledge(aid, actor, _text(body, "note"))
    elif action == "assign":
        rec = desk.assign(aid, actor, _text(body, "assignee", 100) or None, _text(body, "unit", 100) or None,
                          _text(body, "note"))
    elif action == "comment":
        rec = desk.comment(aid, actor, _text(body, "text"))
    elif action == "resolve":
        rec = desk.close(aid, actor, _text(body, "reason", 1000))
    else:
        raise ApiError(404, "not_found", f"no action {action!r}")
    from alerting.api import alert_json

    return _json({"alert": alert_json(svc.alerting, rec)})


# ---------------------------------------------------------------------- silences

def _silence_json(s: Any) -> dict[str, Any]:
    return {"id": s.id, "matchers": s.matchers, "starts_at": s.starts_at, "ends_at": s.ends_at, "author": s.author,
            "comment": s.comment, "created_at": s.created_at}


async def list_silences(request: web.Request) -> web.Response:
    """Silences in force or scheduled, and the recurring maintenance windows."""
    svc = _svc(request)
    now = svc.clock()
    return _json({"now": now, "silences": [_silence_json(s) | {"active": s.active(now)} for s in svc.desk.silences()],
                  "maintenance": svc.maintenance()})


async def create_silence(request: web.Request) -> web.Response:
    """Create a silence: matchers, and ``ends_at`` or ``duration_min``."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "silence.create")
    body = await _body(request)
    request[_AUDIT] = {"matchers": body.get("matchers"), "comment": body.get("comment")}
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise ApiError(400, "invalid", "matchers must be a list of strings like 'site=tower-a'")
    now = svc.clock()
    start = parse_time(body.get("starts_at"), "starts_at") or now
    end = parse_time(body.get("ends_at"), "ends_at")
    if end is None:
        try:
            end = start + float(body.get("duration_min", 60)) * 60
        except (TypeError, ValueError):
            raise ApiError(400, "invalid", "duration_min must be a number") from None
    s = svc.desk.create_silence(c.actor, [m.strip() for m in matchers if m.strip()], end, start,
                                _text(body, "comment", 1000))
    return _json({"silence": _silence_json(s)}, 201)


async def expire_silence(request: web.Request) -> web.Response:
    """Expire a silence now."""
    svc = _svc(request)
    c = _caller(request)
    _need(c, "silence.expire")
    request[_AUDIT] = {"silence": request.match_info["id"]}
    svc.desk.delete_silence(c.actor, request.match_info["id"])
    return _json({"expired": request.match_info["id"]})


# ---------------------------------------------------------------------- devices, map, duty, figures

async def list_devices(request: web.Request) -> web.Response:
    """Devices with online state, last seen, current values and open alerts."""
    return _json(_svc(request).devices(dict(request.query)))


async def get_device(request: web.Request) -> web.Response:
    """One device."""
    data = _svc(request).device_detail(request.match_info["id"])
    if data is None:
        raise ApiError(404, "not_found", "no such device")
    return _json(data)


async def device_series(request: web.Request) -> web.Response:
    """A device's numeric telemetry for ``since``..``until`` (default the last hour)."""
    svc = _svc(request)
    now = svc.clock()
    until = parse_time(request.query.get("until"), "until") or now
    since = parse_time(request.query.get("since"), "since") or until - 3600
    if until - since > 31 * 86400:
        raise ApiError(400, "invalid", "at most 31 days at once")
    return _json(await svc.series(request.match_info["id"], since, until))


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
    body = await _body(request)
    request[_AUDIT] = {k: v for k, v in body.items() if isinstance(v, str | int | float)}
    _need(c, "roster.edit")
    start, end = parse_time(body.get("starts_at"), "starts_at"), parse_time(body.get("ends_at"), "ends_at")
    if start is None or end is None:
        raise ApiError(400, "invalid", "starts_at and ends_at are required")
    o = svc.desk.add_override(c.actor, _text(body, "roster", 100), _text(body, "person", 100), start, end,
                              _text(body, "reason", 500))
    return _json({"override": {"id": o.id, "roster": o.roster, "person": o.person, "starts_at": o.starts_at,
                               "ends_at": o.ends_at}}, 201)


async def delete_override(request: web.Request) -> web.Response:
    """Remove a roster override (supervisors and admins)."""
    svc = _svc(request)
    c = _caller(request)
    request[_AUDIT] = {"override": request.match_info["id"]}
    _need(c, "roster.edit")
    svc.desk.delete_override(c.actor, request.match_info["id"])
    return _json({"deleted": request.match_info["id"]})


async def figures(request: web.Request) -> web.Response:
    """Handling figures for today and the last ``days`` days (1..92)."""
    try:
        days = int(request.query.get("days", "7"))
    except ValueError:
        raise ApiError(400, "invalid", "days must be an integer") from None
    if not 1 <= days <= 92:
        raise ApiError(400, "invalid", "days must be 1 .. 92")
    return _json(_svc(request).figures(days))


async def audit_log(request: web.Request) -> web.Response:
    """The console's audit trail (supervisors and admins)."""
    c = _caller(request)
    _need(c, "audit.view")
    try:
        limit = min(int(request.query.get("limit", "200")), 2000)
    except ValueError:
        raise ApiError(400, "invalid", "limit must be an integer") from None
    return _json({"entries": _svc(request).journal.audit_log(user=request.query.get("user") or None, limit=limit)})


async def evidence(request: web.Request) -> web.StreamResponse:
    """An evidence snapshot file from ``evidence_dir`` (logged-in users only)."""
    svc = _svc(request)
    if not svc.config.evidence_dir:
        raise ApiError(404, "not_found", "no evidence folder configured")
    root = Path(svc.config.evidence_dir).resolve()
    path = (root / request.match_info["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise ApiError(404, "not_found", "no such snapshot")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


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

def build_app(svc: ConsoleService) -> web.Application:
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
    r.add_post("/api/alerts/{id}/{action}", alert_action)
    r.add_get("/api/silences", list_silences)
    r.add_post("/api/silences", create_silence)
    r.add_delete("/api/silences/{id}", expire_silence)
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
    r.add_static("/static/", STATIC, append_version=False)
    return app


async def serve(svc: ConsoleService) -> None:
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
    server = getattr(site, "_server", None)
    socks = getattr(server, "sockets", None) or []
    svc.port = socks[0].getsockname()[1] if socks else svc.config.port
    svc.started.set()
    log.info("console: serving on %s", svc.url)
    try:
        await asyncio.Event().wait()
    finally:
        await svc.close_pages()
        with contextlib.suppress(Exception):
            await runner.cleanup()
