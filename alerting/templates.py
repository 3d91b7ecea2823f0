"""Notification texts from templates, Chinese by default, English available.

Templates are ``str.format`` strings over a fixed set of fields (``LINE_FIELDS``) so a deployment
can override them in config (``templates: {zh: {line: ..., firing: ...}}``) without code. The
title and the body are rendered from one context per alert (``MessageTemplates.context``), so a
field that works in one works in the other; a field a template names that the context lacks is
left as written rather than turned into ``?``. Times are shown in the control room's time zone.

Secrets in Apprise URLs are masked here too (``mask_url``, ``mask_text``): only the scheme and a plain
host name are ever shown, in delivery errors, logs and the API.
"""

from __future__ import annotations

import re
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from alerting.lifecycle import AlertRecord

SEVERITY_NAMES = {
    "zh": {"info": "提示", "warning": "警告", "major": "重要", "critical": "紧急"},
    "en": {"info": "info", "warning": "warning", "major": "major", "critical": "CRITICAL"},
}
KIND_TITLES = {
    "zh": {"firing": "告警", "resolved": "已恢复", "repeat": "仍未处理", "escalation": "升级",
           "overdue": "超时未处理", "digest": "告警汇总"},
    "en": {"firing": "Alert", "resolved": "Resolved", "repeat": "Still open", "escalation": "Escalated",
           "overdue": "Overdue", "digest": "Digest"},
}
LINE = {
    "zh": "{sev} {summary}\n设备 {device_id}  站点 {site}  单位 {unit}\n开始 {starts}  应确认 {ack_by}\n{link}",
    "en": "{sev} {summary}\nDevice {device_id}  site {site}  unit {unit}\nStarted {starts}  ack by {ack_by}\n{link}",
}
LINE_FIELDS = ("sev", "summary", "device_id", "site", "unit", "starts", "ack_by", "link", "rule", "kind",
               "severity", "id", "device")
"""Fields a ``line`` or title template may use."""
STEP = {"zh": "（第 {n} 级升级）", "en": " (escalation step {n})"}


class _Keep(dict[str, Any]):
    """A format mapping that leaves unknown fields as written (``{x}``) instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, context: Mapping[str, Any]) -> str:
    """``template.format(**context)``, unknown fields and bad specs left as written."""
    try:
        return string.Formatter().vformat(template, (), _Keep(context))
    except (ValueError, IndexError, AttributeError, KeyError):
        return template


@dataclass(frozen=True, slots=True)
class Rendered:
    """A title and body ready for Apprise."""

    title: str
    body: str
    attach: str | None


class MessageTemplates:
    """Renders notifications for one or several alerts."""

    def __init__(self, console_url: str, timezone: str = "Asia/Shanghai",
                 overrides: dict[str, dict[str, str]] | None = None) -> None:
        self.console_url = console_url.rstrip("/")
        self.tz = ZoneInfo(timezone)
        self.lines = dict(LINE)
        self.titles = {loc: dict(t) for loc, t in KIND_TITLES.items()}
        for loc, entries in (overrides or {}).items():
            for key, text in entries.items():
                if key == "line":
                    self.lines[loc] = text
                else:
                    self.titles.setdefault(loc, dict(KIND_TITLES["zh"]))[key] = text

    def _t(self, ts: float | None) -> str:
        return "-" if ts is None else datetime.fromtimestamp(ts, self.tz).strftime("%m-%d %H:%M:%S")

    def context(self, a: AlertRecord, locale: str) -> dict[str, str]:
        """The fields of one alert, shared by the title and the body (``LINE_FIELDS``)."""
        summary = (a.summary_en or a.summary or a.rule) if locale == "en" else (a.summary or a.rule)
        ctx = {
            "sev": f"[{SEVERITY_NAMES.get(locale, SEVERITY_NAMES['zh'])[a.severity.value]}]",
            "severity": SEVERITY_NAMES.get(locale, SEVERITY_NAMES["zh"])[a.severity.value],
            "device_id": a.device_id, "device": a.device_id, "kind": str(a.kind), "rule": a.rule, "id": a.id,
            "site": a.site or "-", "unit": a.assigned_unit or a.unit or "-",
            "starts": self._t(a.starts_at), "ack_by": self._t(a.ack_by), "link": f"{self.console_url}/alerts/{a.id}",
        }
        # A summary that still names fields (a rule written against this context) is filled from it too.
        ctx["summary"] = fill(summary, ctx) if "{" in summary else summary
        return ctx

    def line(self, a: AlertRecord, locale: str) -> str:
        """One alert as text."""
        return fill(self.lines.get(locale, self.lines["zh"]), self.context(a, locale))

    def render(self, kind: str, firing: list[AlertRecord], resolved: list[AlertRecord], locale: str,
               step: int | None = None) -> Rendered:
        """A notification about alerts (``kind``: firing, resolved, repeat, escalation, overdue, digest)."""
        titles = self.titles.get(locale, self.titles["zh"])
        head = firing[0] if firing else (resolved[0] if resolved else None)
        n = len(firing) + len(resolved)
        title = titles.get(kind, kind)
        if head is not None:
            ctx = self.context(head, locale)
            title = fill(title, ctx)
            if kind != "digest":
                title = f"{ctx['sev']} {title}: {ctx['summary']} - {head.device_id}"
            if n > 1:
                title += f" (+{n - 1})" if locale == "en" else f" 等 {n} 条"
        if step is not None:
            title += STEP.get(locale, STEP["zh"]).format(n=step)
        parts = [self.line(a, locale) for a in firing[:20]]
        if resolved:
            parts.append(titles["resolved"] + ":")
            parts.extend(self.line(a, locale) for a in resolved[:20])
        if n > 40:
            parts.append(f"... ({n})")
        attach = next((a.snapshot_url for a in firing if a.snapshot_url), None)
        return Rendered(title, "\n\n".join(parts), attach)


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
