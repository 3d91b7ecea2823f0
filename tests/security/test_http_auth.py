"""Issue 14 #4: guessing logins and bearer tokens on the console and the alerting API.

The attacks: bearer tokens were never throttled (guess at full speed); a success (with the attacker's own
account) cleared the address's failures (guess forever); the per-address lockout locked out every operator
behind the control room's proxy. Tokens were also accepted whatever their strength and kept in plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerting.access import MIN_TOKEN_CHARS, token_problem
from alerting.config import AlertingConfig, ApiConfig, User
from alerting.service import AlertingService
from broker.mqtt import MqttClient
from tests.support.console_stack import USERS, ConsoleStack, token_of
from vigil.config import ConfigError, parse_config

STRONG = "Jx8vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path / "stack", console_options={
            "login_failures": 3, "login_failures_global": 8}) as st:
        yield st


async def login(http: aiohttp.ClientSession, url: str, user: str, password: str) -> int:
    async with http.post(f"{url}/api/login", json={"username": user, "password": password}) as resp:
        return resp.status


async def bearer(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(f"{url}/api/session", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def test_console_bearer_guessing_is_throttled(stack: ConsoleStack) -> None:
    async with aiohttp.ClientSession() as http:
        assert await bearer(http, stack.url, token_of("op-wang")) == 200
        for i in range(3):
            assert await bearer(http, stack.url, f"guess-{i:04d}") == 401
        # the address guessed too often: even the right token is refused now
        assert await bearer(http, stack.url, token_of("op-wang")) == 429
    assert stack.console is not None and stack.console.counters["bearer_failed"] == 3


async def test_a_success_does_not_clear_another_users_failures(stack: ConsoleStack) -> None:
    async with stack.http() as attacker:
        for _ in range(2):
            assert await login(attacker, stack.url, "op-wang", "guess") == 401
        # the attacker logs in with their own account, hoping to reset the counter
        assert await login(attacker, stack.url, "op-zhao", token_of("op-zhao")) == 200
        assert await login(attacker, stack.url, "op-wang", "guess") == 401
        assert await login(attacker, stack.url, "op-wang", token_of("op-wang")) == 429


async def test_one_locked_user_does_not_lock_out_the_others_behind_the_same_proxy(stack: ConsoleStack) -> None:
    async with stack.http() as http:
        for _ in range(3):
            assert await login(http, stack.url, "op-wang", "guess") == 401
        assert await login(http, stack.url, "op-wang", token_of("op-wang")) == 429
    async with stack.http() as colleague:  # same address (the proxy), another operator
        assert await login(colleague, stack.url, "lead-li", token_of("lead-li")) == 200


async def test_a_guess_spread_over_names_hits_the_global_ceiling(stack: ConsoleStack) -> None:
    async with stack.http() as http:
        for i in range(8):
            assert await login(http, stack.url, f"user-{i}", "guess") == 401
        assert await login(http, stack.url, "lead-li", token_of("lead-li")) == 429
        assert await bearer(http, stack.url, token_of("lead-li")) == 429


# ---------------------------------------------------------------------- the alerting API

@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AlertingService]:
    cfg = AlertingConfig(api=ApiConfig(enabled=True, port=0, auth_failures=3, auth_failures_global=6),
                         users=[User(name="ops", role="operator", token=STRONG)], receivers=[],
                         escalation_policies=[], inhibit_rules=[])
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "s")
    task = asyncio.create_task(svc.run())
    async with asyncio.timeout(5):
        while svc.api_port is None:
            await asyncio.sleep(0.01)
    yield svc
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    svc.store.close()


async def test_alerting_api_bearer_guessing_is_throttled(service: AlertingService) -> None:
    url = f"http://127.0.0.1:{service.api_port}"

    async def me(token: str) -> tuple[int, Any]:
        async with http.get(f"{url}/api/me", headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as http:
        assert (await me(STRONG))[0] == 200
        for i in range(3):
            assert (await me(f"guess-{i}"))[0] == 401
        status, body = await me(STRONG)
        assert status == 429 and body["error"] == "too_many_failures"
    assert service.counters["api_auth_failures"] == 3


async def test_tokens_are_kept_only_as_digests(stack: ConsoleStack, service: AlertingService) -> None:
    from alerting.access import TokenBook, digest
    from alerting.api import build_app

    assert stack.console is not None
    for acct in stack.console.accounts.values():
        fields = [getattr(acct, f) for f in acct.__slots__]  # type: ignore[attr-defined]
        assert not any(isinstance(v, str) and v in {u["token"] for u in USERS} for v in fields)
    assert stack.console.accounts["op-wang"].token_digest == digest(token_of("op-wang"))
    book = next(v for v in build_app(service).values() if isinstance(v, TokenBook))
    assert [d for d, _ in book.entries] == [digest(STRONG)]
    assert STRONG not in repr(book.entries) and book.owner(STRONG) is not None and book.owner("x" * 5000) is None


@pytest.mark.parametrize("token,problem", [
    ("tok-op", "too short"), ("admin-token-0001", "too short"), ("a" * 40, "too predictable"),
    ("abababababababababababababababab", "too predictable"), ("0123456789012345678901234", "too predictable"),
    ("has space " + STRONG, "printable"),
])
def test_weak_tokens_are_refused_at_config_load_naming_the_key(token: str, problem: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert token_problem(token) is not None and problem in str(token_problem(token))
    with pytest.raises(ConfigError, match=r"alerting\.users\[1\]\.token") as exc:
        parse_config({"alerting": {"users": [{"name": "a", "token": STRONG}, {"name": "b", "token": token}]}})
    assert token not in str(exc.value)  # the error names the key, never the secret
    monkeypatch.setenv("VIGIL_TEST_OPERATOR_TOKEN", token)
    with pytest.raises(ConfigError, match=r"users\[0\]\.token_env \(VIGIL_TEST_OPERATOR_TOKEN\)"):
        parse_config({"alerting": {"users": [{"name": "a", "token_env": "VIGIL_TEST_OPERATOR_TOKEN"}]}})


def test_strong_tokens_load() -> None:
    import secrets

    for token in (STRONG, secrets.token_urlsafe(32), secrets.token_urlsafe(24)):
        assert len(token) >= MIN_TOKEN_CHARS and token_problem(token) is None, token
        cfg = parse_config({"alerting": {"users": [{"name": "a", "token": token}]}})
        assert cfg.alerting.users[0].token == token
