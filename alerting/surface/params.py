"""HTTP input of alerting's surface: times, bounded integers and texts, JSON bodies and ids, checked.

Shared by alerting's own HTTP API and the console's, so both refuse the same malformed input the same
way: every helper raises ``Invalid`` (400) naming the parameter, never lets a bad value reach a query.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from alerting.desk import Invalid

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
"""Alert, silence and override ids: what the service generates, and what a client may choose on PUT."""
_BODY = web.RequestKey("body", dict)


def parse_time(value: Any, name: str) -> float | None:
    """Epoch seconds from a number or an RFC 3339 string with an offset (None when empty); raises ``Invalid``."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Invalid(f"{name}: not a time (RFC 3339 or epoch seconds)")
    ts: float | None = None
    if isinstance(value, int | float):
        ts = float(value)
    else:
        try:
            ts = float(value)
        except (TypeError, ValueError):
            try:
                dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                raise Invalid(f"{name}: not a time (RFC 3339 or epoch seconds)") from None
            if dt.tzinfo is None:
                raise Invalid(f"{name}: give a time zone offset") from None
            ts = dt.timestamp()
    # Beyond year 1970..9999 datetime cannot represent it (and nan/inf are not times).
    if not math.isfinite(ts) or not 0 <= ts < 253402300800:
        raise Invalid(f"{name}: out of range")
    return ts


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """``json.loads`` refusing the non-standard NaN and Infinity Python would accept."""
    return json.loads(text, parse_constant=_no_constant)


def query_int(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within ``lo``..``hi``. Raises ``Invalid`` naming it."""
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise Invalid(f"{name} must be an integer {lo} .. {hi}")
    v = int(raw)
    if not lo <= v <= hi:
        raise Invalid(f"{name} must be {lo} .. {hi}")
    return v


def query_text(q: Mapping[str, str], name: str, limit: int = 200) -> str | None:
    """A free-text query parameter of at most ``limit`` characters, or None when absent."""
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > limit or any(ord(c) < 32 for c in raw):
        raise Invalid(f"{name}: at most {limit} printable characters")
    return raw


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (parsed once, kept on the request); ``{}`` without one. Raises ``Invalid``."""
    cached: dict[str, Any] | None = request.get(_BODY)
    if cached is not None:
        return cached
    if not request.body_exists:
        return {}
    try:
        data = await request.json(loads=strict_json)
    except (ValueError, RecursionError):
        raise Invalid("body is not JSON") from None
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    # Kept: the stream is consumed once (the middleware parses every body before the handler runs).
    request[_BODY] = data
    return data
