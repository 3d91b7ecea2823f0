"""Which handlers an MQTT topic goes to, for clients with many subscriptions (one filter per device)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import paho.mqtt.client as paho

H = TypeVar("H", bound=Hashable)


class RouteIndex(Generic[H]):
    """Which handlers a topic goes to, without testing every filter (a partition has one per device).

    Filters without wildcards are a dictionary lookup, filters whose only wildcard is a last ``+`` level
    (``vigil/v1/elevator/el-1/+``) a lookup of the topic minus its last level; only the rest are matched
    one by one. Handlers keep the order of the filters' subscription.
    """

    def __init__(self, handlers: dict[str, list[H]]) -> None:
        self.exact: dict[str, list[tuple[int, H]]] = {}
        self.last_plus: dict[str, list[tuple[int, H]]] = {}
        self.general: list[tuple[str, list[tuple[int, H]]]] = []
        for order, (topic_filter, hs) in enumerate(handlers.items()):
            ranked = [(order, h) for h in hs]
            head, sep, last = topic_filter.rpartition("/")
            if "+" not in topic_filter and "#" not in topic_filter:
                self.exact.setdefault(topic_filter, []).extend(ranked)
            elif sep and last == "+" and "+" not in head and "#" not in head:
                self.last_plus.setdefault(head, []).extend(ranked)
            else:
                self.general.append((topic_filter, ranked))

    def match(self, topic: str) -> tuple[H, ...]:
        """The handlers of every filter that matches ``topic``, each once."""
        found: list[tuple[int, H]] = []
        exact = self.exact.get(topic)
        if exact:
            found.extend(exact)
        cut = topic.rfind("/")
        if cut >= 0 and self.last_plus:
            plus = self.last_plus.get(topic[:cut])
            if plus:
                found.extend(plus)
        for topic_filter, ranked in self.general:
            if paho.topic_matches_sub(topic_filter, topic):
                found.extend(ranked)
        if len(found) > 1:
            found.sort(key=lambda item: item[0])
        out: list[H] = []
        for _, handler in found:
            if handler not in out:
                out.append(handler)
        return tuple(out)
