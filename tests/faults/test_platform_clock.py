"""Fault case: the platform's own clock steps (NTP correction, an operator's `date -s`) while devices stream.

`vigil run` runs under libfaketime (Debian package ``faketime``): ``LD_PRELOAD`` of
``libfaketime.so.1`` with ``FAKETIME_TIMESTAMP_FILE``, whose offset the test rewrites mid-run
(re-read every second, ``FAKETIME_CACHE_DURATION=1``). ``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps
``CLOCK_MONOTONIC`` real, as it is when a real wall clock is stepped: only ``CLOCK_REALTIME``
(``time.time()``, ``datetime.now()``) jumps, so asyncio's timers run on. ``FAKETIME_WAIT_MS=5`` works
around libfaketime 0.9.10 shifting the monotonic deadlines of ``pthread_cond_timedwait`` (CPython's
GIL) by the fake offset, which stalled the platform's threads for seconds after a step (a tool
artefact; see docs/architecture.md). The gateway, Mosquitto and InfluxDB keep the real time; so do
the devices' timestamps.

The platform's clock goes +2 h ahead at a quarter of the stream, then to 10 min behind the real time
(a 2 h 10 min backward step) about halfway. Counted: lost points, duplicate notifications,
absence alerts raised (the suite's elevators carry an absence rule), and what the health model's
``clock`` check says.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.localservers import InfluxdProcess
from tests.faults.harness import NODE, RULES, World, wait_for, world
from tests.faults.test_faults import check_all_notified, report

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
COUNT = 2800
"""4 devices x 700 messages at 200 msg/s: 14 s of stream, 28 overspeed episodes per device."""
ABSENCE = """\
  - name: fault_silent
    kind: elevator
    severity: major
    condition: {absence: 20s}
    summary: "电梯无数据 {device_id}"
    summary_en: "elevator silent {device_id}"
"""


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdProcess]:
    proc = InfluxdProcess(tmp_path_factory.mktemp("influx"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def w(tmp_path: Path, influx: InfluxdProcess) -> AsyncIterator[World]:
    async with world(tmp_path, influx, "platform_clock") as wld:
        yield wld


def set_offset(path: Path, seconds: int) -> None:
    """libfaketime's relative offset ("+7200", "-600"); written atomically so a reader never sees half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds:+d}\n")
    os.replace(tmp, path)


def stepped(w: World, kind: str) -> list[float]:
    """Seconds of the platform-clock-step notifications of ``kind`` (Alert / Resolved)."""
    out = []
    for p in w.receiver.on("duty"):
        m = re.search(r"\] (\w+): platform clock stepped ([+-]\d+) s", p["title"])
        if m and m.group(1) == kind and p["title"].endswith(f"- {NODE}"):
            out.append(float(m.group(2)))
    return out


def titled(w: World, what: str) -> list[str]:
    return [p["title"] for p in w.receiver.on("duty") if what in p["title"]]


async def test_platform_clock_jump(w: World) -> None:
    assert LIBFAKETIME.exists(), "libfaketime missing: apt-get install faketime (scripts/setup.sh installs it)"
    offset = w.tmp / "faketime.offset"
    set_offset(offset, 0)
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_CACHE_DURATION": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_WAIT_MS": "5"}
    w.write_config(receivers=[{"name": "duty", "urls": [w.receiver.url("duty")]}], route_receivers=["duty"],
                   rules_text=RULES + ABSENCE, platform_env=env, health={"clock_step_quiet_s": 2})
    await w.start_platform()
    assert w.platform is not None
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 4, 30, "a quarter of the messages")
    assert stepped(w, "Alert") == []  # no step, no clock alert
    # Forward: the platform's wall clock runs 2 h ahead of the devices and of the rest of the world.
    set_offset(offset, 7200)
    forward_at = len(gw.published())
    await wait_for(lambda: stepped(w, "Alert"), 15, "the platform's clock-step alert (+2 h)")
    await wait_for(lambda: stepped(w, "Resolved"), 15, "the clock-step alert resolved after its quiet time")
    # Backward: 2 h 10 min back, to 10 min behind the real time.
    set_offset(offset, -600)
    backward_at = len(gw.published())
    clock_check: dict[str, object] = {}
    for _ in range(100):  # /health is read in a thread: the receiver and the watchdog share this event loop
        health = await asyncio.to_thread(w.platform.health) or {}
        clock_check = health.get("checks", {}).get("clock") or {}
        if "stepped -" in str(clock_check.get("summary")):
            break
        await asyncio.sleep(0.2)
    out = await w.settle(COUNT)
    # The clock alert resolved while the clock was ahead fires again after the step back: a new alert (its
    # end lies "after" the new firing), notified like any other.
    await wait_for(lambda: len(stepped(w, "Alert")) >= 2, 20, lambda: f"the -7800 s clock alert {stepped(w, 'Alert')}")
    missing: set[tuple[str, int]] = set()
    try:
        await check_all_notified(w, out.published)
    except AssertionError:
        missing = w.expected_episodes(out.published) - w.receiver.episodes(kind="Resolved")
    health = await asyncio.to_thread(w.platform.health) or {}
    silent = titled(w, "elevator silent")
    overdue = titled(w, "Overdue:")
    report("platform clock jump", out, w,
           f"(steps seen by the clock check {stepped(w, 'Alert')} at messages {forward_at} and {backward_at} of "
           f"{COUNT}; absence notifications {len(silent)} {silent}; overdue notices {len(overdue)}; "
           f"watchdog announcements {[t for t, _ in w.watchdog.sent]}; late messages "
           f"{health.get('stats', {}).get('rules', {}).get('late_messages')}; clock check after the backward step "
           f"{clock_check.get('summary')!r}; episodes without a notice {len(missing)} {sorted(missing)[:8]})")
    assert out.lost == [] and out.published == COUNT
    assert w.receiver.duplicates() == []
    # Every overspeed episode is told, before and after both steps: a firing whose device time lies before the
    # end of the previous alert is a new alert, and group timers move with the step (alerting.service).
    assert missing == set(), (sorted(missing), backward_at)
    steps = stepped(w, "Alert")
    assert len(steps) == 2 and 7000 < steps[0] < 7400 and -8000 < steps[1] < -7600, steps
    assert "stepped -7" in str(clock_check.get("summary")), clock_check
    # Deadlines, escalation and absence measure intervals: they move with the step, so the forward step
    # makes nothing overdue and no device silent.
    assert overdue == [], overdue
    assert silent == [], silent
    stats = health.get("stats", {})
    assert stats.get("rules", {}).get("clock_steps") == 2 and stats.get("alerting", {}).get("clock_steps") == 2, stats
