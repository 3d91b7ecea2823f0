"""The console's work-order routes: the phone page (``/h5/``) for grid staff and the centre's work-order API.

Grid staff (role ``grid_staff``) log in like operators (user name and token) and may use only these
routes (``GRID_STAFF_PATHS``; the guard in ``console.web`` refuses the rest with 403); the alerting
work-order desk then limits them to their grids' cases (another grid's case is 404) and to field
steps (centre steps are 403). Photos are uploaded as the raw image (``Content-Type: image/jpeg`` or
``image/png``), checked by size and by their first bytes, and stored under a random name.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from alerting.surface import Actor, WorkOrderDesk, photo_type, query_int, query_text
from console.params import ApiError, body_of, parse_time, path_id

GRID_STAFF_PATHS = re.compile(r"/api/(session|logout|wo(/.*)?)")
"""The only ``/api`` routes grid staff may call."""
PHOTO_UPLOAD = re.compile(r"/api/wo/[^/]+/photos")
PHOTO_TYPES = ("image/jpeg", "image/png")
STAGES = ("new", "dispatched", "accepted", "en_route", "on_site", "handled", "verified", "closed", "returned")
H5 = Path(__file__).parent / "static" / "h5"


def raw_upload(request: web.Request) -> bool:
    """A photo upload: its body is the image itself, not JSON (the guard must not parse it)."""
    return request.method == "POST" and request.content_type in PHOTO_TYPES and bool(
        PHOTO_UPLOAD.fullmatch(request.path))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, ensure_ascii=False, default=str),
                        content_type="application/json")


def add_routes(r: web.UrlDispatcher, orders_of: Callable[[web.Request], WorkOrderDesk | None],
               actor_of: Callable[[web.Request], Actor], audit: Callable[[web.Request, dict[str, Any]], None],
               now_of: Callable[[web.Request], float]) -> None:
    """Register the phone page and the ``/api/wo`` routes on the console's router."""

    def desk(request: web.Request) -> WorkOrderDesk:
        wo = orders_of(request)
        if wo is None:
            raise ApiError(404, "not_found", "work orders are not enabled (alerting.workorders.enabled)")
        return wo

    async def page(request: web.Request) -> web.StreamResponse:
        """The phone page (plain HTML + JS modules from /static/h5/)."""
        return web.FileResponse(H5 / "index.html", headers={"Cache-Control": "no-cache"})

    async def list_orders(request: web.Request) -> web.Response:
        """Work orders the caller may see (``stage``, ``grid``, ``mine=1``), newest first."""
        q = request.query
        stages = [s for s in (query_text(q, "stage") or "").split(",") if s] or None
        if stages is not None and not set(stages) <= set(STAGES):
            raise ApiError(400, "invalid", f"stage is a comma-separated list of {', '.join(STAGES)}")
        mine = query_text(q, "mine")
        if mine not in (None, "0", "1"):
            raise ApiError(400, "invalid", "mine is 0 or 1")
        wo = desk(request)
        rows = wo.orders(actor_of(request), stages=stages, grid=query_text(q, "grid", 64), mine=mine == "1",
                         limit=query_int(q, "limit", 100, 1, 1000), offset=query_int(q, "offset", 0, 0, 1_000_000))
        return _json({"workorders": [wo.view(o) for o in rows], "now": now_of(request)})

    async def report(request: web.Request) -> web.Response:
        """Report an incident from the field (grid staff): opens a case like a device alert."""
        body = await body_of(request)
        audit(request, {k: v for k, v in body.items() if isinstance(v, str | int | float)})
        wo = desk(request)
        return _json({"workorder": wo.view(wo.report(actor_of(request), body))}, 201)

    async def get_order(request: web.Request) -> web.Response:
        """One work order with the case's timeline."""
        wo = desk(request)
        oid = path_id(request)
        o = wo.get(actor_of(request), oid)
        timeline = [{"ts": e.ts, "actor": e.actor, "action": e.action, "detail": e.detail}
                    for e in wo.timeline(oid)]
        return _json({"workorder": wo.view(o), "timeline": timeline, "now": now_of(request)})

    async def action(request: web.Request) -> web.Response:
        """A work-order step (accept, depart, arrive, handle, return, dispatch, reassign, verify, close, ...)."""
        oid = path_id(request)
        body = await body_of(request)
        audit(request, {k: v for k, v in body.items() if isinstance(v, str | int | float | bool)})
        wo = desk(request)
        o = wo.act(actor_of(request), oid, request.match_info["action"], body)
        return _json({"workorder": wo.view(o)})

    async def upload(request: web.Request) -> web.Response:
        """Add a photo to a case: the body is the JPEG or PNG itself (size and first bytes checked)."""
        oid = path_id(request)
        wo = desk(request)
        actor = actor_of(request)
        wo.check_photo(actor, oid, request.content_length)  # who and when first: 403/404/409/413 before the body
        if request.content_type not in PHOTO_TYPES:
            raise ApiError(400, "invalid", "send the photo itself with Content-Type image/jpeg or image/png")
        limit = wo.cfg.photo_max_bytes
        data = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise ApiError(413, "too_large", f"a photo is at most {limit} bytes")
        audit(request, {"bytes": len(data), "type": request.content_type})
        name = await asyncio.to_thread(wo.write_photo, bytes(data))
        o = wo.attach_photo(actor, oid, name)
        return _json({"workorder": wo.view(o), "photo": len(o.photos) - 1}, 201)

    async def photo(request: web.Request) -> web.Response:
        """One photo of a case (to those who may see the case)."""
        oid = path_id(request)
        raw = request.match_info["n"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 3:
            raise ApiError(404, "not_found", "photos are numbered 0, 1, 2, ...")
        path = desk(request).photo_path(actor_of(request), oid, int(raw))
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            raise ApiError(404, "not_found", "photo missing from the evidence store") from None
        kind = photo_type(data)
        if kind is None:
            raise ApiError(404, "not_found", "not an image")
        return web.Response(body=data, content_type="image/jpeg" if kind == "jpg" else "image/png",
                            headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"})

    async def figures(request: web.Request) -> web.Response:
        """Work-order figures (grid staff: their grids) for cases opened in ``since``..``until``."""
        q = request.query
        filters = {c: v for c in ("grid", "unit", "category") if (v := query_text(q, c, 64)) is not None}
        return _json(desk(request).figures(actor_of(request), parse_time(q.get("since"), "since"),
                                           parse_time(q.get("until"), "until"), filters))

    async def grids(request: web.Request) -> web.Response:
        """Grids with outline, staff and open cases (grid staff: their own)."""
        wo = desk(request)
        mine = wo.grids_of(actor_of(request))
        return _json({"grids": [g for g in wo.grid_rows() if mine is None or g["id"] in mine]})

    r.add_get("/h5/", page)
    r.add_get("/api/wo", list_orders)
    r.add_post("/api/wo", report)
    r.add_get("/api/wo/figures", figures)
    r.add_get("/api/wo/grids", grids)
    r.add_get("/api/wo/{id}", get_order)
    r.add_post("/api/wo/{id}/photos", upload)
    r.add_get("/api/wo/{id}/photos/{n}", photo)
    r.add_post("/api/wo/{id}/{action}", action)
