"""Helpers for the rules unit tests: build engines from YAML text and messages at offsets from T0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from broker.contracts import Channel, DeviceEvent, DeviceMessage, DeviceStatus, Kind, Telemetry, Transition
from broker.registry import DeviceRegistry
from rules.engine import RuleEngine
from rules.loader import load_rule_text

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
"""14:00 in Asia/Shanghai, a Thursday."""
BASE = T0.timestamp()


def make_engine(text: str, registry: DeviceRegistry | None = None) -> RuleEngine:
    """An engine running the rules in ``text`` (which must be valid)."""
    rules, errors = load_rule_text(text, "test.yaml")
    assert errors == [], errors
    return RuleEngine(rules, registry)


def tel(device: str, at: float, kind: str = "sensor", quality: dict[str, str] | None = None,
        **metrics: Any) -> DeviceMessage:
    """A telemetry message ``at`` seconds after T0, received at the same instant."""
    payload = Telemetry(ts=T0 + timedelta(seconds=at), metrics=metrics, quality=quality)
    return DeviceMessage(Kind(kind), device, Channel.TELEMETRY, payload, BASE + at)


def event(device: str, at: float, type_: str, kind: str = "sensor", **fields: Any) -> DeviceMessage:
    """A device event ``at`` seconds after T0."""
    payload = DeviceEvent(ts=T0 + timedelta(seconds=at), type=type_, **fields)
    return DeviceMessage(Kind(kind), device, Channel.EVENT, payload, BASE + at)


def status(device: str, at: float, online: bool, kind: str = "sensor") -> DeviceMessage:
    """A status message ``at`` seconds after T0."""
    return DeviceMessage(Kind(kind), device, Channel.STATUS,
                         DeviceStatus(ts=T0 + timedelta(seconds=at), online=online), BASE + at)


def feed(engine: RuleEngine, *messages: DeviceMessage) -> list[tuple[float, str, str]]:
    """Process messages one by one; (offset, status, rule) of every transition."""
    out: list[tuple[float, str, str]] = []
    for m in messages:
        out.extend(summary(engine.process([m], m.received_at)))
    return out


def summary(transitions: list[Transition]) -> list[tuple[float, str, str]]:
    """(offset from T0, status, rule) of transitions."""
    return [(t.ts.timestamp() - BASE, t.status, t.rule) for t in transitions]


def one_rule(condition: str, extra: str = "") -> str:
    """A rule file with one sensor rule ``r`` (condition given as YAML text)."""
    return f"""\
rules:
  - name: r
    kind: sensor
    severity: warning
    condition: {condition}
    summary: "r {{device}}"
{extra}"""
