"""Work-order figures the centre reports: response, arrival and closure times, on-time and closure rates,
satisfaction, overall and by grid, unit, category and person (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alerting.workorders.model import MILESTONES, WorkOrder

DIMENSIONS = ("grid", "unit", "category", "person")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class _Acc:
    def __init__(self) -> None:
        self.total = self.closed = self.returned = self.reassigned = self.flagged = self.reopened = 0
        self.response: list[float] = []
        self.arrival: list[float] = []
        self.closure: list[float] = []
        self.judged = dict.fromkeys(MILESTONES, 0)
        self.on_time = dict.fromkeys(MILESTONES, 0)
        self.surveyed = self.satisfied = 0

    def add(self, o: WorkOrder, now: float) -> None:
        self.total += 1
        ft = o.first_times
        self.closed += o.stage == "closed"
        self.returned += o.returns > 0
        self.reassigned += o.reassigns > 0
        self.flagged += o.arrive_flagged
        self.reopened += o.reopens > 0
        start = ft.get("dispatched")
        if start is not None and "accepted" in ft:
            self.response.append(ft["accepted"] - start)
        if start is not None and "on_site" in ft:
            self.arrival.append(ft["on_site"] - start)
        if "closed" in ft:
            self.closure.append(ft["closed"] - o.created_at)
        for m in MILESTONES:
            if m in o.late:
                self.judged[m] += 1
            elif m in ft:
                self.judged[m] += 1
                self.on_time[m] += 1
        if o.satisfaction is not None and o.satisfaction != "unreachable":
            self.surveyed += 1
            self.satisfied += o.satisfaction in ("satisfied", "basically_satisfied")

    def out(self) -> dict[str, Any]:
        return {
            "total": self.total, "closed": self.closed,
            "closure_rate": self.closed / self.total if self.total else None,
            "mean_response_s": _mean(self.response), "mean_arrival_s": _mean(self.arrival),
            "mean_closure_s": _mean(self.closure),
            "on_time_rate": {m: (self.on_time[m] / self.judged[m] if self.judged[m] else None) for m in MILESTONES},
            "on_time_judged": dict(self.judged),
            "returned": self.returned, "reassigned": self.reassigned, "arrive_flagged": self.flagged,
            "reopened": self.reopened,
            "satisfaction_rate": self.satisfied / self.surveyed if self.surveyed else None,
            "surveyed": self.surveyed,
        }


def order_figures(orders: Iterable[WorkOrder], now: float) -> dict[str, Any]:
    """Figures over all orders and by grid, unit, category and person (the staff member who accepted).

    Response = first acceptance - first dispatch; arrival = first on-site - first dispatch; closure =
    closed - case opened. A milestone's on-time rate counts orders that reached it or missed its deadline;
    a milestone missed once stays late even when reached after a re-dispatch.
    """
    total = _Acc()
    by: dict[str, dict[str, _Acc]] = {d: {} for d in DIMENSIONS}
    stages: dict[str, int] = {}
    for o in orders:
        total.add(o, now)
        stages[o.stage] = stages.get(o.stage, 0) + 1
        keys = {"grid": o.grid or "-", "unit": o.unit or "-", "category": o.category or "-",
                "person": o.actors.get("accepted") or o.assignee or "-"}
        for d, k in keys.items():
            by[d].setdefault(k, _Acc()).add(o, now)
    return {**total.out(), "by_stage": stages,
            "by": {d: {k: a.out() for k, a in sorted(accs.items())} for d, accs in by.items()}}
