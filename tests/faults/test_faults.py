"""Fault suite: real Mosquitto, InfluxDB 1.6, `vigil run` and a gateway process, one fault per case.

Every case counts what the gateway published (its ledger), what InfluxDB holds, what was lost and
which notifications arrived twice, and checks the platform's own alert where a human must act.
The figures of a run are printed (``-s``) and summarised in docs/architecture.md's failure table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.localservers import InfluxdProcess
from tests.faults.harness import NODE, Outcome, World, wait_for, world

COUNT = 1200
"""Messages per case: 4 devices x 300, 12 alert episodes each (48 alerts, 96 notifications)."""


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdProcess]:
    proc = InfluxdProcess(tmp_path_factory.mktemp("influx"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def w(tmp_path: Path, influx: InfluxdProcess, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if not influx.running:
        await asyncio.to_thread(influx.start)
    async with world(tmp_path, influx, request.node.name.removeprefix("test_")[:40]) as wld:
        yield wld


def report(case: str, out: Outcome, w: World, extra: str = "") -> None:
    dups = w.receiver.duplicates()
    print(f"\n[fault] {case}: published {out.published}, stored {out.stored}, lost {len(out.lost)}, "
          f"duplicate notifications {len(dups)}, notifications {len(w.receiver.on('duty'))} {extra}")
    # Faults are handled, not survived by accident: the platform logged no traceback.
    assert w.platform is not None and w.platform.unexpected_tracebacks() == [], w.platform.log_tail()


def standard_config(w: World, **kw: object) -> None:
    w.write_config(receivers=[{"name": "duty", "urls": [w.receiver.url("duty")]}], route_receivers=["duty"],
                   **kw)  # type: ignore[arg-type]


async def check_all_notified(w: World, published: int, skip_device: str | None = None) -> None:
    # Every episode ends with a resolved notice; one that fired and cleared inside one handler batch
    # (a backlog after an outage) is told by that notice alone, the others by a firing one before it.
    expected = w.expected_episodes(published, skip_device=skip_device)
    await wait_for(lambda: expected <= w.receiver.episodes(kind="Resolved"), 60,
                   lambda: f"a resolved notice per episode; missing "
                   f"{sorted(expected - w.receiver.episodes(kind='Resolved'))[:10]}; platform log:\n"
                   f"{w.platform.log_tail() if w.platform else ''}")
    assert w.receiver.episodes(kind="Alert") <= expected | w.expected_episodes(published)
    await asyncio.sleep(1.0)  # anything sent twice would arrive now
    assert w.receiver.duplicates() == []


async def test_platform_kill_9(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 3, 30, "a third of the messages")
    assert w.platform is not None
    w.platform.kill()
    # Dead platform: nobody inside can tell, the dead-man watchdog must.
    await wait_for(lambda: w.watchdog.nodes.get(NODE) and w.watchdog.nodes[NODE].announced == "silent", 20,
                   "the watchdog to announce the silent node")
    await w.start_platform()
    out = await w.settle(COUNT)
    report("platform kill -9", out, w)
    assert out.lost == [] and out.published == COUNT
    await check_all_notified(w, out.published)
    await wait_for(lambda: w.watchdog.nodes[NODE].announced is None, 20, "the watchdog to see it recover")
    assert any("silent" in t or "失联" in t for t, _ in w.watchdog.sent)


async def test_gateway_kill_9(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 2, 30, "half of the messages")
    gw.kill()
    await asyncio.sleep(0.5)
    gw.start()  # same outbox folder: replays what the broker had not acknowledged, then continues
    out = await w.settle(COUNT)
    report("gateway kill -9", out, w)
    assert out.lost == [] and out.published == COUNT
    await check_all_notified(w, out.published)


async def test_broker_kill_9(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 3, 30, "a third of the messages")
    await asyncio.to_thread(w.kill_broker)
    # The platform cannot reach its broker: its own alert goes out through the local alerting stage.
    await wait_for(lambda: w.receiver.platform_alerts("broker"), 20, "the platform's broker alert")
    await asyncio.to_thread(w.broker.start)
    out = await w.settle(COUNT)
    report("broker kill -9", out, w)
    assert out.lost == [] and out.published == COUNT
    await check_all_notified(w, out.published)
    await wait_for(lambda: w.receiver.platform_alerts("broker", kind="Resolved"), 20, "the broker alert resolved")


async def test_broker_restart(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 3, 30, "a third of the messages")
    await asyncio.to_thread(w.broker.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(w.broker.start)
    out = await w.settle(COUNT)
    report("broker restart", out, w)
    assert out.lost == [] and out.published == COUNT
    await check_all_notified(w, out.published)


async def test_influxdb_outage(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    gw = w.start_gateway(COUNT)
    await wait_for(lambda: len(gw.published()) > COUNT // 4, 30, "a quarter of the messages")
    await asyncio.to_thread(w.influx.stop)
    try:
        await wait_for(lambda: w.receiver.platform_alerts("influxdb"), 30, "the platform's InfluxDB alert")
        assert w.platform is not None
        pending = w.platform.metric("vigil_storage_outbox_pending_lines")
        assert pending is not None and pending > 0  # kept in the outbox meanwhile
    finally:
        await asyncio.to_thread(w.influx.start)
    out = await w.settle(COUNT)
    report("InfluxDB outage", out, w)
    assert out.lost == [] and out.published == COUNT
    await check_all_notified(w, out.published)
    await wait_for(lambda: w.receiver.platform_alerts("influxdb", kind="Resolved"), 30, "the InfluxDB alert resolved")


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` at ``path`` (root in CI and here; see docs/architecture.md)."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", f"size={size_mb}m,uid={os.getuid()}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes free on ``path``'s file system."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    with open(filler, "wb") as fh:
        remaining = max(0, free - leave)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= fh.write(chunk[: min(len(chunk), remaining)])
    return filler


async def test_disk_full(w: World) -> None:
    with small_disk(w.tmp / "state", 24) as state:
        standard_config(w, state_dir=state, storage={"outbox": {"min_free_bytes": 2 << 20, "segment_bytes": 1 << 20,
                                                                "max_bytes": 8 << 20}},
                        health={"disk_min_free_bytes": 3 << 20})
        await w.start_platform()
        gw = w.start_gateway(COUNT)
        await wait_for(lambda: len(gw.published()) > COUNT // 4, 30, "a quarter of the messages")
        filler = await asyncio.to_thread(fill, state, int(1.5 * (1 << 20)))
        # Storage cannot keep more: the batch is not acknowledged, reading stops, the broker keeps the rest.
        await wait_for(lambda: w.receiver.platform_alerts("ingest"), 30, "the platform's ingest alert")
        await wait_for(lambda: w.receiver.platform_alerts("disk"), 30, "the platform's disk alert")
        assert w.platform is not None
        # The counters stay readable with the disk full: they live in memory and on /metrics.
        assert (w.platform.metric("vigil_mqtt_not_durable") or 0) > 0
        assert (w.platform.metric("vigil_storage_stored_not_durable_batches") or 0) > 0
        exposition = w.platform.get("/metrics") or ""
        assert all(re.fullmatch(r'[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\} -?[0-9.e+-]+|# (HELP|TYPE) .*', line)
                   for line in exposition.splitlines()), "not the Prometheus text format"
        # `vigil status` reads the same figures from the running node.
        status = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "vigil.cli", "status", "--config",
                                                          str(w.tmp / "vigil.yaml")], capture_output=True, text=True,
                                         timeout=30)
        assert status.returncode == 1 and "FAILING" in status.stdout and "FAIL ingest" in status.stdout, status
        await asyncio.sleep(2.0)  # a while with the disk full
        filler.unlink()  # the operator frees space
        out = await w.settle(COUNT)
        report("disk full", out, w, f"(not-durable retries {w.platform.metric('vigil_mqtt_durable_retries')})")
        assert out.lost == [] and out.published == COUNT
        await check_all_notified(w, out.published)
        await wait_for(lambda: w.receiver.platform_alerts("ingest", kind="Resolved"), 30, "the ingest alert resolved")
        await asyncio.to_thread(w.platform.stop)
        await asyncio.to_thread(w.gateway.stop)  # type: ignore[union-attr]


async def test_slow_and_failing_channels(w: World) -> None:
    # Three receivers on one route: the duty phone, a channel that hangs, a channel that fails.
    w.write_config(receivers=[{"name": "duty", "urls": [w.receiver.url("duty")]},
                              {"name": "hung", "urls": [w.receiver.url("hung")]},
                              {"name": "broken", "urls": [w.receiver.url("broken")]}],
                   route_receivers=["duty", "hung", "broken"], retry={"timeout_s": 1.5})
    await w.start_platform()
    w.start_gateway(COUNT // 2)
    out = await w.settle(COUNT // 2)
    # Every alert reached the duty phone while the hung channel still held its first request.
    await check_all_notified(w, out.published)
    assert not w.receiver.release.is_set() and w.receiver.hung_calls > 0 and w.receiver.broken_calls > 0
    report("slow and failing channels", out, w, f"(hung channel calls {w.receiver.hung_calls}, "
                                                f"broken channel calls {w.receiver.broken_calls})")
    assert out.lost == []
    # The dead-lettered notifications of the broken channel need a human: the platform says so.
    await wait_for(lambda: w.receiver.platform_alerts("notifications"), 60, "the platform's dead-letter alert")
    w.receiver.release.set()


async def test_device_clock_jump(w: World) -> None:
    standard_config(w)
    await w.start_platform()
    # elev-f1's clock jumps two hours ahead for 40 of its messages, then is right again.
    w.start_gateway(COUNT, jump="400:560:7200")
    out = await w.settle(COUNT)
    report("device clock jump", out, w)
    assert out.lost == [] and out.published == COUNT  # every point kept, at the time the device gave it
    # The other devices' alerts are unaffected; elev-f1's later data looks late to the rules, so a human must
    # fix its clock: the platform's own alert names it.
    await check_all_notified(w, out.published, skip_device="elev-f1")
    alerts = await wait_for(lambda: w.receiver.platform_alerts("clock"), 30, "the platform's device-clock alert")
    assert "elev-f1" in alerts[0]["title"]
