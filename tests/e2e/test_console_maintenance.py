"""Recurring maintenance windows from the console, and labels in both languages.

Over real HTTP on a whole platform (Mosquitto, rules, alerting, console): who may create a window,
what is refused, that it is stored and listed, and deleted. In Debian's Chromium (Playwright): a
supervisor creates a weekly window for a site from the silences page and sees it listed; a
trapped-passenger alert from that site is then muted (marked on the board and the detail, no
banner, nothing delivered) while the same alert from another site is delivered; the Chinese figures
page shows translated kinds and industries (no raw ``elevator``). Screenshots go to
``test-artifacts/console/``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from alerting.config import AlertingConfig, ApiConfig, Route, User
from alerting.desk import Actor, DeskError
from alerting.muting import MaintenanceCalendar, MaintenanceEntry
from alerting.service import AlertingService
from broker.mqtt import MqttClient
from tests.support.console_stack import ConsoleStack, pretty, token_of, wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SH = ZoneInfo("Asia/Shanghai")
# A config-file window on a site the tests do not raise alerts for: listed, not deletable.
CONFIG_WINDOW = {"maintenance": [{"name": "车队例检", "matchers": ["site=depot-east"], "start": "03:00",
                                  "duration_min": 90, "weekdays": [6]}]}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path, alerting_options=CONFIG_WINDOW) as st:
        yield st


def window_now() -> tuple[int, str, str]:
    """Weekday, start and end (Shanghai) of a window open now: started an hour ago, ends in two."""
    start = datetime.now(SH) - timedelta(hours=1)
    end = start + timedelta(hours=3)
    return start.weekday(), start.strftime("%H:%M"), end.strftime("%H:%M")


# ---------------------------------------------------------------------- the calendar (pure)

def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=SH).timestamp()


def test_runtime_window_with_until_date_and_expiry() -> None:
    # Tuesdays 23:00 for 120 min, until Tuesday 2026-12-08 (its occurrence still runs past midnight).
    cal = MaintenanceCalendar([])
    cal.put(MaintenanceEntry(id="m1", name="年检", matchers=["site=t1"], start="23:00", duration_min=120,
                             weekdays=[1], until="2026-12-08"))
    lab = {"site": "t1"}
    assert cal.mute_reason("a", lab, at(2026, 12, 1, 23, 30)) is not None
    assert cal.mute_reason("a", lab, at(2026, 12, 9, 0, 30)) is not None  # the last occurrence, after midnight
    assert cal.mute_reason("a", lab, at(2026, 12, 15, 23, 30)) is None  # after the until date
    assert cal.mute_reason("a", {"site": "t2"}, at(2026, 12, 1, 23, 30)) is None
    assert cal.expired(at(2026, 12, 9, 0, 59)) == []
    assert cal.expired(at(2026, 12, 9, 2, 0)) == ["m1"]
    assert cal.remove("m1") is not None and cal.mute_reason("a", lab, at(2026, 12, 1, 23, 30)) is None


def test_runtime_windows_survive_a_restart_and_leave_after_their_last_day(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = AlertingConfig(users=[User(name="lead", token="t" * 32, role="supervisor")], api=ApiConfig(enabled=False),
                         receivers=[], inhibit_rules=[], route=Route(name="root"))
    state = tmp_path / "alerting"
    lead = Actor("lead", "supervisor")
    now = time.time()
    first = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "m1"), state_dir=state, clock=lambda: now)
    last_day = datetime.fromtimestamp(now, SH).strftime("%Y-%m-%d")
    kept = first.desk.create_maintenance(lead, "每日巡检", ["site=s1"], list(range(7)), "00:00", 1440, until=last_day)
    with pytest.raises(DeskError) as refused:
        first.desk.create_maintenance(Actor("op", "operator"), "x", ["site=s1"], [0], "02:00", 60)
    assert refused.value.status == 403
    first.store.kv_put("maintenance", "mbroken", '{"id": "mbroken", "name": "x"}')  # unreadable: ignored, not fatal
    first.store.db.commit()
    first.store.close()

    again = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "m2"), state_dir=state, clock=lambda: now)
    assert list(again.maintenance.entries) == [kept.id]
    reason = again.muter.mute_reason("a", {"site": "s1"}, now)
    assert reason is not None and (reason.kind, reason.id) == ("maintenance", "每日巡检")
    assert "ignoring unreadable maintenance window" in caplog.text
    again.tick(now + 2 * 86400 + 60)  # its last occurrence (today, 24 h) is over: the window goes
    assert again.maintenance.entries == {} and list(again.store.kv_all("maintenance")) == ["mbroken"]
    again.store.close()


# ---------------------------------------------------------------------- the HTTP route

async def test_maintenance_route_permissions_validation_storage_and_audit(stack: ConsoleStack) -> None:
    day, start, end = window_now()
    good = {"name": "翠苑三区电梯年检", "matchers": ["site=cuiyuan-3"], "weekdays": [day], "start": start, "end": end,
            "timezone": "Asia/Shanghai", "until": (datetime.now(SH) + timedelta(days=30)).strftime("%Y-%m-%d")}
    url = f"{stack.url}/api/maintenance"
    async with stack.http() as op, stack.http() as lead:
        op_csrf = await stack.login(op, "op-wang")
        lead_csrf = await stack.login(lead, "lead-li")
        async with op.post(url, json=good, headers={"X-CSRF-Token": op_csrf}) as r:
            assert r.status == 403, await r.text()
        async with lead.post(url, json=good) as r:  # no CSRF token
            assert r.status == 403 and (await r.json())["error"] == "csrf"
        bad = [{"weekdays": [7]}, {"weekdays": []}, {"weekdays": [True]}, {"start": "25:00"}, {"end": "7pm"},
               {"timezone": "Mars/Olympus"}, {"timezone": "../../etc/passwd"}, {"until": "2020-01-01"},
               {"until": "someday"}, {"matchers": []}, {"matchers": ["site~x"]}, {"name": ""}, {"matchers": "site=x"}]
        for change in bad:
            async with lead.post(url, json=good | change, headers={"X-CSRF-Token": lead_csrf}) as r:
                body = await r.json()
                assert r.status == 400, f"{change}: {r.status} {pretty(body)}"
                assert body["error"] == "invalid" and body["message"]
        assert stack.alerting.maintenance.entries == {}
        async with lead.post(url, json=good, headers={"X-CSRF-Token": lead_csrf}) as r:
            assert r.status == 201, await r.text()
            created = (await r.json())["maintenance"]
        async with lead.post(url, json=good, headers={"X-CSRF-Token": lead_csrf}) as r:
            assert r.status == 409  # names are unique
        async with lead.post(url, json=good | {"name": "车队例检"}, headers={"X-CSRF-Token": lead_csrf}) as r:
            assert r.status == 409  # also against the config file's windows
        assert created["author"] == "lead-li" and created["weekdays"] == [day] and created["start"] == start
        assert created["duration_min"] == 180.0
        stored = stack.alerting.store.kv_all("maintenance")
        assert msgspec.json.decode(stored[created["id"]], type=MaintenanceEntry).name == "翠苑三区电梯年检"
        async with op.get(f"{stack.url}/api/silences") as r:  # everyone sees the windows
            listed = {m["name"]: m for m in (await r.json())["maintenance"]}
        assert listed["翠苑三区电梯年检"]["open"] is True and listed["翠苑三区电梯年检"]["source"] == "runtime"
        assert listed["车队例检"]["source"] == "config" and listed["车队例检"]["id"] is None
        mine = stack.alerting.maintenance.mute_reason("x", {"site": "cuiyuan-3"}, time.time())
        assert mine is not None and (mine.kind, mine.id) == ("maintenance", "翠苑三区电梯年检")
        target = f"{url}/{created['id']}"
        async with op.delete(target, headers={"X-CSRF-Token": op_csrf}) as r:
            assert r.status == 403
        async with lead.delete(target, headers={"X-CSRF-Token": lead_csrf}) as r:
            assert r.status == 200, await r.text()
        async with lead.delete(target, headers={"X-CSRF-Token": lead_csrf}) as r:
            assert r.status == 404
        assert stack.alerting.store.kv_all("maintenance") == {} and stack.alerting.maintenance.entries == {}
    assert stack.console is not None
    audit = {(e["user"], e["action"], e["outcome"]) for e in stack.console.journal.audit_log()}
    assert {("lead-li", "POST /api/maintenance", 201), ("op-wang", "POST /api/maintenance", 403),
            ("lead-li", "DELETE /api/maintenance/{id}", 200)} <= audit


# ---------------------------------------------------------------------- in the browser

@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    pw = pytest.importorskip("playwright.async_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    async with pw.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Any, url: str, user: str) -> Any:
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(url)
    await page.wait_for_selector("#login-form")
    await page.fill("#login-user", user)
    await page.fill("#login-pass", token_of(user))
    await page.click("#login-submit")
    await page.wait_for_selector("#board-rows")
    await page.wait_for_selector("#live.on")
    return page


async def shot(page: Any, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


async def test_supervisor_creates_a_weekly_window_and_the_site_is_muted(stack: ConsoleStack, browser: Any) -> None:
    li = await open_page(browser, stack.url, "lead-li")
    await li.goto(f"{stack.url}/#/silences")
    form = li.locator("#maint-form")
    await form.wait_for()
    assert "车队例检" in await li.inner_text("#maint-table")  # the config file's window is listed
    assert await li.locator('#maint-table tr[data-name="车队例检"] .act-delete-maint').count() == 0

    day, start, end = window_now()
    until = (datetime.now(SH) + timedelta(days=60)).strftime("%Y-%m-%d")
    await form.locator("input[name=name]").fill("翠苑三区电梯年检")
    await form.locator("select[name=site]").select_option("cuiyuan-3")
    await form.locator("select[name=kind]").select_option("elevator")
    await form.locator(f'input[name=weekday][value="{day}"]').check()
    await form.locator("input[name=start]").fill(start)
    await form.locator("input[name=end]").fill(end)
    await form.locator("input[name=until]").fill(until)
    await form.locator("input[name=comment]").fill("每周电梯维保, 维保期间不通知")
    await shot(li, "10-maintenance-form", full_page=True)
    await li.click("#maint-submit")
    row = li.locator('#maint-table tr[data-name="翠苑三区电梯年检"]')
    await row.wait_for()
    assert await li.input_value("#maint-form input[name=start]") == "02:00"  # a fresh form for the next one
    text = await row.inner_text()
    weekday_zh = ["周一", "周二", "周三", "周四", "周五", "周六", "周日"][day]
    for part in ("site=cuiyuan-3", "kind=elevator", weekday_zh, start, end, until, "进行中", "lead-li"):
        assert part in text, f"{part!r} not in the listed window: {text!r}"
    [entry] = stack.alerting.maintenance.entries.values()
    assert (entry.author, entry.weekdays, entry.start, entry.until) == ("lead-li", [day], start, until)
    assert entry.matchers == ["site=cuiyuan-3", "kind=elevator"]
    await shot(li, "11-maintenance-listed", full_page=True)

    # A critical alert from that site during the window: on the board, marked muted, no banner, not delivered.
    await li.goto(f"{stack.url}/#/board")
    await li.wait_for_selector("#board-rows")
    await stack.event("elevator", "elev-0001", "trapped_passenger", message="轿厢困人 1 人")
    muted_row = li.locator("#board-rows tr[data-id]")
    await muted_row.first.wait_for(timeout=5000)
    assert "维护窗口" in await muted_row.first.locator(".muted-tag").inner_text()
    muted_id = await muted_row.first.get_attribute("data-id")
    assert await li.locator("#banner").is_hidden()
    await wait_until(lambda: stack.alerting.counters["muted_maintenance"] >= 1, 5, "the alert to be muted")

    # The same alert from another site is delivered: so nothing from the muted one was just late.
    assert stack.inbox is not None
    before = len(stack.inbox.received)
    await stack.event("elevator", "elev-0002", "trapped_passenger", message="轿厢困人 2 人")
    await stack.inbox.wait_for(before + 1, timeout=10)
    await li.wait_for_selector("#banner:not([hidden])", timeout=5000)
    assert "西溪华府" in await li.inner_text("#banner")
    delivered = " ".join(r.title + r.body for r in stack.inbox.received)
    assert "西溪华府" in delivered and "翠苑" not in delivered, delivered
    assert stack.alerting.store.notifications(alert_id=muted_id) == []
    await li.locator("#board-rows tr[data-id]").nth(1).wait_for()
    assert await li.locator(f'#board-rows tr[data-id="{muted_id}"] .muted-tag').count() == 1
    assert await li.locator("#board-rows .muted-tag").count() == 1  # the other site's alert is not muted
    await shot(li, "12-board-muted-by-maintenance")

    await li.click(f'#board-rows tr[data-id="{muted_id}"] td.summary a')
    await li.wait_for_selector("#detail-muted")
    assert "维护窗口" in await li.inner_text("#detail-muted") and "翠苑三区电梯年检" in await li.inner_text("#detail-muted")
    await li.wait_for_selector("#timeline li.ev-created")
    await shot(li, "13-alert-muted-detail", full_page=True)

    # The Chinese figures page: kinds and industries by label, never the raw key.
    await li.goto(f"{stack.url}/#/figures")
    await li.wait_for_selector("#fig-kind svg rect")
    view = await li.text_content("#view") or ""
    assert "电梯" in await li.text_content("#fig-kind") and "电梯运行" in await li.inner_text("#fig-industry")
    assert "elevator" not in view, view[:2000]
    await shot(li, "14-figures-zh-labels", full_page=True)
    await li.click("#lang")
    await li.wait_for_selector("text=By device kind")
    assert "Elevator" in await li.text_content("#fig-kind") and "elevator" not in (await li.text_content("#view") or "")
    await shot(li, "15-figures-en-labels", full_page=True)
    await li.click("#lang")  # back to Chinese for the rest

    # An operator sees the windows but no form; the supervisor deletes the window from the page.
    wang = await open_page(browser, stack.url, "op-wang")
    await wang.goto(f"{stack.url}/#/silences")
    await wang.wait_for_selector('#maint-table tr[data-name="翠苑三区电梯年检"]')
    assert await wang.locator("#maint-form").count() == 0
    assert await wang.locator(".act-delete-maint").count() == 0
    await li.goto(f"{stack.url}/#/silences")
    await li.click('#maint-table tr[data-name="翠苑三区电梯年检"] .act-delete-maint')
    await li.click("#dialog-ok")
    await li.locator('#maint-table tr[data-name="翠苑三区电梯年检"]').wait_for(state="detached")
    assert stack.alerting.maintenance.entries == {} and stack.alerting.store.kv_all("maintenance") == {}

    # The audit log and the device list speak Chinese too: actions, roles and kinds by label.
    await li.goto(f"{stack.url}/#/audit")
    await li.wait_for_selector("text=删除维护窗口")
    audit = await li.inner_text("#view")
    assert "值班长\t新建维护窗口\t/api/maintenance\t201" in audit and "POST /api/maintenance" not in audit
    await shot(li, "16-audit-labels")
    await li.goto(f"{stack.url}/#/devices")
    await li.wait_for_selector("#device-rows tr[data-id=truck-0001]")
    devices = await li.inner_text("#device-rows")
    assert "车辆" in devices and "电梯" in devices and "vehicle" not in devices and "elevator" not in devices
    assert not li.errors and not wang.errors, li.errors + wang.errors
