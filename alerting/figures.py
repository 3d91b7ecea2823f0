"""The handling figures the command centre reports for a period (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from alerting.lifecycle import AlertRecord


def handling_figures(alerts: Iterable[AlertRecord], now: float) -> dict[str, Any]:
    """Counts by industry / site / unit / grid / severity / kind, MTTA, MTTR, closure rate and on-time rate.

    Closure rate: resolved / all. On-time rate: among alerts with deadlines whose outcome is known
    (closed, or open past a deadline), those acknowledged by ack-by and resolved by resolve-by.
    """
    total = closed = on_time = judged = 0
    tta: list[float] = []
    ttr: list[float] = []
    by: dict[str, Counter[str]] = {k: Counter() for k in ("industry", "site", "unit", "grid", "severity", "kind",
                                                          "status")}
    for a in alerts:
        total += 1
        by["industry"][a.industry or "-"] += 1
        by["site"][a.site or "-"] += 1
        by["unit"][a.assigned_unit or a.unit or "-"] += 1
        by["grid"][a.labels.get("grid") or "-"] += 1  # the work-order grid the case was placed in
        by["severity"][a.severity.value] += 1
        by["kind"][a.kind.value] += 1
        by["status"][a.status.value] += 1
        if a.acknowledged_at is not None:
            tta.append(a.acknowledged_at - a.starts_at)
        if a.ends_at is not None:
            closed += 1
            ttr.append(a.ends_at - a.starts_at)
        ack_ok = a.ack_by is None or (a.acknowledged_at is not None and a.acknowledged_at <= a.ack_by) or (
            a.acknowledged_at is None and a.ends_at is not None and a.ends_at <= a.ack_by)
        res_ok = a.resolve_by is None or (a.ends_at is not None and a.ends_at <= a.resolve_by)
        finished = a.ends_at is not None or (a.ack_by is not None and now > a.ack_by) or (
            a.resolve_by is not None and now > a.resolve_by)
        if finished:
            judged += 1
            if ack_ok and res_ok:
                on_time += 1
    return {
        "total": total,
        "closed": closed,
        "closure_rate": closed / total if total else None,
        "on_time_rate": on_time / judged if judged else None,
        "mtta_s": sum(tta) / len(tta) if tta else None,
        "mttr_s": sum(ttr) / len(ttr) if ttr else None,
        "by": {k: dict(v) for k, v in by.items()},
    }
