"""The alerting HTTP API over a real socket: auth and roles, alert handling, silences, duty, figures, push hook."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerting.config import AlertingConfig, ApiConfig, Person, Receiver, Retry, Roster, Route, User
from alerting.service import AlertingService
from broker.contracts import Alert, Kind, Severity, Transition, encode, utcnow
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient

SECRET_URL = "mailto://duty:hunter22pw@smtp.example.com:587?to=a@example.com"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AlertingService]:
    cfg = AlertingConfig(
        receivers=[Receiver(name="room", urls=["json://127.0.0.1:9/none"])],
        people=[Person(id="zhang", name="张三", roles=["operator"], unit="u1", channels=[SECRET_URL]),
                Person(id="li", roles=["operator"], unit="u1")],
        rosters=[Roster(name="u1-ops", role="operator", unit="u1", members=["zhang", "li"], anchor="2026-01-05")],
        route=Route(name="root", receivers=["room"], group_wait_s=0.0), escalation_policies=[], inhibit_rules=[],
        retry=Retry(attempts=2, backoff_s=0.01, timeout_s=2.0),
        api=ApiConfig(enabled=True, port=0),
        users=[User(name="zhang", role="operator", token="tok-op", unit="u1"),
               User(name="wang", role="operator", token="tok-op2", unit="u2"),
               User(name="sup", role="supervisor", token="tok-sup")])
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


def fire(svc: AlertingService, device: str, unit_label: str = "u1") -> str:
    now = utcnow()
    t = Transition(ts=now, fingerprint=f"f:{device}", rule="trapped_passenger", status="firing",
                   severity=Severity.CRITICAL, kind=Kind.ELEVATOR, device_id=device, site="tower-a",
                   labels={"unit": unit_label, "industry": "elevator"}, summary="困人", source_ts=now)
    svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/x", encode(t), 1, False, 0.0)])
    return svc.by_fingerprint[f"f:{device}"]


class Api:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.s, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, token: str | None = "tok-op", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.s.request(method, self.base + path, headers=headers, **kw) as r:
            return r.status, await r.json()


@pytest.fixture
async def api(service: AlertingService) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as s:
        assert service.api_port is not None
        yield Api(s, service.api_port)


async def test_auth_and_openapi(api: Api) -> None:
    status, doc = await api.call("GET", "/api/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.") and "/api/alerts/{id}/ack" in doc["paths"]
    assert (await api.call("GET", "/api/alerts", token=None))[0] == 401
    assert (await api.call("GET", "/api/alerts", token="wrong"))[0] == 401
    status, me = await api.call("GET", "/api/me")
    assert me == {"name": "zhang", "role": "operator", "unit": "u1"}


async def test_alert_handling_and_timeline(api: Api, service: AlertingService) -> None:
    aid = fire(service, "elv-1")
    status, body = await api.call("GET", "/api/alerts?status=firing&unit=u1")
    assert status == 200 and [a["id"] for a in body["alerts"]] == [aid]
    assert body["alerts"][0]["ack_by"] is not None
    status, body = await api.call("POST", f"/api/alerts/{aid}/ack", json={"note": "去现场"})
    assert status == 200 and body["alert"]["status"] == "acknowledged" and body["alert"]["acknowledged_by"] == "zhang"
    assert (await api.call("POST", f"/api/alerts/{aid}/ack", json={}))[0] == 409
    assert (await api.call("POST", f"/api/alerts/{aid}/comment", json={"text": "救援到达"}))[0] == 200
    status, body = await api.call("POST", f"/api/alerts/{aid}/assign", json={"assignee": "li", "unit": "u1"})
    assert body["alert"]["assignee"] == "li"
    assert (await api.call("POST", f"/api/alerts/{aid}/severity", json={"severity": "bogus"}))[0] == 400
    assert (await api.call("POST", f"/api/alerts/{aid}/resolve", json={}))[0] == 400
    status, body = await api.call("POST", f"/api/alerts/{aid}/resolve", json={"reason": "乘客已解救"})
    assert body["alert"]["status"] == "resolved" and body["alert"]["reason"] == "乘客已解救"
    status, body = await api.call("GET", f"/api/alerts/{aid}")
    assert [e["action"] for e in body["timeline"]] == ["created", "acknowledged", "commented", "assigned", "closed"]
    assert body["timeline"][1]["actor"] == "zhang"
    assert (await api.call("GET", "/api/alerts/nope"))[0] == 404
    status, figs = await api.call("GET", "/api/figures?since=2020-01-01T00:00:00Z")
    assert figs["total"] == 1 and figs["closure_rate"] == 1.0 and figs["mtta_s"] is not None


async def test_operator_limits(api: Api, service: AlertingService) -> None:
    aid = fire(service, "elv-2", unit_label="u1")
    status, body = await api.call("POST", f"/api/alerts/{aid}/ack", token="tok-op2")
    assert status == 403 and body["error"] == "forbidden"
    status, _ = await api.call("POST", "/api/silences", json={"matchers": ["site=tower-a"],
                                                              "ends_at": "2099-01-01T00:00:00Z"})
    assert status == 403
    status, body = await api.call("POST", "/api/silences", json={"matchers": ["unit=u1", "site=tower-a"],
                                                                 "ends_at": "2099-01-01T00:00:00Z",
                                                                 "comment": "演练"})
    assert status == 201
    sid = body["silence"]["id"]
    assert (await api.call("DELETE", f"/api/silences/{sid}", token="tok-op2"))[0] == 403
    status, body = await api.call("GET", "/api/silences")
    assert [s["id"] for s in body["silences"]] == [sid] and body["silences"][0]["author"] == "zhang"
    assert (await api.call("DELETE", f"/api/silences/{sid}"))[0] == 200
    override = {"roster": "u1-ops", "person": "li", "starts_at": "2026-01-01T00:00:00Z",
                "ends_at": "2099-01-01T00:00:00Z", "reason": "换班"}
    assert (await api.call("POST", "/api/rosters/overrides", json=override))[0] == 403
    status, body = await api.call("POST", "/api/rosters/overrides", token="tok-sup", json=override)
    assert status == 201
    status, body = await api.call("GET", "/api/oncall?unit=u1&role=operator")
    assert [d["person"] for d in body["on_duty"]] == ["li"] and body["on_duty"][0]["override"]


async def test_secrets_never_in_responses(api: Api, service: AlertingService) -> None:
    fire(service, "elv-3")
    await asyncio.sleep(0.3)
    for path in ("/api/rosters", "/api/notifications", "/api/stats", "/api/alerts"):
        status, body = await api.call("GET", path)
        assert status == 200 and "hunter22pw" not in str(body)
    status, body = await api.call("GET", "/api/rosters")
    assert body["people"][0]["channels"] == ["mailto://***@smtp.example.com:587/..."]


async def test_watch_hook_streams_changes(service: AlertingService) -> None:
    got: list[Alert] = []

    async def consume() -> None:
        async for a in service.watch():
            got.append(a)
            if len(got) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    aid = fire(service, "elv-4")
    from alerting.desk import Actor

    service.desk.acknowledge(aid, Actor("zhang", "operator", "u1"))
    async with asyncio.timeout(2):
        await task
    assert [(a.id, a.status) for a in got] == [(aid, "firing"), (aid, "acknowledged")]


async def test_silence_update_and_notification_log(api: Api, service: AlertingService) -> None:
    status, body = await api.call("POST", "/api/silences", token="tok-sup",
                                  json={"matchers": ["site=tower-a"], "ends_at": "2099-01-01T00:00:00Z"})
    sid = body["silence"]["id"]
    status, body = await api.call("PUT", f"/api/silences/{sid}", token="tok-sup",
                                  json={"matchers": ["site=tower-b"], "ends_at": 4102444800})
    assert status == 200 and body["silence"]["matchers"] == ["site=tower-b"]
    assert (await api.call("PUT", "/api/silences/nope", token="tok-sup",
                           json={"matchers": ["a=b"], "ends_at": 4102444800}))[0] == 404
    assert (await api.call("POST", "/api/silences", token="tok-sup",
                           json={"matchers": ["a=~("], "ends_at": 4102444800}))[0] == 400
    # a notification to the room receiver (an unreachable json:// URL) ends in the dead-letter list
    fire(service, "elv-5")
    async with asyncio.timeout(10):
        while True:
            status, body = await api.call("GET", "/api/notifications?status=dead")
            if body["notifications"]:
                break
            await asyncio.sleep(0.1)
    row = body["notifications"][0]
    assert row["channel"] == "json://***@127.0.0.1:9/..."
    status, one = await api.call("GET", f"/api/notifications/{row['id']}")
    assert status == 200 and len(one["attempts"]) == service.config.retry.attempts
    assert all(not a["ok"] and "127.0.0.1:9/none" not in str(a) for a in one["attempts"])
