"""Notification texts from templates, Chinese by default, English available.

Templates are ``str.format`` strings over a fixed set of fields (``LINE_FIELDS``) so a deployment
can override them in config (``templates: {zh: {line: ..., firing: ...}}``) without code.
Times are shown in the control room's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
LINE_FIELDS = ("sev", "summary", "device_id", "site", "unit", "starts", "ack_by", "link")
"""Fields a ``line`` template may use."""
STEP = {"zh": "（第 {n} 级升级）", "en": " (escalation step {n})"}


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

    def line(self, a: AlertRecord, locale: str) -> str:
        """One alert as text."""
        summary = (a.summary_en or a.summary or a.rule) if locale == "en" else (a.summary or a.rule)
        return self.lines.get(locale, self.lines["zh"]).format(
            sev=f"[{SEVERITY_NAMES.get(locale, SEVERITY_NAMES['zh'])[a.severity.value]}]", summary=summary,
            device_id=a.device_id, site=a.site or "-", unit=a.assigned_unit or a.unit or "-",
            starts=self._t(a.starts_at), ack_by=self._t(a.ack_by), link=f"{self.console_url}/alerts/{a.id}")

    def render(self, kind: str, firing: list[AlertRecord], resolved: list[AlertRecord], locale: str,
               step: int | None = None) -> Rendered:
        """A notification about alerts (``kind``: firing, resolved, repeat, escalation, overdue, digest)."""
        titles = self.titles.get(locale, self.titles["zh"])
        head = firing[0] if firing else (resolved[0] if resolved else None)
        what = "" if head is None else ((head.summary_en or head.summary) if locale == "en" else head.summary)
        n = len(firing) + len(resolved)
        title = titles.get(kind, kind)
        if kind != "digest" and head is not None:
            sev = SEVERITY_NAMES.get(locale, SEVERITY_NAMES["zh"])[head.severity.value]
            title = f"[{sev}] {title}: {what or head.rule} - {head.device_id}"
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
