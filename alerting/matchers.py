"""Label matchers (``label=value``, ``!=``, ``=~`` regex, ``!~``) shared by routes, silences and inhibition."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class MatcherError(ValueError):
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
