"""API tokens and guessing limits shared by the alerting API and the console (pure; callers pass the time).

Tokens are bearer secrets, so they must be long and random: ``token_problem`` refuses short or
low-entropy ones when the configuration is loaded. Only SHA-256 digests are kept in memory and
compared (constant time, against every known digest). ``GuessLimiter`` counts failed logins and
failed bearer tokens per (user, client address) and over all clients, so one proxy's users are not
locked out by one of them and a distributed guess still hits a ceiling.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from alerting.errors import AlertingError

MIN_TOKEN_CHARS = 24
MIN_TOKEN_BITS = 85.0
"""Estimated entropy (length times the Shannon entropy of its characters). ``secrets.token_urlsafe(32)``
scores ~200 and ``secrets.token_hex(16)`` ~120 (under 88 about once in a million draws)."""


def token_bits(token: str) -> float:
    """An estimate of a token's entropy in bits (its length times the Shannon entropy per character)."""
    if not token:
        return 0.0
    counts = Counter(token)
    n = len(token)
    per_char = -sum(c / n * math.log2(c / n) for c in counts.values())
    return per_char * n


def token_problem(token: str) -> str | None:
    """Why a token is too weak to be a bearer secret, or None when it is acceptable."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"too short ({len(token)} characters; at least {MIN_TOKEN_CHARS}, e.g. `openssl rand -base64 32`)"
    if token != token.strip() or any(ord(c) < 33 or ord(c) > 126 for c in token):
        return "must be printable ASCII without spaces"
    if token_bits(token) < MIN_TOKEN_BITS:
        return f"too predictable (about {token_bits(token):.0f} bits; at least {MIN_TOKEN_BITS:.0f}, use random bytes)"
    return None


def digest(token: str) -> bytes:
    """The SHA-256 digest a token is kept and compared as."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenError(AlertingError, ValueError):
    """A configured token is missing or too weak; the message names the config key."""


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a token belongs to."""

    name: str
    role: str
    unit: str


class TokenBook:
    """Token digests of the configured users; lookups compare every digest in constant time."""

    def __init__(self, entries: Iterable[tuple[bytes, TokenOwner]]) -> None:
        self.entries: list[tuple[bytes, TokenOwner]] = list(entries)
        self.by_name = {owner.name: d for d, owner in self.entries}

    @classmethod
    def from_users(cls, users: Iterable[Any], env: dict[str, str] | None = None,
                   source: str = "alerting", strict: bool = True) -> TokenBook:
        """Digests of the users' tokens (inline or from the environment).

        ``strict`` refuses weak tokens; configuration loading (``alerting.config.check_tokens``) is
        strict, so a service built from a loaded config only ever holds strong ones.

        Raises:
            TokenError: a token is weak, naming ``users[i].token`` or the environment variable.
        """
        env = dict(os.environ) if env is None else env
        out: list[tuple[bytes, TokenOwner]] = []
        for i, u in enumerate(users):
            if u.token is not None:
                token, key = u.token, f"{source}.users[{i}].token"
            else:
                token, key = env.get(u.token_env or ""), f"{source}.users[{i}].token_env ({u.token_env})"
            if not token:
                continue  # an unset variable disables that user (as before); the start-up log says so
            problem = token_problem(token) if strict else None
            if problem is not None:
                raise TokenError(f"{key}: token {problem}")
            out.append((digest(token), TokenOwner(u.name, u.role, u.unit)))
        return cls(out)

    def owner(self, token: str) -> TokenOwner | None:
        """The owner of a presented token, or None."""
        if not token or len(token) > 4096:
            return None
        d = digest(token)
        found = None
        for known, owner in self.entries:  # no early exit: the time does not depend on which entry matched
            if hmac.compare_digest(known, d):
                found = owner
        return found

    def check(self, name: str, token: str) -> TokenOwner | None:
        """The owner when ``token`` is ``name``'s token (unknown names cost the same), else None."""
        known = self.by_name.get(name, b"\0" * 32)
        ok = hmac.compare_digest(known, digest(token[:4096]))
        if not ok or name not in self.by_name:
            return None
        return next(o for d, o in self.entries if o.name == name)


@dataclass(slots=True)
class GuessLimiter:
    """Failed authentications per (user, client) and over every client, in a sliding window.

    A key is locked after ``max_failures`` within ``window_s``; every attempt is refused while the
    failures of all clients together reach ``max_global`` in the window (the ceiling on a guess
    spread over many addresses). A success clears only its own (user, client) key.
    """

    max_failures: int = 10
    window_s: float = 300.0
    max_global: int = 200
    max_keys: int = 50_000
    failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    everyone: deque[float] = field(default_factory=deque)
    refused: int = 0

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] > self.window_s:
            q.popleft()

    def blocked(self, user: str, client: str, now: float) -> str | None:
        """``"user"`` or ``"global"`` when this attempt must be refused before checking it, else None."""
        self._trim(self.everyone, now)
        if len(self.everyone) >= self.max_global:
            self.refused += 1
            return "global"
        q = self.failures.get((user, client))
        if q is not None:
            self._trim(q, now)
            if not q:
                del self.failures[(user, client)]
            elif len(q) >= self.max_failures:
                self.refused += 1
                return "user"
        return None

    def failed(self, user: str, client: str, now: float) -> None:
        """Count a failed attempt."""
        key = (user, client)
        if key not in self.failures and len(self.failures) >= self.max_keys:
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(key, deque()).append(now)
        self.everyone.append(now)
        if len(self.everyone) > self.max_global * 2:
            self.everyone.popleft()

    def succeeded(self, user: str, client: str) -> None:
        """Forget the failures of this (user, client) only."""
        self.failures.pop((user, client), None)
