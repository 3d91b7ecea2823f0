"""The alerting HTTP API (aiohttp) for the console and other systems; OpenAPI at ``/api/openapi.json``.

Authentication: ``Authorization: Bearer <token>``; users, roles (operator, supervisor, admin) and
tokens come from the ``alerting.users`` config. Times in queries and bodies are RFC 3339 strings or
epoch seconds; times in responses are RFC 3339 (alert fields) or epoch seconds (log fields).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from alerting.desk import Actor, AlertDesk, DeskError
from alerting.lifecycle import AlertRecord, to_contract
from alerting.masking import mask_url
from alerting.openapi import OPENAPI
from alerting.service import AlertingService

_DESK = web.AppKey("desk", AlertDesk)
_SVC = web.AppKey("svc", AlertingService)
_TOKENS = web.AppKey("tokens", dict)
_ACTOR = web.RequestKey("actor", Actor)
FILTER_COLUMNS = ("kind", "site", "unit", "industry", "severity", "device_id")


def _time(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise DeskError(400, "invalid", f"{name}: not a time (RFC 3339 or epoch seconds)") from None
    if dt.tzinfo is None:
        raise DeskError(400, "invalid", f"{name}: give a time zone offset")
    return dt.timestamp()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def alert_json(svc: AlertingService, rec: AlertRecord) -> dict[str, Any]:
    """An alert for API responses: the public ``Alert`` plus handling fields."""
    out: dict[str, Any] = msgspec.to_builtins(to_contract(rec))
    muted = svc.muter.mute_reason(rec.id, rec.match_labels(), svc.clock()) if rec.is_open else None
    out.update(unit=rec.assigned_unit or rec.unit, industry=rec.industry, assigned_unit=rec.assigned_unit,
               acknowledged_at=_iso(rec.acknowledged_at), resolved_by=rec.resolved_by,
               ack_overdue=rec.ack_overdue, resolve_overdue=rec.resolve_overdue, reopen_count=rec.reopen_count,
               escalation={"policy": rec.esc_policy, "next_step": rec.esc_next_step, "repeats": rec.esc_repeats},
               muted={"kind": muted.kind, "id": muted.id} if muted else None)
    return out


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, default=str),
                        content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise DeskError(400, "invalid", "body is not JSON") from None
    if not isinstance(data, dict):
        raise DeskError(400, "invalid", "body must be a JSON object")
    return data


def _actor(request: web.Request) -> Actor:
    actor = request.get(_ACTOR)
    assert isinstance(actor, Actor)
    return actor


def _str(body: dict[str, Any], key: str, default: str = "") -> str:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise DeskError(400, "invalid", f"{key} must be a string")
    return v


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path not in ("/api/openapi.json", "/api/health"):
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            actor = None
            for known, who in request.app[_TOKENS].items():
                if token and hmac.compare_digest(known.encode(), token.encode()):
                    actor = who
            if actor is None:
                raise DeskError(401, "unauthorized", "missing or unknown bearer token")
            request[_ACTOR] = actor
        return await handler(request)
    except DeskError as exc:
        return _json({"error": exc.code, "message": str(exc)}, exc.status)


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
    status = [s for s in q.get("status", "").split(",") if s] or None
    try:
        limit = min(int(q.get("limit", "200")), 5000)
        offset = int(q.get("offset", "0"))
    except ValueError:
        raise DeskError(400, "invalid", "limit and offset must be integers") from None
    filters = {c: q[c] for c in FILTER_COLUMNS if q.get(c)}
    svc = request.app[_SVC]
    recs = request.app[_DESK].alerts(status=status, since=_time(q.get("since"), "since"),
                                   until=_time(q.get("until"), "until"), filters=filters, limit=limit, offset=offset)
    return _json({"alerts": [alert_json(svc, r) for r in recs], "count": len(recs)})


async def get_alert(request: web.Request) -> web.Response:
    """One alert with its timeline and notifications."""
    desk, svc = request.app[_DESK], request.app[_SVC]
    aid = request.match_info["id"]
    rec = desk.get(aid)
    timeline = [{"ts": _iso(e.ts), "actor": e.actor, "action": e.action, "detail": e.detail}
                for e in desk.timeline(aid)]
    notes = [n.public() for n in svc.store.notifications(alert_id=aid, limit=100)]
    return _json({"alert": alert_json(svc, rec), "timeline": timeline, "notifications": notes})


def _action(fn: Callable[[AlertDesk, str, Actor, dict[str, Any]], AlertRecord]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = await _body(request)
        rec = fn(request.app[_DESK], request.match_info["id"], _actor(request), body)
        return _json({"alert": alert_json(request.app[_SVC], rec)})

    handler.__doc__ = fn.__doc__
    return handler


def _ack(d: AlertDesk, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Acknowledge."""
    return d.acknowledge(aid, a, _str(b, "note"))


