"""Issue 14 #11: query parameters of both HTTP APIs.

The attacks: ``limit=x`` gave a 500 (``/api/notifications``), ``limit=-1`` gave every row (SQLite's
``LIMIT -1``; the console's audit log), ``nan``/``inf``/huge times crashed datetime conversions or asked for
unbounded work. Every parameter is now checked: 400 with a message naming it, bounded maxima.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerting.config import AlertingConfig, ApiConfig, Person, User
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, utcnow
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from tests.support.console_stack import ConsoleStack, token_of, wait_until

TOKEN = "Jx8vQ2mZr5TqW9cLbN3hYf7KdA1sPe6U"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, AlertingService]]:
    cfg = AlertingConfig(api=ApiConfig(enabled=True, port=0), users=[User(name="ops", role="admin", token=TOKEN)],
                         receivers=[], people=[Person(id="op", roles=["operator"])], escalation_policies=[],
                         inhibit_rules=[])
    svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "unused"), state_dir=tmp_path / "s")
    task = asyncio.create_task(svc.run())
    async with asyncio.timeout(5):
        while svc.api_port is None:
            await asyncio.sleep(0.01)
    for i in range(3):
        now = utcnow()
        t = Transition(ts=now, fingerprint=f"f{i}", rule="r", status="firing", severity=Severity.MAJOR,
                       kind=Kind.ELEVATOR, device_id=f"elv-{i}", site="s", summary="x", source_ts=now)
        svc.on_transitions([MqttMessage("vigil/v1/transitions/elevator/x", encode(t), 1, False, 0.0)])
    yield f"http://127.0.0.1:{svc.api_port}", svc
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    svc.store.close()


ALERTING_BAD = [
    ("/api/alerts", "limit", "x"), ("/api/alerts", "limit", "-1"), ("/api/alerts", "limit", "0"),
    ("/api/alerts", "limit", "5001"), ("/api/alerts", "limit", "1e3"), ("/api/alerts", "limit", "99999999999999"),
    ("/api/alerts", "offset", "-5"), ("/api/alerts", "offset", "y"), ("/api/alerts", "since", "nan"),
    ("/api/alerts", "since", "inf"), ("/api/alerts", "since", "1e300"), ("/api/alerts", "until", "-1"),
    ("/api/alerts", "since", "2026-13-40"), ("/api/alerts", "since", "2026-12-01T00:00:00"),
    ("/api/alerts", "status", "firing,bogus"), ("/api/alerts", "severity", "apocalyptic"),
    ("/api/alerts", "site", "x" * 201), ("/api/alerts", "site", "a\nb"),
    ("/api/notifications", "limit", "x"), ("/api/notifications", "limit", "-1"),
    ("/api/notifications", "status", "everything"), ("/api/notifications", "alert_id", "x" * 200),
    ("/api/figures", "since", "nan"), ("/api/figures", "until", "tomorrow"), ("/api/oncall", "at", "inf"),
    ("/api/oncall", "unit", "u" * 300),
]


async def test_alerting_api_parameters_are_validated(api: tuple[str, AlertingService]) -> None:
    url, _ = api
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for path, name, value in ALERTING_BAD:
            async with http.get(url + path, params={name: value}) as resp:
                body: dict[str, Any] = await resp.json()
                assert resp.status == 400, (path, name, value, resp.status, body)
                assert body["error"] == "invalid" and name in body["message"], (path, name, body)
        # The bounds hold and the defaults still work.
        async with http.get(url + "/api/alerts", params={"limit": "2"}) as resp:
            assert resp.status == 200 and (await resp.json())["count"] == 2
        async with http.get(url + "/api/alerts", params={"limit": "5000", "offset": "1", "status": "firing",
                                                          "since": "2020-01-01T00:00:00Z"}) as resp:
            assert resp.status == 200 and (await resp.json())["count"] == 2
        async with http.get(url + "/api/notifications", params={"limit": "1", "status": "dead"}) as resp:
            assert resp.status == 200
        for bad in ("abc", "-1", "1.5", "99999999999999999999"):
            async with http.get(f"{url}/api/notifications/{bad}") as resp:
                assert resp.status == 404, bad


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path / "stack") as st:
        yield st


CONSOLE_BAD = [
    ("/api/board", "limit", "x"), ("/api/board", "limit", "-1"), ("/api/board", "limit", "100000"),
    ("/api/board", "offset", "-1"), ("/api/board", "status", "bogus"), ("/api/board", "sort", "evil"),
    ("/api/audit", "limit", "-1"), ("/api/audit", "limit", "x"), ("/api/audit", "limit", "2001"),
    ("/api/audit", "user", "u" * 101), ("/api/figures", "days", "x"), ("/api/figures", "days", "-1"),
    ("/api/figures", "days", "93"), ("/api/figures", "days", "1e1"), ("/api/devices", "online", "maybe"),
    ("/api/devices", "q", "q" * 101), ("/api/devices/elev-0001/series", "since", "nan"),
    ("/api/devices/elev-0001/series", "until", "inf"), ("/api/devices/elev-0001/series", "since", "0"),
    ("/api/devices/elev-0001/series", "since", "9999999999999"),
    ("/api/alerts/{aid}/series", "before", "nan"), ("/api/alerts/{aid}/series", "before", "-1"),
    ("/api/alerts/{aid}/series", "after", "1e12"), ("/api/alerts/{aid}/series", "after", "x"),
]


async def test_console_parameters_are_validated(stack: ConsoleStack) -> None:
    before = set(stack.alerting.open)
    await stack.event("elevator", "elev-0001", "trapped_passenger")
    aid = next(iter(await wait_until(lambda: set(stack.alerting.open) - before, 5, "an alert")))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_of('admin')}"}) as http:
        for path, name, value in CONSOLE_BAD:
            async with http.get(stack.url + path.format(aid=aid), params={name: value}) as resp:
                body: dict[str, Any] = await resp.json()
                assert resp.status == 400, (path, name, value, resp.status, body)
                assert body["error"] == "invalid" and name in body["message"], (path, name, body)
        async with http.get(f"{stack.url}/api/audit", params={"limit": "1"}) as resp:
            assert resp.status == 200 and len((await resp.json())["entries"]) <= 1
        async with http.get(f"{stack.url}/api/alerts/{aid}/series", params={"before": "60"}) as resp:
            assert resp.status == 200
