"""Logins, sessions, CSRF, throttling and permissions."""

from __future__ import annotations

import pytest

from alerting.access import digest
from alerting.config import User
from console.auth import LoginThrottle, SessionBook, accounts_from, allowed, check_login, csrf_ok

USERS = [User(name="op", role="operator", token="op-token", unit="市场监管局"),
         User(name="lead", role="supervisor", token_env="LEAD_TOKEN"),
         User(name="ghost", role="admin", token_env="UNSET_TOKEN")]


def test_accounts_take_tokens_inline_or_from_the_environment() -> None:
    accts = accounts_from(USERS, env={"LEAD_TOKEN": "lead-secret"})
    assert sorted(accts) == ["lead", "op"]
    # Only the digest is kept (a memory dump or repr does not reveal the token).
    assert accts["lead"].token_digest == digest("lead-secret") and accts["op"].unit == "市场监管局"
    assert "lead-secret" not in repr(accts["lead"]) and not hasattr(accts["lead"], "token")


def test_check_login() -> None:
    accts = accounts_from(USERS, env={})
    assert check_login(accts, "op", "op-token") is accts["op"]
    assert check_login(accts, "op", "wrong") is None
    assert check_login(accts, "nobody", "op-token") is None
    assert check_login(accts, "op", "") is None


@pytest.mark.parametrize("role,permission,ok", [
    ("operator", "view", True), ("operator", "alert.handle", True), ("operator", "silence.create", True),
    ("operator", "roster.edit", False), ("operator", "audit.view", False),
    ("supervisor", "roster.edit", True), ("supervisor", "audit.view", True), ("admin", "roster.edit", True),
    ("guest", "view", False), ("admin", "launch.missiles", False),
])
def test_permissions(role: str, permission: str, ok: bool) -> None:
    assert allowed(role, permission) is ok


def test_sessions_expire_and_are_evicted() -> None:
    accts = accounts_from(USERS, env={})
    book = SessionBook(ttl_s=100, max_sessions=2)
    a = book.open(accts["op"], 0.0)
    assert book.get(a.id, 50.0) is a and a.last_seen == 50.0
    assert book.get(a.id, 100.0) is None and a.id not in book.sessions
    b, c = book.open(accts["op"], 200.0), book.open(accts["op"], 201.0)
    d = book.open(accts["op"], 202.0)
    assert b.id not in book.sessions and {c.id, d.id} == set(book.sessions)
    assert book.close(c.id) is c and book.get(c.id, 203.0) is None
    assert book.get(None, 0.0) is None and book.get("nope", 0.0) is None
    assert len({a.csrf, b.csrf, c.csrf, d.csrf}) == 4


def test_csrf() -> None:
    s = SessionBook(10).open(accounts_from(USERS, env={})["op"], 0.0)
    assert csrf_ok(s, s.csrf)
    assert not csrf_ok(s, None) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf + "x")


def test_login_throttle_window() -> None:
    th = LoginThrottle(max_failures=3, window_s=60, max_global=100)
    for t in (0.0, 1.0, 2.0):
        assert not th.blocked("op", "10.0.0.1", t)
        th.failed("op", "10.0.0.1", t)
    assert th.blocked("op", "10.0.0.1", 3.0) == "user"
    # another address, or another user behind the same address (one proxy), is not locked out
    assert not th.blocked("op", "10.0.0.2", 3.0) and not th.blocked("lead", "10.0.0.1", 3.0)
    assert not th.blocked("op", "10.0.0.1", 61.5)  # the first failure left the window
    th.failed("op", "10.0.0.1", 62.0)
    th.succeeded("lead", "10.0.0.1")  # a success of another user from that address clears nothing
    assert th.failures[("op", "10.0.0.1")]
    th.succeeded("op", "10.0.0.1")
    assert not th.blocked("op", "10.0.0.1", 62.0)


def test_global_limit_stops_a_guess_spread_over_addresses() -> None:
    th = LoginThrottle(max_failures=3, window_s=60, max_global=10)
    for i in range(10):
        th.failed("op", f"10.0.1.{i}", 1.0)
    assert th.blocked("lead", "10.9.9.9", 2.0) == "global"
    assert not th.blocked("lead", "10.9.9.9", 61.5)
