"""Work orders over real HTTP: every transition and permission, on the console (sessions, CSRF, photos)
and on the alerting API (bearer tokens), with a real Mosquitto + rules + alerting platform behind the console.

Grid staff see only their grid's cases (another grid's case is 404), never the centre's screens (403),
cannot take centre steps (403); the centre cannot take field steps (403); illegal steps are 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerting.config import AlertingConfig, ApiConfig, User, WorkOrdersConfig
from alerting.desk import Actor
from alerting.service import AlertingService
from broker.contracts import AlertStatus, encode
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from tests.integration.workorder_rig import (
    CUIYUAN_3,
    STACK_STAFF,
    XIXI_TOWER,
    case,
    centre,
    grid_id,
    stack_options,
    staff_id,
    write_grids,
)
from tests.support.console_stack import ConsoleStack, wait_until

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


class Client:
    """One logged-in browser session on the console."""

    def __init__(self, stack: ConsoleStack, http: aiohttp.ClientSession, csrf: str) -> None:
        self.stack, self.http, self.csrf = stack, http, csrf

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   ctype: str = "image/jpeg", csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf and method != "GET" else {}
        kw: dict[str, Any] = {}
        if raw is not None:
            headers["Content-Type"] = ctype
            kw["data"] = raw
        elif body is not None:
            kw["json"] = body
        async with self.http.request(method, self.stack.url + path, headers=headers, **kw) as r:
            data = await r.json() if r.content_type == "application/json" else await r.read()
            return r.status, data


@contextlib.asynccontextmanager
async def session(stack: ConsoleStack, user: str, token: str) -> AsyncIterator[Client]:
    login = {"username": user, "password": token}
    async with stack.http() as http, http.post(f"{stack.url}/api/login", json=login) as r:
        assert r.status == 200, await r.text()
        yield Client(stack, http, (await r.json())["csrf"])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    opts = stack_options(tmp_path / "wo", arrive_mode="refuse", arrive_max_m=200, photo_max_bytes=64 * 1024)
    async with ConsoleStack(tmp_path / "stack", alerting_options=opts) as st:
        yield st


async def new_case(stack: ConsoleStack, device: str) -> str:
    before = set(stack.alerting.open)
    await stack.event("elevator", device, "trapped_passenger")
    return str(next(iter(await wait_until(lambda: set(stack.alerting.open) - before, 5, f"an alert of {device}"))))


async def test_field_flow_permissions_photos_and_centre_over_the_console(stack: ConsoleStack, tmp_path: Path) -> None:
    cuiyuan = await new_case(stack, "elev-0001")
    xixi = await new_case(stack, "elev-0002")
    zhou_tok, wu_tok = STACK_STAFF["gs-zhou"][0], STACK_STAFF["gs-wu"][0]
    async with session(stack, "gs-zhou", zhou_tok) as zhou, session(stack, "gs-wu", wu_tok) as wu, \
            session(stack, "op-wang", "wang-token-0001") as op:
        # The phone page is served without a login; the session tells the page its grids.
        async with zhou.http.get(stack.url + "/h5/") as r:
            assert r.status == 200 and "网格工单" in await r.text()
        status, s = await zhou.call("GET", "/api/session")
        assert status == 200 and s["grids"] == ["g-cuiyuan"] and "people" not in s
        # Only the own grid's cases; another grid's case does not exist for them.
        status, lst = await zhou.call("GET", "/api/wo")
        assert status == 200 and [o["id"] for o in lst["workorders"]] == [cuiyuan]
        o = lst["workorders"][0]
        assert o["grid"] == "g-cuiyuan" and o["stage"] == "dispatched" and o["policy"] == "135"
        assert o["link"].endswith(f"/h5/#case/{cuiyuan}")
        for method, path in (("GET", f"/api/wo/{xixi}"), ("POST", f"/api/wo/{xixi}/accept"),
                             ("GET", f"/api/wo/{xixi}/photos/0"), ("POST", f"/api/wo/{xixi}/comment")):
            assert (await zhou.call(method, path, {"text": "x"} if method == "POST" else None))[0] == 404, path
        # The centre's screens are closed to grid staff, whatever the route.
        for path in ("/api/board", "/api/events", f"/api/alerts/{cuiyuan}", "/api/map", "/api/figures",
                     "/api/devices", "/api/duty", "/api/silences"):
            assert (await zhou.call("GET", path))[0] == 403, path
        assert (await zhou.call("POST", f"/api/alerts/{cuiyuan}/ack", {}))[0] == 403
        # Illegal order of steps: 409; centre steps: 403; the centre cannot take field steps: 403; no CSRF: 403.
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/depart", {}))[0] == 409
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/handle", {"notes": "x"}))[0] == 409
        for action in ("verify", "close", "dispatch", "satisfaction"):
            assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/{action}", {"grid": "g-xixi", "result": "satisfied"}
                                    ))[0] == 403, action
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/accept", {}))[0] == 403
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/accept", {}, csrf=False))[0] == 403
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/nonsense", {}))[0] == 404
        # Accept: the alert is acknowledged by the grid staff member (the 135 ladder stops).
        status, out = await zhou.call("POST", f"/api/wo/{cuiyuan}/accept", {})
        assert status == 200 and out["workorder"]["stage"] == "accepted" and out["workorder"]["assignee"] == "gs-zhou"
        assert stack.alerting.open[cuiyuan].status is AlertStatus.ACKNOWLEDGED
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/accept", {}))[0] == 409
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/depart", {}))[0] == 200
        # Arrival: position checked against the site (200 m): far away refused, then on site.
        lat, lon = CUIYUAN_3
        status, err = await zhou.call("POST", f"/api/wo/{cuiyuan}/arrive", {"lat": lat + 0.01, "lon": lon})
        assert status == 400 and err["error"] == "too_far"
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/arrive", {"lat": "x", "lon": lon}))[0] == 400
        status, out = await zhou.call("POST", f"/api/wo/{cuiyuan}/arrive", {"lat": lat + 0.0005, "lon": lon})
        assert status == 200 and out["workorder"]["stage"] == "on_site"
        assert 40 < out["workorder"]["arrive_distance_m"] < 70
        # Photos: the type is checked by the first bytes, the size by the limit; stored under a random name.
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=b"GIF89a" + b"\0" * 50))[0] == 400
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=b"<html>", ctype="image/png"))[0] == 400
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=b"\xff\xd8\xff" + b"\0" * 70_000))[0] == 413
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", {"data": "x"}))[0] == 400
        assert (await wu.call("POST", f"/api/wo/{cuiyuan}/photos", raw=JPEG))[0] == 404
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=JPEG, csrf=False))[0] == 403
        async with aiohttp.ClientSession() as anon, anon.post(f"{stack.url}/api/wo/{cuiyuan}/photos", data=JPEG,
                                                              headers={"Content-Type": "image/jpeg"}) as r:
            assert r.status == 401
        status, out = await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=JPEG)
        assert status == 201 and out["photo"] == 0
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/photos", raw=PNG, ctype="image/png"))[0] == 201
        order = stack.alerting.workorders.get(Actor("admin", "admin"), cuiyuan)
        stored = [tmp_path / "wo" / "evidence" / "workorders" / p for p in order.photos]
        assert [p.read_bytes() for p in stored] == [JPEG, PNG]
        assert all(len(p.stem) == 32 for p in stored)  # random names, never the uploader's
        status, img = await zhou.call("GET", f"/api/wo/{cuiyuan}/photos/0")
        assert status == 200 and img == JPEG
        assert (await op.call("GET", f"/api/wo/{cuiyuan}/photos/1"))[1] == PNG
        assert (await zhou.call("GET", f"/api/wo/{cuiyuan}/photos/7"))[0] == 404
        # Handling needs notes; then the centre verifies and closes, which resolves the alert.
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/handle", {"notes": ""}))[0] == 400
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/verify", {}))[0] == 409
        assert (await zhou.call("POST", f"/api/wo/{cuiyuan}/handle", {"notes": "已解困，乘客安全"}))[0] == 200
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/close", {}))[0] == 409
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/verify", {"passed": "yes"}))[0] == 400
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/verify", {"passed": True}))[0] == 200
        status, out = await op.call("POST", f"/api/wo/{cuiyuan}/close", {"note": "办结"})
        assert status == 200 and out["workorder"]["stage"] == "closed"
        assert stack.alerting.desk.get(cuiyuan).status is AlertStatus.RESOLVED
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/satisfaction", {"result": "great"}))[0] == 400
        assert (await op.call("POST", f"/api/wo/{cuiyuan}/satisfaction", {"result": "satisfied"}))[0] == 200
        status, detail = await zhou.call("GET", f"/api/wo/{cuiyuan}")
        actions = [e["action"] for e in detail["timeline"]]
        for a in ("wo_created", "wo_dispatched", "wo_accept", "acknowledged", "wo_depart", "wo_arrive", "wo_photo",
                  "wo_handle", "wo_verify", "wo_close", "closed", "wo_satisfaction"):
            assert a in actions, a
        # Report an incident from the field: a case in the grid of the position, in the same flow.
        lat, lon = XIXI_TOWER
        assert (await op.call("POST", "/api/wo", {"category": "other", "summary": "x", "lat": lat, "lon": lon}
                              ))[0] == 403
        assert (await wu.call("POST", "/api/wo", {"category": "fire_hazard", "summary": "楼道堆放杂物"}))[0] == 400
        status, out = await wu.call("POST", "/api/wo", {"category": "fire_hazard", "summary": "楼道堆放杂物",
                                                        "place": "西溪华府1幢", "lat": lat, "lon": lon})
        assert status == 201
        rep = out["workorder"]
        assert rep["source"] == "grid_staff" and rep["grid"] == "g-xixi" and rep["stage"] == "dispatched"
        assert rep["reporter"] == "gs-wu" and rep["policy"] == "standard"
        assert stack.alerting.desk.get(rep["id"]).labels["source"] == "grid_staff"
        assert (await wu.call("POST", f"/api/wo/{rep['id']}/photos", raw=JPEG))[0] == 201
        # Returned by its grid (退单), re-dispatched by the centre to another grid (派单) whose staff now see it.
        assert (await wu.call("POST", f"/api/wo/{rep['id']}/return", {}))[0] == 400
        assert (await wu.call("POST", f"/api/wo/{rep['id']}/return", {"reason": "属翠苑网格"}))[0] == 200
        assert (await op.call("POST", f"/api/wo/{rep['id']}/dispatch", {"grid": "g-nowhere"}))[0] == 400
        assert (await op.call("POST", f"/api/wo/{rep['id']}/reassign", {"grid": "g-cuiyuan", "reason": "x"}))[0] == 409
        assert (await op.call("POST", f"/api/wo/{rep['id']}/dispatch", {"grid": "g-cuiyuan"}))[0] == 200
        assert (await wu.call("GET", f"/api/wo/{rep['id']}"))[0] == 404
        assert (await zhou.call("GET", f"/api/wo/{rep['id']}"))[0] == 200
        # Reassignment (改派) of an accepted case needs a reason.
        assert (await zhou.call("POST", f"/api/wo/{rep['id']}/accept", {}))[0] == 200
        assert (await op.call("POST", f"/api/wo/{rep['id']}/reassign", {"grid": "g-xixi"}))[0] == 400
        status, out = await op.call("POST", f"/api/wo/{rep['id']}/reassign", {"grid": "g-xixi", "reason": "改派"})
        assert status == 200 and out["workorder"]["reassigns"] == 1 and out["workorder"]["stage"] == "dispatched"
        # Figures: the centre sees both grids, grid staff only theirs.
        status, f = await op.call("GET", "/api/wo/figures")
        assert status == 200 and f["total"] == 3 and f["closed"] == 1 and f["returned"] == 1 and f["reassigned"] == 1
        assert f["by"]["grid"]["g-cuiyuan"]["closed"] == 1 and f["satisfaction_rate"] == 1.0
        assert f["by"]["person"]["gs-zhou"]["on_time_rate"]["closed"] == 1.0
        status, f_zhou = await zhou.call("GET", "/api/wo/figures")
        assert f_zhou["total"] == 1 and set(f_zhou["by"]["grid"]) == {"g-cuiyuan"}
        status, grids = await zhou.call("GET", "/api/wo/grids")
        assert [g["id"] for g in grids["grids"]] == ["g-cuiyuan"]
        status, grids = await op.call("GET", "/api/wo/grids")
        assert {g["id"]: g["open_cases"] for g in grids["grids"]} == {"g-cuiyuan": 0, "g-xixi": 2, "g-east": 0}
        # Dispatch notifications carry the link to the case on the phone page.
        notes = stack.alerting.store.notifications(limit=1000)
        to_zhou = [n for n in notes if n.recipient == "person:gs-zhou" and n.kind == "workorder"]
        assert any(f"/h5/#case/{cuiyuan}" in n.body for n in to_zhou)
        # The map shows the grids and their open cases.
        status, m = await op.call("GET", "/api/map")
        assert {g["id"] for g in m["grids"]} == {"g-cuiyuan", "g-xixi", "g-east"}


# ---------------------------------------------------------------------- the alerting API (bearer tokens)

TOK = {"op": "Op7vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U", "s0": "Gs0vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U",
       "s1": "Gs1vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U", "sup": "Sup2Xk9wQp4LmZ7vR3nB8tYc5HdF1gJe"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[AlertingService, str]]:
    cfg = AlertingConfig(
        api=ApiConfig(enabled=True, port=0), receivers=[], escalation_policies=[], inhibit_rules=[],
        users=[User(name="op", role="operator", token=TOK["op"]), User(name="sup", role="supervisor", token=TOK["sup"]),
               User(name=staff_id(0), role="grid_staff", token=TOK["s0"], grids=[grid_id(0)]),
               User(name=staff_id(1), role="grid_staff", token=TOK["s1"], grids=[grid_id(1)])],
        workorders=WorkOrdersConfig(enabled=True, grids_file=str(write_grids(tmp_path / "grids.json"))))
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "s")
    task = asyncio.create_task(svc.run())
    async with asyncio.timeout(5):
        while svc.api_port is None:
            await asyncio.sleep(0.01)
    yield svc, f"http://127.0.0.1:{svc.api_port}"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    svc.store.close()


async def test_alerting_api_work_orders_roles_and_transitions(api: tuple[AlertingService, str]) -> None:
    svc, url = api
    now = time.time()
    ids = []
    for i in (0, 1):
        t = case(f"truck-{i}", i, now)
        svc.on_transitions([MqttMessage("vigil/v1/transitions/vehicle/x", encode(t), 1, False, now)])
        ids.append(svc.by_fingerprint[t.fingerprint])

    async with aiohttp.ClientSession() as http:
        async def call(who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, url + path, json=body,
                                    headers={"Authorization": f"Bearer {TOK[who]}"}) as r:
                return r.status, await r.json()

        assert (await call("s0", "GET", "/api/alerts"))[0] == 403
        assert (await call("s0", "GET", "/api/figures"))[0] == 403
        status, me = await call("s0", "GET", "/api/me")
        assert status == 200 and me["role"] == "grid_staff"
        status, lst = await call("s0", "GET", "/api/workorders")
        assert [o["id"] for o in lst["workorders"]] == [ids[0]]
        assert (await call("s0", "GET", f"/api/workorders/{ids[1]}"))[0] == 404
        assert (await call("s0", "POST", f"/api/workorders/{ids[1]}/accept", {}))[0] == 404
        assert (await call("op", "GET", "/api/workorders?stage=bogus"))[0] == 400
        status, lst = await call("op", "GET", "/api/workorders?stage=dispatched")
        assert {o["id"] for o in lst["workorders"]} == set(ids)
        assert (await call("op", "POST", f"/api/workorders/{ids[0]}/accept", {}))[0] == 403
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/close", {}))[0] == 403
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/arrive", {"lat": 0, "lon": 0}))[0] == 409
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/accept", {}))[0] == 200
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/depart", {}))[0] == 200
        lat, lon = centre(0)
        # Default mode "flag": far from the case the arrival is accepted but flagged for the centre.
        status, out = await call("s0", "POST", f"/api/workorders/{ids[0]}/arrive", {"lat": lat + 0.01, "lon": lon})
        assert status == 200 and out["workorder"]["arrive_flagged"] is True
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/handle", {"notes": "ok"}))[0] == 200
        status, out = await call("op", "POST", f"/api/workorders/{ids[0]}/verify", {"passed": False})
        assert status == 400  # a failed check says what is missing
        status, out = await call("op", "POST", f"/api/workorders/{ids[0]}/verify", {"passed": False, "note": "补照片"})
        assert status == 200 and out["workorder"]["stage"] == "on_site"
        assert (await call("s0", "POST", f"/api/workorders/{ids[0]}/handle", {"notes": "已补"}))[0] == 200
        assert (await call("op", "POST", f"/api/workorders/{ids[0]}/verify", {"passed": True}))[0] == 200
        assert (await call("op", "POST", f"/api/workorders/{ids[0]}/close", {}))[0] == 200
        assert (await call("op", "POST", f"/api/workorders/{ids[0]}/close", {}))[0] == 409
        status, detail = await call("s0", "GET", f"/api/workorders/{ids[0]}")
        assert status == 200 and detail["workorder"]["stage"] == "closed"
        # Reporting is for grid staff (and supervisors), not operators.
        body = {"category": "road_hazard", "summary": "井盖缺失", "lat": centre(1)[0], "lon": centre(1)[1]}
        assert (await call("op", "POST", "/api/workorders", body))[0] == 403
        status, out = await call("s1", "POST", "/api/workorders", body)
        assert status == 201 and out["workorder"]["grid"] == grid_id(1) and out["workorder"]["source"] == "grid_staff"
        status, grids = await call("s1", "GET", "/api/grids")
        assert [g["id"] for g in grids["grids"]] == [grid_id(1)] and grids["grids"][0]["open_cases"] == 2
        status, f = await call("op", "GET", "/api/workorders/figures")
        assert status == 200 and f["total"] == 3 and f["closed"] == 1 and f["arrive_flagged"] == 1
        status, f = await call("s1", "GET", "/api/workorders/figures")
        assert f["total"] == 2