def _assign(d: AlertDesk, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Assign."""
    return d.assign(aid, a, _str(b, "assignee") or None, _str(b, "unit") or None, _str(b, "note"))


def _comment(d: AlertDesk, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Comment."""
    return d.comment(aid, a, _str(b, "text"))


def _resolve(d: AlertDesk, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Close with a reason."""
    return d.close(aid, a, _str(b, "reason"))


def _severity(d: AlertDesk, aid: str, a: Actor, b: dict[str, Any]) -> AlertRecord:
    """Change severity."""
    return d.set_severity(aid, a, _str(b, "severity"), _str(b, "reason"))


def _silence_json(s: Any) -> dict[str, Any]:
    return {"id": s.id, "matchers": s.matchers, "starts_at": _iso(s.starts_at), "ends_at": _iso(s.ends_at),
            "author": s.author, "comment": s.comment, "created_at": _iso(s.created_at)}


async def list_silences(request: web.Request) -> web.Response:
    """Every silence in force or scheduled."""
    return _json({"silences": [_silence_json(s) for s in request.app[_DESK].silences()]})


async def put_silence(request: web.Request) -> web.Response:
    """Create (POST) or replace (PUT /{id}) a silence."""
    b = await _body(request)
    matchers = b.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise DeskError(400, "invalid", "matchers must be a list of strings like 'site=tower-a'")
    ends = _time(b.get("ends_at"), "ends_at")
    if ends is None:
        raise DeskError(400, "invalid", "ends_at is required")
    s = request.app[_DESK].create_silence(_actor(request), matchers, ends, _time(b.get("starts_at"), "starts_at"),
                                          _str(b, "comment"), request.match_info.get("id"))
    return _json({"silence": _silence_json(s)}, 200 if request.method == "PUT" else 201)


async def delete_silence(request: web.Request) -> web.Response:
    """Expire a silence."""
    request.app[_DESK].delete_silence(_actor(request), request.match_info["id"])
    return _json({"deleted": request.match_info["id"]})


async def oncall(request: web.Request) -> web.Response:
    """Who is on duty (now, or ``at``) for a unit and role."""
    q = request.query
    return _json({"on_duty": request.app[_DESK].on_duty(_time(q.get("at"), "at"), q.get("unit") or None,
                                                        q.get("role") or None)})


async def rosters(request: web.Request) -> web.Response:
    """Rosters, people (channels masked) and overrides."""
    svc = request.app[_SVC]
    return _json({
        "people": [{"id": p.id, "name": p.name, "roles": p.roles, "unit": p.unit,
                    "channels": [mask_url(u) for u in p.channels]} for p in svc.roster.people.values()],
        "rosters": [msgspec.to_builtins(r) for r in svc.roster.rosters.values()],
        "overrides": [msgspec.to_builtins(o) for o in svc.roster.overrides.values()],
    })


async def add_override(request: web.Request) -> web.Response:
    """Add a roster override (supervisor or admin)."""
    b = await _body(request)
    start, end = _time(b.get("starts_at"), "starts_at"), _time(b.get("ends_at"), "ends_at")
    if start is None or end is None:
        raise DeskError(400, "invalid", "starts_at and ends_at are required")
    o = request.app[_DESK].add_override(_actor(request), _str(b, "roster"), _str(b, "person"), start, end,
                                        _str(b, "reason"))
    return _json({"override": msgspec.to_builtins(o)}, 201)


async def delete_override(request: web.Request) -> web.Response:
    """Remove a roster override (supervisor or admin)."""
    request.app[_DESK].delete_override(_actor(request), request.match_info["id"])
    return _json({"deleted": request.match_info["id"]})


async def figures(request: web.Request) -> web.Response:
    """Handling figures for a period: counts by industry/site/unit, MTTA, MTTR, closure and on-time rates."""
    q = request.query
    filters = {c: q[c] for c in FILTER_COLUMNS if q.get(c)}
    return _json(request.app[_DESK].figures(_time(q.get("since"), "since"), _time(q.get("until"), "until"),
                                            filters))


async def notifications(request: web.Request) -> web.Response:
    """The notification log (``status=dead`` for the dead-letter list)."""
    q = request.query
    rows = request.app[_SVC].store.notifications(status=q.get("status") or None, alert_id=q.get("alert_id") or None,
                                                 limit=min(int(q.get("limit", "200") or 200), 5000))
    return _json({"notifications": [r.public() for r in rows]})


async def notification(request: web.Request) -> web.Response:
    """One notification with every delivery attempt."""
    svc = request.app[_SVC]
    try:
        nid = int(request.match_info["id"])
    except ValueError:
        raise DeskError(400, "invalid", "notification id is an integer") from None
    row = svc.store.notification(nid)
    if row is None:
        raise DeskError(404, "not_found", f"no notification {nid}")
    return _json({"notification": row.public(), "attempts": svc.store.attempts(nid)})


async def stats(request: web.Request) -> web.Response:
    """The service's counters."""
    return _json(request.app[_SVC].stats())


def _tokens(svc: AlertingService) -> dict[str, Actor]:
    out: dict[str, Actor] = {}
    for u in svc.config.users:
        token = u.token if u.token is not None else os.environ.get(u.token_env or "")
        if token:
            out[token] = Actor(u.name, u.role, u.unit)
    return out


def build_app(svc: AlertingService) -> web.Application:
    """The aiohttp application serving the API for one service."""
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=256 * 1024)
    app[_SVC] = svc
    app[_DESK] = svc.desk
    app[_TOKENS] = _tokens(svc)
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
    return app

