"""The routing tree: which route (receivers, escalation, grouping timings) an alert follows, and the
label matchers (``label=value``, ``!=``, ``=~`` regex, ``!~``) that routes, silences and inhibition share.

Alertmanager's semantics: depth-first; the deepest matching child wins; siblings after a match
are tried only when the matching route says ``continue``; a node without a matching child
routes the alert itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from alerting.config import Route
from alerting.errors import AlertingError

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class MatcherError(AlertingError, ValueError):
    """A matcher string could not be parsed."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """One condition on one label; a missing label matches as the empty string."""

    name: str
    op: Op
    value: str
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse ``name=value`` / ``name!=value`` / ``name=~re`` / ``name!~re`` (quotes optional).

        Raises:
            MatcherError: the text is not a matcher or the regex is invalid.
        """
        m = _MATCHER_RE.match(text)
        if m is None:
            raise MatcherError(f"not a matcher: {text[:100]!r} (want label=value, !=, =~ or !~)")
        name, op, value = m.group(1), m.group(2), m.group(3)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        pattern = None
        if op in ("=~", "!~"):
            try:
                pattern = re.compile(f"(?:{value})\\Z")
            except re.error as exc:
                raise MatcherError(f"bad regex in {text[:100]!r}: {exc}") from None
        return cls(name, op, value, pattern)  # type: ignore[arg-type]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the labels satisfy this matcher."""
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self.pattern is not None
        hit = self.pattern.match(got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matchers(texts: list[str]) -> tuple[Matcher, ...]:
    """Parse a list of matcher strings. Raises ``MatcherError``."""
    return tuple(Matcher.parse(t) for t in texts)


def match_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (an empty list matches everything)."""
    return all(m.matches(labels) for m in matchers)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route with every inherited setting resolved."""

    id: str
    receivers: tuple[str, ...]
    escalation: str | None
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    send_resolved: bool


@dataclass(frozen=True, slots=True)
class _Node:
    plan: RoutePlan
    matchers: tuple[Matcher, ...]
    cont: bool
    children: tuple[_Node, ...]


class Router:
    """Matches alert labels against the routing tree."""

    def __init__(self, root: Route) -> None:
        base = RoutePlan("root", (), None, ("rule",), 0.0, 30.0, 4 * 3600.0, True)
        self.plans: dict[str, RoutePlan] = {}
        self._used: set[str] = set()
        self._root = self._build(root, base, root.name or "root")
        # Only the labels some matcher looks at decide the route, so they alone key the cache.
        self._used_sorted = tuple(sorted(self._used))
        self._cache: dict[tuple[tuple[str, str], ...], tuple[RoutePlan, ...]] = {}

    def _build(self, route: Route, parent: RoutePlan, rid: str) -> _Node:
        plan = RoutePlan(
            id=rid,
            receivers=tuple(route.receivers) if route.receivers else parent.receivers,
            escalation=route.escalation if route.escalation is not None else parent.escalation,
            group_by=tuple(route.group_by) if route.group_by is not None else parent.group_by,
            group_wait_s=route.group_wait_s if route.group_wait_s is not None else parent.group_wait_s,
            group_interval_s=route.group_interval_s if route.group_interval_s is not None else parent.group_interval_s,
            repeat_interval_s=(route.repeat_interval_s if route.repeat_interval_s is not None
                               else parent.repeat_interval_s),
            send_resolved=route.send_resolved if route.send_resolved is not None else parent.send_resolved,
        )
        self.plans[rid] = plan
        children = tuple(
            self._build(child, plan, f"{rid}/{child.name or i}") for i, child in enumerate(route.routes)
        )
        matchers = parse_matchers(route.matchers)
        self._used.update(m.name for m in matchers)
        return _Node(plan, matchers, route.continue_, children)

    def routes_for(self, labels: Mapping[str, str]) -> tuple[RoutePlan, ...]:
        """The routes an alert with these labels follows (at least the root)."""
        key = tuple((k, labels.get(k, "")) for k in self._used_sorted)
        hit = self._cache.get(key)
        if hit is None:
            hit = tuple(self._walk(self._root, labels)) or (self._root.plan,)
            if len(self._cache) > 50000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _walk(self, node: _Node, labels: Mapping[str, str]) -> list[RoutePlan]:
        if not match_all(node.matchers, labels):
            return []
        found: list[RoutePlan] = []
        for child in node.children:
            sub = self._walk(child, labels)
            if sub:
                found.extend(sub)
                if not child.cont:
                    break
        return found or [node.plan]
