"""The time model of period data: HJ 212 minute (2051), hourly (2061) and daily (2031) records.

A period record's ``ts`` is the *start* of its period (HJ 212's DataTime) and it arrives at or
after the period's end, while real-time (2011) data keeps flowing. The engine therefore keeps a
clock per period command and judges a record when it arrives (docs/rules.md, "Time model for
period data").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

PERIOD_METRIC: Final = "hj212.cn"
"""The metric that says which HJ 212 upload a telemetry message is (a string such as "2061")."""
PERIOD_SECONDS: Final[dict[str, float]] = {"2051": 60.0, "2061": 3600.0, "2031": 86400.0}
"""Period records by HJ 212 command and their nominal length. A 2051 record's interval is the
logger's setting (1 or 10 minutes...); the length only sets its decision time when the device
sends no real-time data, so the shortest usual interval is used."""


def period_of(metrics: Mapping[str, Any]) -> str | None:
    """The HJ 212 command of a period record (``"2061"`` ...), or None for other telemetry."""
    cn = metrics.get(PERIOD_METRIC)
    if cn is None:
        return None
    if cn.__class__ is not str:
        # Tolerate a producer that sends the command as a number (2061 or 2061.0).
        if isinstance(cn, bool) or not isinstance(cn, int | float) or cn != int(cn):
            return None
        cn = str(int(cn))
    return cn if cn in PERIOD_SECONDS else None
