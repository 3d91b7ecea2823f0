"""HJ 212 data packets -> contract telemetry (pure): one ``Telemetry`` per ``DataTime``."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from broker.contracts import METRIC_NAME_PATTERN, MetricValue, Telemetry
from edge.hj212.codec import VERSION_2005, Hj212Error, Hj212Packet, Hj212Reject
from edge.hj212.codes import legacy_to_current

CHINA_TZ: Final = ZoneInfo("Asia/Shanghai")

_NUMERIC_SUFFIXES: Final = frozenset(
    {"Rtd", "Min", "Avg", "Max", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax", "Cou", "RT", "Data", "DayData", "NightData"}
)
_INT_SUFFIXES: Final = frozenset({"RS"})
_TIME_SUFFIXES: Final = frozenset({"SampleTime"})
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?")
_METRIC_RE: Final = re.compile(METRIC_NAME_PATTERN)
_DATETIME_RE: Final = re.compile(r"\d{14}")


def parse_local_time(text: str, tz: tzinfo = CHINA_TZ) -> datetime:
    """``YYYYMMDDhhmmss`` in the logger's local time -> aware UTC datetime.

    Raises:
        Hj212Error: ``bad_value`` when the text is not a valid time.
    """
    if not _DATETIME_RE.fullmatch(text):
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"time {text[:20]!r} is not YYYYMMDDhhmmss")
    try:
        local = datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                         int(text[12:14]), tzinfo=tz)
    except ValueError:
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"time {text!r} is not a valid date") from None
    return local.astimezone(UTC)


def _number(name: str, text: str) -> float:
    # float() also takes "nan", "inf" and "1_0"; none of them is a measurement.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value - value != 0 or "_" in text:
        raise Hj212Error(Hj212Reject.BAD_VALUE, f"{name[:40]}={text[:20]!r} is not a finite number")
    return value


_FLAG, _FLOAT, _INT, _TIME, _OTHER, _DROP = range(6)
_FieldPlan = tuple[int, str]
_PLAN_CACHE_LIMIT: Final = 4096


def _plan(name: str, legacy: bool) -> _FieldPlan:
    """How a CP field name maps: (kind, metric name or quality code)."""
    code, dash, suffix = name.rpartition("-")
    if not dash:
        code, suffix = name, ""
    if legacy:
        code = legacy_to_current(code) or code
    if suffix == "Flag":
        return _FLAG, code
    metric = f"{code}.{suffix}" if suffix else code
    if not _METRIC_RE.match(metric):
        return _DROP, metric
    if suffix in _NUMERIC_SUFFIXES:
        return _FLOAT, metric
    if suffix in _INT_SUFFIXES:
        return _INT, metric
    if suffix in _TIME_SUFFIXES:
        return _TIME, metric
    return _OTHER, metric


# Loggers send the same few dozen field names over and over; plan each name once.
_plans: dict[tuple[str, bool], _FieldPlan] = {}


@dataclass(frozen=True, slots=True)
class TelemetryMapping:
    """The telemetry of one packet, and the CP fields that could not become metric names."""

    messages: tuple[Telemetry, ...]
    dropped_fields: int = 0


def packet_to_telemetry(packet: Hj212Packet, tz: tzinfo = CHINA_TZ, site: str | None = None) -> TelemetryMapping:
    """Map a data packet to contract telemetry: one message per ``DataTime``.

    ``code-Suffix`` becomes the metric ``code.Suffix`` (numbers as float, ``-RS`` as int,
    ``-SampleTime`` as an RFC 3339 UTC string, other text as str); ``code-Flag`` goes to
    ``quality[code]``; ``hj212.cn``, ``hj212.st`` and ``hj212.qn`` say which upload it was.
    HJ/T 212-2005 codes are translated to 2017 codes (``02-Rtd`` -> ``a21026.Rtd``).

    Raises:
        Hj212Error: no DataTime, or a value that does not parse (the packet is not published).
    """
    legacy = packet.version == VERSION_2005
    groups: list[tuple[datetime, dict[str, MetricValue], dict[str, str]]] = []
    metrics: dict[str, MetricValue] = {}
    quality: dict[str, str] = {}
    dropped = 0
    plans = _plans
    for item in packet.cp:
        for name, value in item:
            if name == "DataTime":
                metrics, quality = {}, {}
                groups.append((parse_local_time(value, tz), metrics, quality))
                continue
            if not groups:
                raise Hj212Error(Hj212Reject.MISSING_FIELD, f"{name[:40]} comes before any DataTime")
            plan = plans.get((name, legacy))
            if plan is None:
                plan = _plan(name, legacy)
                if len(plans) < _PLAN_CACHE_LIMIT:
                    plans[(name, legacy)] = plan
            kind, key = plan
            if kind == _FLOAT:
                metrics[key] = _number(name, value)
            elif kind == _FLAG:
                quality[key] = value[:4]
            elif kind == _INT:
                metrics[key] = int(_number(name, value))
            elif kind == _TIME:
                metrics[key] = parse_local_time(value, tz).isoformat().replace("+00:00", "Z")
            elif kind == _OTHER:
                metrics[key] = value
                with contextlib.suppress(Hj212Error):
                    if _NUMBER_RE.fullmatch(value):
                        metrics[key] = _number(name, value)
            else:
                dropped += 1
    if not groups:
        raise Hj212Error(Hj212Reject.MISSING_FIELD, f"CN {packet.cn} without DataTime")
    messages = []
    for ts, group_metrics, group_quality in groups:
        group_metrics["hj212.cn"] = packet.cn
        group_metrics["hj212.st"] = packet.st
        if packet.qn is not None:
            group_metrics["hj212.qn"] = packet.qn
        messages.append(Telemetry(ts=ts, metrics=group_metrics, quality=group_quality or None, site=site))
    return TelemetryMapping(tuple(messages), dropped)
