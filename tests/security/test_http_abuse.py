"""HTTP abuse over every route of both HTTP APIs (the alerting API and the console).

The routes are enumerated from each application's router, so a new route is covered as soon as it
exists (and must be given a minimum role: the OpenAPI document for the alerting API, the table below for
the console). Each route gets unauthenticated requests, wrong and malformed tokens, a low-role user on
supervisor actions, missing/wrong CSRF tokens and foreign origins (console sessions), path traversal and
injection in ids, oversized bodies and malformed JSON. Every answer must be a clear 4xx (never 2xx, never
500) and nothing may change: alerts, timelines, silences, overrides, notifications and sessions are
compared before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from yarl import URL

from alerting.api import build_app as build_api
from alerting.config import AlertingConfig, ApiConfig, Person, Roster, User, WorkOrdersConfig
from alerting.desk import Actor
from alerting.lifecycle import to_contract
from alerting.openapi import OPENAPI
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, utcnow
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from console.web import build_app as build_console
from tests.support.console_stack import ConsoleStack, token_of, wait_until

TOKENS = {"op": "Op7vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U", "sup": "Sup2Xk9wQp4LmZ7vR3nB8tYc5HdF1gJe",
          "admin": "Adm4Rt8yUi2OpQw6ErTy9UiOp3AsDf7G"}
ATTACK_IDS = ["..%2F..%2F..%2Fetc%2Fpasswd", "..", "%2e%2e", "..%5C..%5Cwindows", "a%00b", "%27%20OR%201%3D1--",
              "x" * 300, "%E2%80%AE", "%0d%0aSet-Cookie:%20x=y", "%7B%7D", "*"]
BAD_AUTH = ["Bearer wrong-token", "Bearer ", "Bearer", "Basic YWRtaW46YWRtaW4=", "Token abc", "bearer\tx",
            "Bearer " + "A" * 6000, "Bearer " + TOKENS["admin"] + "x", "Bearer " + TOKENS["admin"][:-1]]
MALFORMED = [b'{"note":', b"[1, 2]", b'"just a string"', b"\xff\xfe\x00", b"null", b"[" * 20000 + b"]" * 20000,
             b"{}garbage", b'{"a": NaN}']
WRONG_TYPES = b'{"note": 5, "text": [], "reason": {}, "matchers": "site=x", "ends_at": "soon", "assignee": 1}'
"""Well-formed JSON with wrong types: refused by every route that reads a body."""
ROLE_RANK = {"operator": 0, "supervisor": 1, "admin": 2}


def routes_of(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route of an application (HEAD mirrors GET)."""
    out = set()
    for r in app.router.routes():
        if r.method == "HEAD":
            continue
        canonical = r.resource.canonical if r.resource is not None else ""
        if isinstance(r.resource, web.StaticResource):
            canonical += "/{filename}"
        out.add((r.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", canonical)))
    return sorted(out)


def fill(path: str, value: str, action: str = "comment") -> str:
    return path.replace("{id}", value).replace("{action}", action).replace("{path}", value) \
        .replace("{filename}", value)


async def request(http: aiohttp.ClientSession, method: str, url: str, *, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> int:
    h = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    # encoded=True: the path goes out exactly as written (no client-side normalisation of "..").
    async with http.request(method, URL(url, encoded=True), data=body, headers=h, allow_redirects=False) as resp:
        LAST_TEXT[0] = "(stream)" if resp.content_type == "text/event-stream" else \
            (await resp.read())[:200].decode(errors="replace")
        return resp.status


LAST_TEXT = [""]


class Outcomes:
    """Collects (what, status) and fails with the whole list of unexpected answers."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.count = 0

    def expect(self, what: str, status: int, allowed: tuple[int, ...]) -> None:
        self.count += 1
        if status not in allowed:
            self.bad.append(f"{what} -> {status} (expected {allowed}): {LAST_TEXT[0]}")

    def check(self) -> None:
        assert not self.bad, "unexpected answers:\n" + "\n".join(self.bad[:60])


def alerting_state(svc: AlertingService) -> str:
    alerts = svc.store.query_alerts(limit=10_000)
    return json.dumps({
        "alerts": [msgspec.to_builtins(to_contract(r)) for r in alerts],
        "timelines": {r.id: len(svc.desk.timeline(r.id)) for r in alerts},
        "silences": sorted([s.id, s.ends_at, s.matchers] for s in svc.desk.silences()),
        "maintenance": sorted(msgspec.json.encode(w).decode() for w in svc.maintenance.entries.values()),
        "overrides": sorted(svc.roster.overrides),
        "notifications": len(svc.store.notifications(limit=10_000)),
    }, sort_keys=True, default=str)


# ---------------------------------------------------------------------- the alerting API

@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[AlertingService, str, dict[str, str]]]:
    cfg = AlertingConfig(
        api=ApiConfig(enabled=True, port=0, auth_failures=1_000_000, auth_failures_global=1_000_000),
        users=[User(name="op", role="operator", unit="u1", token=TOKENS["op"]),
               User(name="sup", role="supervisor", token=TOKENS["sup"]),
               User(name="admin", role="admin", token=TOKENS["admin"])],
        people=[Person(id="li", roles=["operator"], unit="u1")], receivers=[], escalation_policies=[],
        rosters=[Roster(name="u1-ops", role="operator", unit="u1", members=["li"])], inhibit_rules=[],
        workorders=WorkOrdersConfig(enabled=True))
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "s")
    task = asyncio.create_task(svc.run())
    async with asyncio.timeout(5):
        while svc.api_port is None:
            await asyncio.sleep(0.01)
    now = utcnow()
    t = Transition(ts=now, fingerprint="f1", rule="trapped_passenger", status="firing", severity=Severity.CRITICAL,
                   kind=Kind.ELEVATOR, device_id="elv-1", site="tower-a", labels={"unit": "u1"}, summary="困人",
                   source_ts=now)
    svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/elv-1", encode(t), 1, False, 0.0)])
    admin = Actor("admin", "admin", "")
    sil = svc.desk.create_silence(admin, ["site=tower-b"], time.time() + 3600)
    ov = svc.desk.add_override(admin, "u1-ops", "li", time.time(), time.time() + 3600)
    ids = {"alerts": svc.by_fingerprint["f1"], "silences": sil.id, "overrides": ov.id, "notifications": "1",
           "workorders": svc.by_fingerprint["f1"]}
    yield svc, f"http://127.0.0.1:{svc.api_port}", ids
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    svc.store.close()


def real_id(path: str, ids: dict[str, str]) -> str:
    for key in ("overrides", "silences", "notifications", "alerts", "workorders"):
        if f"/{key}/" in path:
            return ids[key]
    return ""


def kitchen_sink(now: float) -> bytes:
    """A body that would make any action succeed if the request were allowed."""
    return json.dumps({"note": "n", "text": "t", "reason": "r", "severity": "warning", "assignee": "li",
                       "unit": "u1", "matchers": ["site=x"], "starts_at": now, "ends_at": now + 3600,
                       "roster": "u1-ops", "person": "li", "comment": "c", "duration_min": 30}).encode()


async def test_every_alerting_api_route_refuses_abuse(api: tuple[AlertingService, str, dict[str, str]]) -> None:
    svc, url, ids = api
    routes = routes_of(build_api(svc))
    public = {("GET", "/api/health"), ("GET", "/api/openapi.json")}
    min_role: dict[tuple[str, str], str] = {}
    for method, path in routes:  # every route is documented, with its minimum role
        op = OPENAPI["paths"].get(path, {}).get(method.lower())
        assert op is not None, f"{method} {path} is missing from alerting/openapi.py"
        m = re.search(r"Minimum role: (\w+)", op.get("description", ""))
        assert m is not None and m.group(1) in ROLE_RANK, f"{method} {path}: no minimum role documented"
        min_role[(method, path)] = m.group(1)
    assert len(routes) >= 20
    before = alerting_state(svc)
    out = Outcomes()
    now = time.time()
    body = kitchen_sink(now)
    unsafe = [(m, p) for m, p in routes if m in ("POST", "PUT", "PATCH", "DELETE")]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for method, path in routes:
            target = url + fill(path, real_id(path, ids))
            send = body if method in ("POST", "PUT", "PATCH") else None
            if (method, path) in public:
                out.expect(f"anon {method} {path}", await request(http, method, target), (200,))
                continue
            out.expect(f"anon {method} {path}", await request(http, method, target, body=send), (401,))
            # a console session cookie is no credential here
            out.expect(f"cookie {method} {path}", await request(
                http, method, target, body=send, headers={"Cookie": "vigil_session=anything"}), (401,))
            for auth in BAD_AUTH:
                out.expect(f"{auth[:20]!r} {method} {path}", await request(
                    http, method, target, body=send, headers={"Authorization": auth}), (400, 401))
            if ROLE_RANK[min_role[(method, path)]] > 0:
                out.expect(f"operator {method} {path}", await request(
                    http, method, target, body=send, headers={"Authorization": f"Bearer {TOKENS['op']}"}), (403,))
            if "{" in path:
                for attack in ATTACK_IDS:
                    status = await request(http, method, url + fill(path, attack, attack), body=send,
                                           headers={"Authorization": f"Bearer {TOKENS['admin']}"})
                    out.expect(f"id {attack[:20]!r} {method} {path}", status, (400, 403, 404, 405))
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        for method, path in unsafe:
            target = url + fill(path, real_id(path, ids))
            big = b'{"note": "' + b"a" * (svc.config.api.max_body_bytes + 10) + b'"}'
            out.expect(f"oversized {method} {path}", await request(http, method, target, body=big, headers=admin),
                       (413,))
            for bad in MALFORMED:
                out.expect(f"malformed {bad[:16]!r} {method} {path}", await request(
                    http, method, target, body=bad, headers=admin), (400, 413))
            out.expect(f"wrong types {method} {path}", await request(
                http, method, target, body=WRONG_TYPES, headers=admin), (400,))
    out.check()
    assert out.count > 400
    assert alerting_state(svc) == before


# ---------------------------------------------------------------------- the console

CONSOLE_ROLES = {
    ("GET", "/"): "public", ("GET", "/api/health"): "public", ("POST", "/api/login"): "public",
    ("GET", "/static/{filename}"): "public",
    ("POST", "/api/logout"): "operator", ("GET", "/api/session"): "operator", ("GET", "/api/board"): "operator",
    ("GET", "/api/alerts/{id}"): "operator", ("GET", "/api/alerts/{id}/series"): "operator",
    ("GET", "/api/alerts/{id}/snapshot"): "operator", ("POST", "/api/alerts/{id}/{action}"): "operator",
    ("GET", "/api/silences"): "operator", ("POST", "/api/silences"): "operator",
    ("DELETE", "/api/silences/{id}"): "operator", ("GET", "/api/devices"): "operator",
    ("GET", "/api/devices/{id}"): "operator", ("GET", "/api/devices/{id}/series"): "operator",
    ("GET", "/api/map"): "operator", ("GET", "/api/duty"): "operator", ("GET", "/api/figures"): "operator",
    ("GET", "/api/events"): "operator", ("GET", "/evidence/{path}"): "operator",
    ("POST", "/api/duty/overrides"): "supervisor", ("DELETE", "/api/duty/overrides/{id}"): "supervisor",
    ("GET", "/api/audit"): "supervisor",
    ("POST", "/api/maintenance"): "supervisor", ("DELETE", "/api/maintenance/{id}"): "supervisor",
    ("GET", "/h5/"): "public", ("GET", "/api/wo"): "operator", ("POST", "/api/wo"): "supervisor",
    ("GET", "/api/wo/figures"): "operator", ("GET", "/api/wo/grids"): "operator", ("GET", "/api/wo/{id}"): "operator",
    ("POST", "/api/wo/{id}/photos"): "supervisor", ("GET", "/api/wo/{id}/photos/{n}"): "operator",
    ("POST", "/api/wo/{id}/{action}"): "operator",
}
"""Every console route and the lowest role allowed to use it (a new route must be added here)."""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    ev = tmp_path / "evidence" / "cam-1"
    ev.mkdir(parents=True)
    (ev / "shot.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    async with ConsoleStack(tmp_path / "stack", console_options={
            "evidence_dir": str(tmp_path / "evidence"), "login_failures": 1_000_000,
            "login_failures_global": 1_000_000}, alerting_options={"workorders": {"enabled": True}}) as st:
        yield st


def console_state(st: ConsoleStack) -> str:
    assert st.console is not None
    return alerting_state(st.alerting) + f"|sessions={len(st.console.sessions.sessions)}"


async def test_every_console_route_refuses_abuse(stack: ConsoleStack) -> None:
    assert stack.console is not None
    routes = routes_of(build_console(stack.console))
    assert set(routes) == set(CONSOLE_ROLES), f"classify new console routes: {set(routes) ^ set(CONSOLE_ROLES)}"
    before_alerts = set(stack.alerting.open)
    await stack.event("elevator", "elev-0001", "trapped_passenger")
    aid = str(next(iter(await wait_until(lambda: set(stack.alerting.open) - before_alerts, 5, "an alert"))))
    lead = Actor("lead-li", "supervisor", "市场监管局")
    sid = stack.alerting.desk.create_silence(lead, ["site=xixi-tower"], time.time() + 3600).id
    oid = stack.alerting.desk.add_override(lead, "elevator-desk", "op-zhao", time.time(), time.time() + 3600).id
    mid = stack.alerting.desk.create_maintenance(lead, "abuse-target", ["site=xixi-tower"], [0], "02:00", 60).id
    real = {"/api/alerts/": aid, "/api/wo/": aid, "/api/silences/": sid, "/api/duty/overrides/": oid, "/api/maintenance/": mid,
            "/api/devices/": "elev-0001", "/evidence/": "cam-1/shot.jpg", "/static/": "app.css"}

    def real_path(path: str) -> str:
        value = next((v for k, v in real.items() if path.startswith(k)), "")
        return fill(path, value)

    now = time.time()
    body = json.dumps({"note": "n", "text": "t", "reason": "r", "assignee": "op-wang", "unit": "市场监管局",
                       "matchers": ["site=cuiyuan-3"], "duration_min": 30, "roster": "elevator-desk",
                       "person": "op-wang", "starts_at": now, "ends_at": now + 3600, "comment": "c"}).encode()
    out = Outcomes()
    url = stack.url
    async with stack.http() as admin_http, stack.http() as op_http, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as anon:
        admin_csrf = await stack.login(admin_http, "admin")
        op_csrf = await stack.login(op_http, "op-wang")
        before = console_state(stack)
        for method, path in routes:
            role = CONSOLE_ROLES[(method, path)]
            target = url + real_path(path)
            send = body if method in ("POST", "PUT", "PATCH") else None
            if role == "public":
                continue
            out.expect(f"anon {method} {path}", await request(anon, method, target, body=send), (401,))
            out.expect(f"forged cookie {method} {path}", await request(
                anon, method, target, body=send, headers={"Cookie": "vigil_session=forged"}), (401,))
            for auth in BAD_AUTH:
                out.expect(f"{auth[:20]!r} {method} {path}", await request(
                    anon, method, target, body=send, headers={"Authorization": auth}), (400, 401))
            if role == "supervisor":
                out.expect(f"operator bearer {method} {path}", await request(
                    anon, method, target, body=send,
                    headers={"Authorization": f"Bearer {token_of('op-wang')}"}), (403,))
                out.expect(f"operator session {method} {path}", await request(
                    op_http, method, target, body=send, headers={"X-CSRF-Token": op_csrf}), (403,))
            if send is not None:
                for h in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": op_csrf},
                          {"X-CSRF-Token": admin_csrf, "Origin": "http://evil.example"}):
                    out.expect(f"csrf {h} {method} {path}", await request(
                        admin_http, method, target, body=send, headers=h), (403,))
        bearer = {"Authorization": f"Bearer {token_of('admin')}"}
        for method, path in routes:
            if "{" not in path:
                continue
            send = body if method in ("POST", "PUT", "PATCH") else None
            for attack in ATTACK_IDS:
                status = await request(anon, method, url + fill(path, attack, attack), body=send, headers=bearer)
                out.expect(f"id {attack[:20]!r} {method} {path}", status, (400, 401, 403, 404, 405))
            if "{action}" in path:
                for action in ("..%2Fsilence", "delete", "ACK", "%00"):
                    status = await request(anon, method, url + fill(path, aid, action), body=send, headers=bearer)
                    out.expect(f"action {action} {method} {path}", status, (404,))
        for method, path in routes:
            if method == "GET":
                continue
            target = url + real_path(path)
            big = b'{"note": "' + b"a" * (300 * 1024) + b'"}'
            out.expect(f"oversized {method} {path}", await request(anon, method, target, body=big, headers=bearer),
                       (413,))
            for bad in MALFORMED:
                out.expect(f"malformed {bad[:16]!r} {method} {path}", await request(
                    anon, method, target, body=bad, headers=bearer), (400, 413))
            if path not in ("/api/login", "/api/logout"):  # those read no typed fields (login answers 401)
                out.expect(f"wrong types {method} {path}", await request(
                    anon, method, target, body=WRONG_TYPES, headers=bearer), (400,))
        out.check()
        assert out.count > 400
        assert console_state(stack) == before
        async with admin_http.get(f"{url}/api/session") as resp:  # the logout without CSRF did not log out
            assert resp.status == 200
