"""Request input of the console's HTTP API: the JSON body and validated query parameters and path ids.

Everything here raises ``ApiError`` (a 4xx with a message naming the parameter) instead of letting a
malformed value reach the views, the alert store or storage queries.
"""

from __future__ import annotations

import math
import re
from typing import Any

from aiohttp import web

from alerting.surface import ID_RE, DeskError, json_body
from alerting.surface import parse_time as parse_alert_time
from broker.contracts import DEVICE_ID_PATTERN
from console.errors import ConsoleError

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN.strip("^$"))


class ApiError(ConsoleError):
    """An HTTP error with a machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


async def body_of(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (parsed once, kept on the request); ``{}`` without a body."""
    try:
        return await json_body(request)
    except DeskError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


def text_field(body: dict[str, Any], key: str, limit: int = 4000) -> str:
    """A string field of a body (cut to ``limit``), ``""`` when absent."""
    v = body.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ApiError(400, "invalid", f"{key} must be a string")
    return v[:limit]


def parse_time(value: Any, name: str) -> float | None:
    """Epoch seconds from a number or an RFC 3339 string with an offset. Raises ``ApiError``."""
    try:
        return parse_alert_time(value, name)
    except DeskError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


def seconds_param(request: web.Request, name: str, default: float, hi: float) -> float:
    """A finite number of seconds 0 .. ``hi`` from the query string."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} must be a number of seconds 0 .. {hi:.0f}") from None
    if not math.isfinite(v) or not 0 <= v <= hi:
        raise ApiError(400, "invalid", f"{name} must be a number of seconds 0 .. {hi:.0f}")
    return v


def path_id(request: web.Request, name: str = "id") -> str:
    """An alert, silence or override id from the path (404 when it cannot be one)."""
    value = request.match_info[name]
    if not ID_RE.fullmatch(value):
        raise ApiError(404, "not_found", f"no such {name}")
    return value


def device_id_param(request: web.Request) -> str:
    """The path's device id: it must fully match the contracts' pattern (it reaches storage queries)."""
    value = request.match_info["id"]
    if not _DEVICE_ID.fullmatch(value):
        raise ApiError(400, "invalid", "device id must match " + DEVICE_ID_PATTERN)
    return value
