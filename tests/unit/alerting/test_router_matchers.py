"""Label matchers and the routing tree."""

from __future__ import annotations

import pytest

from alerting.config import Route
from alerting.router import Matcher, MatcherError, Router


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("site=a", {"site": "a"}, True),
    ("site=a", {"site": "b"}, False),
    ("site!=a", {"site": "b"}, True),
    ("site!=a", {}, True),
    ("site=", {}, True),
    ("kind=~elev.*", {"kind": "elevator"}, True),
    ("kind=~elev", {"kind": "elevator"}, False),
    ("kind!~cam.*|veh.*", {"kind": "elevator"}, True),
    ("kind!~cam.*|veh.*", {"kind": "camera"}, False),
    ('site="tower a"', {"site": "tower a"}, True),
])
def test_matchers(text: str, labels: dict[str, str], expected: bool) -> None:
    assert Matcher.parse(text).matches(labels) is expected


@pytest.mark.parametrize("bad", ["site", "=a", "site=~(", ""])
def test_bad_matchers(bad: str) -> None:
    with pytest.raises(MatcherError):
        Matcher.parse(bad)


TREE = Route(name="root", receivers=["room"], group_by=["rule"], group_wait_s=5, routes=[
    Route(name="crit", matchers=["severity=critical"], escalation="135", group_wait_s=0, routes=[
        Route(name="elev", matchers=["kind=elevator"], receivers=["elev-team"]),
    ]),
    Route(name="emission", matchers=["kind=emission"], receivers=["env-bureau"], continue_=True),
    Route(name="audit", matchers=["kind=~emission|vehicle"], receivers=["audit"]),
])


@pytest.mark.parametrize(("labels", "routes"), [
    ({"severity": "critical", "kind": "elevator"}, ["root/crit/elev"]),
    ({"severity": "critical", "kind": "camera"}, ["root/crit"]),
    ({"severity": "warning", "kind": "emission"}, ["root/emission", "root/audit"]),
    ({"severity": "warning", "kind": "vehicle"}, ["root/audit"]),
    ({"severity": "warning", "kind": "camera"}, ["root"]),
])
def test_routing(labels: dict[str, str], routes: list[str]) -> None:
    assert [p.id for p in Router(TREE).routes_for(labels)] == routes


def test_inheritance() -> None:
    r = Router(TREE)
    elev = r.routes_for({"severity": "critical", "kind": "elevator"})[0]
    assert elev.receivers == ("elev-team",) and elev.escalation == "135" and elev.group_wait_s == 0
    assert elev.group_by == ("rule",)
    crit = r.plans["root/crit"]
    assert crit.receivers == ("room",)
    assert r.plans["root"].group_wait_s == 5
