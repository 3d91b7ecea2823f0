"""Who may use the console: logins against the alerting users, sessions, CSRF tokens, permissions.

Pure: every method takes the current time. Operators log in with their alerting user name and
API token (the console never holds other secrets, and keeps only the tokens' SHA-256 digests). A
session is an unguessable id in an HttpOnly, SameSite=Strict cookie plus a per-session CSRF token
that every state-changing request must echo in the ``X-CSRF-Token`` header. Failed logins and
failed bearer tokens are limited per (user, address) and globally (``alerting.access.GuessLimiter``).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from alerting.surface import GuessLimiter, TokenBook, User, digest

ROLE_RANK: dict[str, int] = {"grid_staff": -1, "operator": 0, "supervisor": 1, "admin": 2}

PERMISSIONS: dict[str, str] = {
    "view": "operator",
    "alert.handle": "operator",
    "silence.create": "operator",
    "silence.expire": "operator",
    "roster.edit": "supervisor",
    "maintenance.edit": "supervisor",
    "audit.view": "supervisor",
}
"""Lowest role allowed each action; the alerting desk checks unit and ownership rules on top."""


def allowed(role: str, permission: str) -> bool:
    """Whether a role may perform an action (unknown roles and permissions are refused)."""
    need = PERMISSIONS.get(permission)
    return need is not None and role in ROLE_RANK and ROLE_RANK[role] >= ROLE_RANK[need]


@dataclass(frozen=True, slots=True)
class Account:
    """A console user: name, role, unit and the digest of the token that serves as the password."""

    name: str
    role: str
    unit: str
    token_digest: bytes = field(repr=False)


def accounts_from(users: list[User], env: dict[str, str] | None = None) -> dict[str, Account]:
    """Accounts from the alerting users (tokens given inline or by environment variable; digests kept)."""
    book = TokenBook.from_users(users, env, strict=False)
    return {o.name: Account(o.name, o.role, o.unit, d) for d, o in book.entries}


def check_login(accounts: dict[str, Account], name: str, password: str) -> Account | None:
    """The account when the password's digest matches its token's (constant-time compare), else None."""
    acct = accounts.get(name)
    # Compare against something even for unknown names so timing does not reveal which names exist.
    expected = acct.token_digest if acct is not None else b"\0" * 32
    ok = hmac.compare_digest(expected, digest(password[:4096]))
    return acct if ok and acct is not None and password else None


def bearer_account(accounts: dict[str, Account], token: str) -> Account | None:
    """The account whose token this is (every digest compared in constant time), else None."""
    if not token or len(token) > 4096:
        return None
    d = digest(token)
    found = None
    for acct in accounts.values():
        if hmac.compare_digest(acct.token_digest, d):
            found = acct
    return found


@dataclass(slots=True)
class Session:
    """A logged-in browser."""

    id: str = field(repr=False)
    user: str
    role: str
    unit: str
    csrf: str = field(repr=False)
    created_at: float
    expires_at: float
    last_seen: float


class SessionBook:
    """Sessions by id with a fixed lifetime; the oldest are evicted beyond ``max_sessions``."""

    def __init__(self, ttl_s: float, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.sessions: dict[str, Session] = {}

    def open(self, acct: Account, now: float) -> Session:
        """Start a session for an account."""
        self.prune(now)
        while len(self.sessions) >= self.max_sessions:
            del self.sessions[next(iter(self.sessions))]
        s = Session(id=secrets.token_urlsafe(32), user=acct.name, role=acct.role, unit=acct.unit,
                    csrf=secrets.token_urlsafe(24), created_at=now, expires_at=now + self.ttl_s, last_seen=now)
        self.sessions[s.id] = s
        return s

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session with this id (expired ones are dropped)."""
        if not session_id:
            return None
        s = self.sessions.get(session_id)
        if s is None:
            return None
        if now >= s.expires_at:
            del self.sessions[session_id]
            return None
        s.last_seen = now
        return s

    def close(self, session_id: str) -> Session | None:
        """End a session (logout)."""
        return self.sessions.pop(session_id, None)

    def prune(self, now: float) -> int:
        """Drop expired sessions; returns how many."""
        dead = [k for k, s in self.sessions.items() if now >= s.expires_at]
        for k in dead:
            del self.sessions[k]
        return len(dead)


def csrf_ok(session: Session, header: str | None) -> bool:
    """Whether a request's ``X-CSRF-Token`` header matches the session's token."""
    return bool(header) and hmac.compare_digest(session.csrf.encode(), (header or "").encode())


LoginThrottle = GuessLimiter
"""Failed logins and bearer tokens per (user, address) and over all addresses."""
