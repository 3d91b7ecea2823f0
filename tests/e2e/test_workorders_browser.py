"""The phone page (H5) in real Chromium with mobile emulation: a grid staff member takes a case to the
site and handles it with a photo; the centre verifies and closes it; the work-order figures move.

Debian's Chromium driven by Playwright (as tests/e2e/test_console_browser.py), a Pixel 5 profile
(touch, small viewport), the browser's geolocation emulated at the elevator's tower. Screenshots go to
``test-artifacts/workorders/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from alerting.desk import Actor
from tests.integration.workorder_rig import CUIYUAN_3, STACK_STAFF, XIXI_TOWER, stack_options
from tests.support.console_stack import ConsoleStack, token_of, wait_until

pw = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "workorders"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ConsoleStack]:
    async with ConsoleStack(tmp_path / "stack", alerting_options=stack_options(tmp_path / "wo")) as st:
        yield st


@pytest.fixture
async def playwright() -> AsyncIterator[tuple[Any, Any]]:
    async with pw.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield p, b
        finally:
            await b.close()


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def phone(p: Any, browser: Any, url: str, user: str, token: str, where: tuple[float, float] | None = None,
                link: str = "") -> Any:
    profile = dict(p.devices["Pixel 5"])
    ctx = await browser.new_context(**profile, locale="zh-CN",
                                    geolocation={"latitude": where[0], "longitude": where[1], "accuracy": 15}
                                    if where else None, permissions=["geolocation"] if where else [])
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(url + "/h5/" + link)
    await page.wait_for_selector("#login-form")
    await page.fill("#login-user", user)
    await page.fill("#login-pass", token)
    await page.click("#login-submit")
    await page.wait_for_selector("#app:not([hidden])")
    return page


async def stage_is(page: Any, text: str) -> None:
    await page.wait_for_function("t => document.querySelector('#case-stage')?.textContent === t", arg=text,
                                 timeout=5000)


async def test_grid_staff_handle_a_case_on_the_phone_and_the_centre_closes_it(
        stack: ConsoleStack, playwright: tuple[Any, Any], tmp_path: Path) -> None:
    p, browser = playwright
    wo = stack.alerting.workorders
    centre = Actor("lead-li", "supervisor")
    before = wo.figures(centre, None, None)
    await stack.event("elevator", "elev-0001", "trapped_passenger", message="轿厢困人 2 人")
    case_id = str(next(iter(await wait_until(lambda: set(wo.open), 5, "a work order"))))
    assert wo.get(centre, case_id).grid == "g-cuiyuan"
    # The grid's staff member is told through their channel, with a link to the case on the phone page.
    assert stack.inbox is not None
    told = await stack.inbox.wait_for(1, 10, path="/gs-zhou")
    assert "【派单】" in told[0].title and f"/h5/#case/{case_id}" in told[0].body

    # The grid staff member at the tower (geolocation emulated 30 m from it).
    lat, lon = CUIYUAN_3
    zhou = await phone(p, browser, stack.url, "gs-zhou", STACK_STAFF["gs-zhou"][0], (lat + 0.0003, lon))
    await zhou.wait_for_selector(f'#cases a[data-id="{case_id}"]')
    assert "电梯困人" in await zhou.inner_text("#cases") and "接单时限" in await zhou.inner_text("#cases")
    await shot(zhou, "01-phone-my-cases")
    await zhou.click(f'#cases a[data-id="{case_id}"]')
    await zhou.wait_for_selector("#btn-accept")
    await shot(zhou, "02-phone-case-dispatched")
    await zhou.click("#btn-accept")
    await stage_is(zhou, "已接单")
    assert stack.alerting.open[case_id].acknowledged_by == "gs-zhou"
    await zhou.click("#btn-depart")
    await stage_is(zhou, "已出发")
    await zhou.click("#btn-arrive")
    await stage_is(zhou, "已到场")
    o = wo.get(centre, case_id)
    assert o.arrive_distance_m is not None and 20 < o.arrive_distance_m < 45 and not o.arrive_flagged

    # Handled with a photo from the phone's camera (a real JPEG, shrunk and re-encoded by the page).
    img = np.zeros((900, 1200, 3), np.uint8)
    cv2.rectangle(img, (200, 150), (1000, 750), (40, 160, 220), -1)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    photo = tmp_path / "scene.jpg"
    photo.write_bytes(jpeg.tobytes())
    await zhou.fill("#handle-notes", "已协助维保人员解困，乘客 2 人安全")
    await zhou.set_input_files("#handle-photos", str(photo))
    await zhou.click("#btn-handle")
    await stage_is(zhou, "待核查")
    await zhou.wait_for_function("() => [...document.querySelectorAll('#photos img')].some(i => i.naturalWidth > 0)")
    o = wo.get(centre, case_id)
    stored = wo.photos_dir / o.photos[0]
    assert stored.read_bytes()[:3] == b"\xff\xd8\xff" and stored.parent.parent == wo.photos_dir
    await shot(zhou, "03-phone-handled-with-photo")

    # The centre (shift lead, also on a phone) verifies and closes; the follow-up is recorded.
    # The lead follows the notification's link: after the login the page opens that case.
    li = await phone(p, browser, stack.url, "lead-li", token_of("lead-li"), link=f"#case/{case_id}")
    await li.wait_for_selector("#btn-verify")
    await li.click("#btn-verify")
    await stage_is(li, "已核查")
    await li.click("#btn-close")
    await stage_is(li, "已办结")
    await li.select_option("#satisfaction", "satisfied")
    await li.click("#btn-satisfaction")
    await li.wait_for_selector("#case-satisfaction")
    assert await li.inner_text("#case-satisfaction") == "回访：满意"
    await shot(li, "04-centre-closed")
    assert stack.alerting.desk.get(case_id).status.value == "resolved"

    # The figures moved: one more case, one closed, response and arrival times measured, all on time.
    after = wo.figures(centre, None, None)
    assert after["total"] == before["total"] + 1 and after["closed"] == before["closed"] + 1
    assert after["mean_response_s"] is not None and after["mean_arrival_s"] is not None
    assert after["on_time_rate"]["accepted"] == 1.0 and after["satisfaction_rate"] == 1.0
    await li.goto(f"{stack.url}/h5/#figures")
    await li.wait_for_selector("#figures-summary")
    assert "办结 1" in await li.inner_text("#figures-summary")
    await shot(li, "05-figures")
    # Another grid's staff member does not see the case, and reports an incident in their own grid from the phone.
    wu = await phone(p, browser, stack.url, "gs-wu", STACK_STAFF["gs-wu"][0], (XIXI_TOWER[0], XIXI_TOWER[1] + 0.0004))
    await wu.goto(f"{stack.url}/h5/#case/{case_id}")
    await wu.wait_for_selector("#view .error")
    await wu.goto(f"{stack.url}/h5/#report")
    await wu.select_option("#report-category", "fire_hazard")
    await wu.fill("#report-summary", "楼道堆放杂物，堵塞消防通道")
    await wu.fill("#report-place", "西溪华府1幢 2单元")
    await wu.set_input_files("#report-photo", str(photo))
    await shot(wu, "05b-phone-report")
    await wu.click("#btn-report")
    await stage_is(wu, "待接单")
    reported = [o for o in wo.open.values() if o.source == "grid_staff"]
    assert len(reported) == 1 and reported[0].grid == "g-xixi" and reported[0].reporter == "gs-wu"
    assert len(reported[0].photos) == 1 and reported[0].category == "fire_hazard"
    await wu.wait_for_function("() => [...document.querySelectorAll('#photos img')].some(i => i.naturalWidth > 0)")
    await shot(wu, "05c-phone-reported-case")

    # The centre's console: the map shows the grids with their open cases; the alert detail links the order.
    before_open = set(stack.alerting.open)
    await stack.event("elevator", "elev-0002", "trapped_passenger")
    second = str(next(iter(await wait_until(lambda: set(stack.alerting.open) - before_open, 5, "a second alert"))))
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    desk = await ctx.new_page()
    desk_errors: list[str] = []
    desk.on("pageerror", lambda exc: desk_errors.append(str(exc)))
    await desk.goto(stack.url)
    await desk.fill("#login-user", "lead-li")
    await desk.fill("#login-pass", token_of("lead-li"))
    await desk.click("#login-submit")
    await desk.wait_for_selector("#nav-workorders:not([hidden])")
    await desk.goto(f"{stack.url}/#/map")
    await desk.wait_for_selector("#map svg .grid-area")
    assert await desk.locator("#map svg .grid-area").count() == 3
    labels = await desk.eval_on_selector_all("#map svg .grid-label", "els => els.map(e => e.textContent)")
    assert "西溪网格 · 2" in labels and "翠苑网格 · 0" in labels
    await shot(desk, "06-console-map-grids")
    await desk.goto(f"{stack.url}/#/alert/{second}")
    await desk.wait_for_selector("#work-order")
    assert "已派单 · g-xixi" in await desk.inner_text("#work-order")
    await shot(desk, "07-console-alert-work-order")
    await desk.goto(f"{stack.url}/#/figures")
    await desk.wait_for_selector('#wo-figures tr[data-grid="g-cuiyuan"]')
    row = await desk.inner_text('#wo-figures tr[data-grid="g-cuiyuan"]')
    assert row.split("\t")[:3] == ["g-cuiyuan", "1", "100.0%"], row
    await shot(desk, "08-console-figures-by-grid")
    errors = zhou.errors + li.errors + wu.errors + desk_errors
    assert not errors, errors
