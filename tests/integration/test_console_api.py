"""The console's HTTP API over a real platform (Mosquitto, rules, alerting, console in one process).

Permissions (an operator cannot edit the roster), sessions and CSRF, login lockout, alert actions
from the API with their audit, server push of alert changes, the board's paging over history,
and evidence files.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from console.geo import wgs84_to_gcj02
from tests.support.console_stack import ConsoleStack, pretty, token_of, wait_until


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    evidence = tmp_path / "evidence"
    (evidence / "cam-1").mkdir(parents=True)
    (evidence / "cam-1" / "shot.jpg").write_bytes(b"\xff\xd8\xff\xe0fake-jpeg")
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8 outside")
    async with ConsoleStack(tmp_path / "stack", console_options={
            "evidence_dir": str(evidence), "login_failures": 3}) as st:
        yield st


async def raise_alert(st: ConsoleStack, device: str = "elev-0001") -> str:
    before = set(st.alerting.open)
    await st.event("elevator", device, "trapped_passenger")
    new = await wait_until(lambda: set(st.alerting.open) - before, 5, f"an alert for {device}")
    return str(next(iter(new)))


async def call(http: aiohttp.ClientSession, method: str, url: str, csrf: str | None = None,
               body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
    h = dict(headers)
    if csrf is not None:
        h["X-CSRF-Token"] = csrf
    async with http.request(method, url, json=body if method != "GET" else None, headers=h) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith(("{", "[")) else text


async def test_operator_cannot_edit_the_roster_but_a_supervisor_can(stack: ConsoleStack) -> None:
    now = time.time()
    override = {"roster": "elevator-desk", "person": "op-wang", "starts_at": now, "ends_at": now + 3600,
                "reason": "换班"}
    async with stack.http() as op, stack.http() as lead, aiohttp.ClientSession() as script:
        op_csrf = await stack.login(op, "op-wang")
        lead_csrf = await stack.login(lead, "lead-li")
        status, body = await call(op, "POST", f"{stack.url}/api/duty/overrides", op_csrf, override)
        assert status == 403 and body["error"] == "forbidden", pretty(body)
        status, _ = await call(script, "POST", f"{stack.url}/api/duty/overrides", body=override,
                               Authorization=f"Bearer {token_of('op-zhao')}")
        assert status == 403
        assert stack.alerting.roster.overrides == {}

        status, body = await call(lead, "POST", f"{stack.url}/api/duty/overrides", lead_csrf, override)
        assert status == 201, pretty(body)
        oid = body["override"]["id"]
        status, duty = await call(op, "GET", f"{stack.url}/api/duty")
        assert status == 200
        assert duty["on_duty"][0]["person"] == "op-wang" and duty["on_duty"][0]["override"] == oid
        assert duty["rosters"][0]["upcoming"][0]["name"] == "王芳"
        status, _ = await call(op, "DELETE", f"{stack.url}/api/duty/overrides/{oid}", op_csrf)
        assert status == 403 and oid in stack.alerting.roster.overrides
        status, _ = await call(lead, "DELETE", f"{stack.url}/api/duty/overrides/{oid}", lead_csrf)
        assert status == 200 and oid not in stack.alerting.roster.overrides

        # The audit holds the refusals as well as the changes; only supervisors may read it.
        status, _ = await call(op, "GET", f"{stack.url}/api/audit")
        assert status == 403
        status, audit = await call(lead, "GET", f"{stack.url}/api/audit")
        rows = [(e["user"], e["action"], e["outcome"]) for e in audit["entries"]]
        assert ("op-wang", "POST /api/duty/overrides", 403) in rows
        assert ("op-zhao", "POST /api/duty/overrides", 403) in rows
        assert ("lead-li", "POST /api/duty/overrides", 201) in rows
        assert ("op-wang", "DELETE /api/duty/overrides/{id}", 403) in rows
        assert ("lead-li", "login", 200) in rows


async def test_sessions_csrf_origin_and_lockout(stack: ConsoleStack) -> None:
    async with stack.http() as http:
        status, _ = await call(http, "GET", f"{stack.url}/api/board")
        assert status == 401
        status, body = await call(http, "POST", f"{stack.url}/api/login", body={"username": "op-wang",
                                                                               "password": "wrong"})
        assert status == 401 and body["error"] == "bad_login"
        csrf = await stack.login(http, "op-wang")
        status, sess = await call(http, "GET", f"{stack.url}/api/session")
        assert status == 200 and sess["user"] == "op-wang" and sess["csrf"] == csrf
        assert sess["permissions"] == {"alert.handle": True, "silence.create": True, "roster.edit": False,
                                       "audit.view": False, "maintenance.edit": False}
        aid = await raise_alert(stack)
        url = f"{stack.url}/api/alerts/{aid}/comment"
        assert (await call(http, "POST", url, None, {"text": "x"}))[0] == 403
        assert (await call(http, "POST", url, "forged", {"text": "x"}))[0] == 403
        status, body = await call(http, "POST", url, csrf, {"text": "x"}, Origin="http://evil.example")
        assert status == 403 and body["error"] == "bad_origin"
        assert (await call(http, "POST", url, csrf, {"text": "已电话联系物业"}, Origin=stack.url))[0] == 200
        assert (await call(http, "POST", f"{stack.url}/api/logout", csrf))[0] == 200
        assert (await call(http, "GET", f"{stack.url}/api/board"))[0] == 401

    async with stack.http() as http:
        for _ in range(3):
            await call(http, "POST", f"{stack.url}/api/login", body={"username": "op-wang", "password": "guess"})
        status, body = await call(http, "POST", f"{stack.url}/api/login",
                                  body={"username": "op-wang", "password": token_of("op-wang")})
        assert status == 429 and body["error"] == "locked"


async def test_actions_push_and_board(stack: ConsoleStack) -> None:
    async with stack.http() as op, stack.http() as watcher:
        csrf = await stack.login(op, "op-wang")
        await stack.login(watcher, "op-zhao")
        frames: list[tuple[str, dict[str, Any]]] = []

        async def listen() -> None:
            async with watcher.get(f"{stack.url}/api/events") as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                event = ""
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        frames.append((event, json.loads(line[6:])))

        task = asyncio.create_task(listen())
        await wait_until(lambda: frames and frames[0][0] == "hello", 5, "the hello event")
        await stack.telemetry("elevator", "elev-0002", {"speed_mps": 0.5, "floor": 4})
        await wait_until(lambda: any(e == "devices" and "elev-0002" in d["ids"] for e, d in frames), 3,
                         "the pushed device change")
        t0 = time.monotonic()
        aid = await raise_alert(stack)
        await wait_until(lambda: any(e == "alert" and d["id"] == aid for e, d in frames), 2, "the pushed alert")
        assert time.monotonic() - t0 < 2.0

        base = f"{stack.url}/api/alerts/{aid}"
        status, body = await call(op, "POST", f"{base}/ack", csrf, {"note": "收到"})
        assert status == 200 and body["alert"]["status"] == "acknowledged"
        await wait_until(lambda: any(e == "alert" and d["id"] == aid and d["status"] == "acknowledged"
                                     for e, d in frames), 2, "the pushed acknowledgement")
        assert (await call(op, "POST", f"{base}/ack", csrf))[0] == 409
        status, body = await call(op, "POST", f"{base}/assign", csrf, {"assignee": "op-zhao", "note": "转交"})
        assert status == 200 and body["alert"]["assignee"] == "op-zhao"
        status, body = await call(op, "POST", f"{base}/silence", csrf, {"duration_min": 30, "scope": "device"})
        assert status == 201 and body["silence"]["matchers"] == ["device_id=elev-0001", "unit=市场监管局"]
        assert (await call(op, "POST", f"{base}/resolve", csrf, {"reason": " "}))[0] == 400
        status, body = await call(op, "POST", f"{base}/resolve", csrf, {"reason": "救援完成, 乘客已安全离开"})
        assert status == 200 and body["alert"]["status"] == "resolved"
        assert (await call(op, "POST", f"{base}/bogus", csrf))[0] == 404

        status, detail = await call(op, "GET", base)
        actions = [e["action"] for e in detail["timeline"]]
        assert actions[0] == "created" and {"acknowledged", "assigned", "commented", "closed"} <= set(actions)
        assert detail["snapshot"]["device_id"] == "elev-0001" and detail["rule"]["name"] == "elevator_trapped_passenger"
        assert detail["notifications"] and detail["notifications"][0]["recipient_name"]

        # Board: open alerts from memory, history from the store, both paged with totals.
        await raise_alert(stack, "elev-0002")
        status, board = await call(op, "GET", f"{stack.url}/api/board?facets=1")
        assert board["total"] == 1 and board["alerts"][0]["device_id"] == "elev-0002"
        assert board["facets"]["site"] == {"xixi-tower": 1} and len(board["critical"]) == 1
        status, hist = await call(op, "GET", f"{stack.url}/api/board?status=all&limit=1")
        assert hist["total"] == 2 and len(hist["alerts"]) == 1
        status, hist = await call(op, "GET", f"{stack.url}/api/board?status=resolved&site=cuiyuan-3")
        assert [a["id"] for a in hist["alerts"]] == [aid] and hist["total"] == 1
        status, hist = await call(op, "GET", f"{stack.url}/api/board?status=all&q=elev-0001")
        assert [a["id"] for a in hist["alerts"]] == [aid] and hist["total"] == 1
        assert (await call(op, "GET", f"{stack.url}/api/board?limit=9999"))[0] == 400
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_devices_map_figures_and_evidence(stack: ConsoleStack, tmp_path: Path) -> None:
    now = time.time()
    for i in range(5):
        await stack.telemetry("vehicle", "truck-0001", {"lat": 30.28 + i * 0.001, "lon": 120.15 + i * 0.001,
                                                        "speed_kmh": 60.0, "gnss_fixed": True}, ts=now - 50 + i * 10)
    await stack.status("elevator", "elev-0002", online=False)
    await wait_until(lambda: len(stack.console.live.track("truck-0001")) == 5  # type: ignore[union-attr]
                     and "elev-0002" in stack.console.live.devices, 5, "live state")  # type: ignore[union-attr]
    async with stack.http() as http:
        await stack.login(http, "lead-li")
        status, devs = await call(http, "GET", f"{stack.url}/api/devices")
        by_id = {d["id"]: d for d in devs["devices"]}
        assert by_id["truck-0001"]["online"] and not by_id["elev-0002"]["online"]
        assert by_id["truck-0001"]["position"] == [120.154, 30.284]
        status, off = await call(http, "GET", f"{stack.url}/api/devices?online=false")
        assert {d["id"] for d in off["devices"]} == {"elev-0001", "elev-0002"}
        status, m = await call(http, "GET", f"{stack.url}/api/map")
        assert len(m["tracks"]["truck-0001"]) == 5 and {s["id"] for s in m["sites"]} == {"cuiyuan-3", "xixi-tower",
                                                                                        "depot-east"}
        w, s, e, n = m["bounds"]
        assert w < 120.085 and e > 120.213 and s < 30.277 and n > 30.292
        # With a GCJ-02 basemap the same WGS-84 position is drawn about 500 m further east.
        assert stack.console is not None
        stack.console.config = msgspec.structs.replace(stack.console.config, gcj02_basemap=True)
        status, m2 = await call(http, "GET", f"{stack.url}/api/map")
        truck = next(d for d in m2["devices"] if d["id"] == "truck-0001")
        assert truck["position"] == [round(v, 6) for v in wgs84_to_gcj02(120.154, 30.284)]
        assert m2["gcj02"] and m2["tracks"]["truck-0001"][-1] == truck["position"]
        stack.console.config = msgspec.structs.replace(stack.console.config, gcj02_basemap=False)
        status, series = await call(http, "GET", f"{stack.url}/api/devices/truck-0001/series?since={now - 3600}")
        assert [p["values"]["speed_kmh"] for p in series["points"]] == [60.0] * 5
        assert (await call(http, "GET", f"{stack.url}/api/devices/nope"))[0] == 404
        status, fig = await call(http, "GET", f"{stack.url}/api/figures?days=7")
        assert status == 200 and len(fig["daily"]) == 7 and fig["today"]["total"] == 0
        assert (await call(http, "GET", f"{stack.url}/api/figures?days=0"))[0] == 400

        ev_dir = tmp_path / "evidence"
        href = stack.console.evidence_href((ev_dir / "cam-1" / "shot.jpg").as_uri())
        assert href == "/evidence/cam-1/shot.jpg"
        assert stack.console.evidence_href((tmp_path / "secret.jpg").as_uri()) is None
        async with http.get(f"{stack.url}{href}") as resp:
            assert resp.status == 200 and (await resp.read()).startswith(b"\xff\xd8")
        async with http.get(f"{stack.url}/evidence/..%2Fsecret.jpg") as resp:
            assert resp.status == 404
    async with stack.http() as anon:
        async with anon.get(f"{stack.url}/evidence/cam-1/shot.jpg") as resp:
            assert resp.status == 401
        async with anon.get(f"{stack.url}/") as resp:
            assert resp.status == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]
        async with anon.get(f"{stack.url}/static/js/main.js") as resp:
            assert resp.status == 200
