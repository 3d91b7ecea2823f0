"""Masking of secrets in Apprise URLs: only the scheme and a plain host name are ever shown."""

from __future__ import annotations

import re
import urllib.parse

_HOST_RE = re.compile(r"^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:.]+\])$")


def mask_url(url: str) -> str:
    """``scheme://***@host:port/...``: user, password, path and query (where tokens live) are hidden.

    A host that is not a plain host name or address (Telegram puts its bot token there) is hidden too.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme or "?"
        netloc = parts.netloc.rpartition("@")[2]
        host, _, port = netloc.partition(":") if not netloc.startswith("[") else (netloc, "", "")
        shown = host if _HOST_RE.match(host) else "***"
        if port and port.isdigit():
            shown += f":{port}"
        tail = "/..." if (parts.path.strip("/") or parts.query) else ""
        return f"{scheme}://***@{shown}{tail}"
    except ValueError:
        return "***"


def mask_text(text: str, secrets: list[str]) -> str:
    """Replace every secret URL (and its userinfo/path pieces) in ``text`` by its masked form."""
    for url in secrets:
        if url and url in text:
            text = text.replace(url, mask_url(url))
        parts = urllib.parse.urlsplit(url)
        for piece in (parts.password, parts.username, parts.path.strip("/"), parts.query):
            if piece and len(piece) >= 4 and piece in text:
                text = text.replace(piece, "***")
    return text
