"""The operator console in a real headless browser (Debian's Chromium driven by Playwright).

Two operators log in; a device publishes a trapped-passenger event; the alert appears on the
first operator's board within 2 seconds by server push, with the critical banner and a beep; the
first operator acknowledges it in one click and the second operator's page shows the new state;
the detail shows the evidence snapshot, the telemetry chart and the timeline; a silence is
created. Screenshots of the main screens go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from console.config import DEMO_LAYERS
from tests.support.console_stack import ConsoleStack, token_of, wait_until

pw = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    console = {"map": {
        "layers_file": DEMO_LAYERS,
        "geofences": [{"name": "化工园区禁入区", "coordinates": [[120.185, 30.286], [120.200, 30.286], [120.200, 30.298],
                                                          [120.185, 30.298], [120.185, 30.286]]}],
        "routes": [{"name": "危化品核准线路", "kind": "road", "coordinates": [[120.15, 30.28], [120.17, 30.285],
                                                                        [120.195, 30.29], [120.213, 30.292]]}]}}
    async with ConsoleStack(tmp_path, with_storage=True, console_options=console) as st:
        yield st


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with pw.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Any, url: str, user: str, login_shot: str | None = None) -> Any:
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(url)
    await page.wait_for_selector("#login-form")
    if login_shot:
        await shot(page, login_shot)
    await page.fill("#login-user", user)
    await page.fill("#login-pass", token_of(user))
    await page.click("#login-submit")
    await page.wait_for_selector("#board-rows")
    await page.wait_for_selector("#live.on")
    return page


async def shot(page: Any, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


async def test_operators_take_an_alert_through_the_console(stack: ConsoleStack, browser: Any) -> None:
    now = time.time()
    # Some history for the chart and the map: the elevator moving, a truck driving east.
    for i in range(40):
        t = now - 200 + i * 5
        await stack.telemetry("elevator", "elev-0001", {
            "speed_mps": round(1.0 + 0.6 * ((i % 8) / 8), 2), "floor": 2 + i % 10, "door": "closed",
            "occupancy": 2, "door_zone": i % 4 == 0, "direction": "up"}, ts=t)
        await stack.telemetry("vehicle", "truck-0001", {
            "lat": 30.2800 + i * 0.0004, "lon": 120.1500 + i * 0.0012, "speed_kmh": 55.0 + i % 7, "heading_deg": 70,
            "gnss_fixed": True, "ignition": True}, ts=t)
    await stack.telemetry("elevator", "elev-0002", {"speed_mps": 0.0, "floor": 1, "door": "open", "occupancy": 0})
    await wait_until(lambda: len(stack.console.live.devices) >= 3, 5, "live device state")  # type: ignore[union-attr]

    wang = await open_page(browser, stack.url, "op-wang", login_shot="00-login")
    li = await open_page(browser, stack.url, "lead-li")
    assert await wang.locator("#board-rows tr[data-id]").count() == 0

    # A device publish raises a critical alert: it is on the board within 2 s without reloading.
    t0 = time.monotonic()
    await stack.event("elevator", "elev-0001", "trapped_passenger", message="轿厢困人 2 人")
    await wang.wait_for_selector("#board-rows tr[data-id]", timeout=2000)
    appeared = time.monotonic() - t0
    assert appeared < 2.0, f"alert took {appeared:.2f} s to appear"
    await wang.wait_for_selector("#banner:not([hidden])", timeout=2000)
    assert "电梯困人" in await wang.inner_text("#banner")
    assert await wang.evaluate("window.__vigilBeeps || 0") >= 1, "no beep for a new critical alert"
    await li.wait_for_selector("#board-rows tr[data-id] .st-firing", timeout=2000)
    await shot(wang, "01-board-critical")

    # Operator Wang takes it in one click; supervisor Li sees the state change live.
    alert_id = await wang.get_attribute("#board-rows tr[data-id]", "data-id")
    await wang.click(f'#board-rows tr[data-id="{alert_id}"] .act-ack')
    await li.wait_for_selector(f'#board-rows tr[data-id="{alert_id}"] .st-acknowledged', timeout=3000)
    await li.wait_for_selector("#banner", state="hidden", timeout=3000)
    rec = stack.alerting.open[alert_id]
    assert rec.acknowledged_by == "op-wang"
    await shot(li, "02-board-acknowledged-second-operator")

    # The detail: rule and values, evidence snapshot of the device state, chart, place, timeline.
    await wang.click(f'#board-rows tr[data-id="{alert_id}"] td.summary a')
    await wang.wait_for_selector("#evidence table.kv")
    await wang.wait_for_selector("#chart svg path.series")
    await wang.wait_for_selector("#place svg .device.focus")
    await wang.wait_for_selector("#timeline li.ev-acknowledged")
    evidence = await wang.inner_text("#evidence")
    assert "speed_mps" in evidence and "occupancy" in evidence
    assert "op-wang" in await wang.inner_text("#timeline")
    await wang.wait_for_selector("#timeline li.note")
    await shot(wang, "03-alert-detail", full_page=True)

    # A silence for the other elevator.
    await wang.goto(f"{stack.url}/#/silences")
    await wang.click("#new-silence")
    await wang.fill("#dialog textarea[name=matchers]", "unit=市场监管局\ndevice_id=elev-0002")
    await wang.fill("#dialog input[name=comment]", "电梯年检")
    await wang.click("#dialog-ok")
    await wang.wait_for_selector("#silence-table tbody tr[data-id]")
    assert "device_id=elev-0002" in await wang.inner_text("#silence-table")
    silences = list(stack.alerting.silences.entries.values())
    assert [s.author for s in silences] == ["op-wang"]
    await shot(wang, "04-silences")

    # The other screens render with live data.
    await li.goto(f"{stack.url}/#/map")
    await li.wait_for_selector("#map svg .track")
    await li.wait_for_selector("#map svg .marker")
    assert await li.locator("#map svg .geofence").count() == 1 and await li.locator("#map svg .route").count() == 1
    assert await li.locator("#map svg .feat-water").count() == 2
    await shot(li, "05-map")
    await li.goto(f"{stack.url}/#/devices")
    await li.wait_for_selector("#device-rows tr[data-id=truck-0001]")
    await shot(li, "06-devices")
    await li.click("#device-rows tr[data-id=truck-0001] a")
    await li.wait_for_selector(".view-device svg path.series", state="attached")
    await shot(li, "06b-device-history", full_page=True)
    await li.goto(f"{stack.url}/#/duty")
    await li.wait_for_selector("#on-duty table")
    await shot(li, "07-duty")
    await li.goto(f"{stack.url}/#/figures")
    await li.wait_for_selector("#today-total")
    assert (await li.inner_text("#today-total .fig-value")).strip() == "1"
    await shot(li, "08-figures")
    await li.click("#lang")
    await li.wait_for_selector("text=Alerts per day")
    await shot(li, "09-figures-english")

    # The audit trail holds both operators' actions.
    entries = stack.console.journal.audit_log()  # type: ignore[union-attr]
    actions = {(e["user"], e["action"], e["outcome"]) for e in entries}
    assert ("op-wang", "POST /api/alerts/{id}/{action}", 200) in actions
    assert ("op-wang", "POST /api/silences", 201) in actions
    assert not wang.errors and not li.errors, wang.errors + li.errors
