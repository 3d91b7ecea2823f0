"""Never acknowledge what was not saved: the MQTT client, the storage outbox and the rules journal on a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from alerting.config import load_config
from alerting.service import AlertingService
from broker.contracts import Channel, DeviceMessage, Kind, Severity, Telemetry, Transition, encode
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message, MqttClient, NotDurable
from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLink
from rules.engine import RuleEngine
from rules.loader import load_rule_text
from rules.state import StateStore
from storage.outbox import Outbox, OutboxError
from tests.faults.harness import wait_for
from vigil.watchdog import Watchdog


@contextlib.contextmanager
def tiny_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A real file system that fills up: a tmpfs of ``size_kb`` (needs root, as in CI)."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", f"size={size_kb}k,uid={os.getuid()}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=False)


def fill_up(path: Path) -> Path:
    """Fill the file system completely; returns the filler file."""
    filler = path / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    return filler


async def test_a_batch_not_made_durable_is_not_acknowledged_and_reading_stops(mosquitto: MosquittoProcess) -> None:
    full = True
    durable: list[bytes] = []
    calls = 0

    def store(batch: list[Message]) -> None:
        if full:
            raise OSError(28, "No space left on device")
        durable.extend(m.payload for m in batch)

    def handler(batch: list[Message]) -> None:
        nonlocal calls
        calls += 1
        try:
            store(batch)
        except OSError as exc:
            raise NotDurable(str(exc), lambda: store(batch)) from None

    sub = MqttClient(mosquitto.url, "nd-sub", backoff_min=0.05, backoff_max=0.2)
    sub.subscribe("nd/#", handler)
    pub = MqttClient(mosquitto.url, "nd-pub", clean_start=True)
    await sub.start()
    await pub.start()
    try:
        for i in range(50):
            await pub.publish("nd/x", b"%d" % i)
        await pub.flush()
        await wait_for(lambda: sub.stalled_since is not None, 10, "the subscriber to stall")
        calls_when_stalled = calls
        await asyncio.sleep(0.5)
        assert calls == calls_when_stalled  # no further reading while the batch waits
        assert sub.counters["durable_retries"] > 0 and durable == []
        full = False  # space again
        await wait_for(lambda: len(durable) == 50, 10, "every message stored once space is back")
        await wait_for(lambda: sub.stalled_since is None, 5, "reading to resume")
        assert sorted(int(p) for p in durable) == list(range(50))
    finally:
        await pub.stop()
        await sub.stop()
    # Everything was acknowledged after it was stored: a new session of the same client gets nothing again.
    again: list[Message] = []
    sub2 = MqttClient(mosquitto.url, "nd-sub")
    sub2.subscribe("nd/#", again.extend)
    await sub2.start()
    await asyncio.sleep(0.5)
    await sub2.stop()
    assert again == []


def test_outbox_on_a_full_disk_refuses_whole_frames_and_recovers(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", 256) as disk:
        box = Outbox(disk / "outbox", max_bytes=1 << 20, segment_bytes=64 << 10, fsync="batch")
        box.open()
        line = "telemetry_elevator,device=e1 speed_mps=1.5 " + "1" * 200
        appended = 0
        with pytest.raises(OutboxError):
            for _ in range(10_000):
                box.append([line] * 3)
                appended += 3
        assert box.counters["write_errors"] == 1 and box.last_error
        for seg in (disk / "outbox").glob("*.seg"):  # nothing torn left behind: every byte is a whole frame
            assert seg.stat().st_size % (len(line) * 3 + 2 + 14) == 0
        box.close()
        reopened = Outbox(disk / "outbox", max_bytes=1 << 20, segment_bytes=64 << 10, fsync="batch")
        reopened.open()
        assert reopened.pending_lines == appended and reopened.counters["torn_bytes"] == 0
        # Space again (the drainer sent and deleted segments): appending works on.
        batch = reopened.peek(appended)
        assert batch is not None and batch.lines == appended
        reopened.commit(batch)
        reopened.append([line])
        assert reopened.pending_lines == 1
        reopened.close()


def test_outbox_keeps_the_last_bytes_of_the_disk_for_the_rest_of_the_platform(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", 512) as disk:
        box = Outbox(disk / "outbox", max_bytes=4 << 20, segment_bytes=1 << 20, fsync="off", min_free_bytes=256 << 10)
        box.open()
        with pytest.raises(OutboxError, match="disk nearly full"):
            for _ in range(10_000):
                box.append(["x" * 1000])
        st = os.statvfs(disk)
        assert st.f_bavail * st.f_frsize >= 200 << 10  # left for alerting's database and the rules journal
        box.close()


def test_rules_journal_keeps_refused_lines_in_memory_and_writes_them_later(tmp_path: Path) -> None:
    rules, errors = load_rule_text(
        'rules:\n  - name: hot\n    kind: sensor\n    severity: major\n    condition: "t > 5"\n    summary: hot\n', "r.yaml")
    assert errors == []
    engine = RuleEngine(rules)
    now = datetime.now(UTC)
    engine.process([DeviceMessage(Kind.SENSOR, "s1", Channel.TELEMETRY, Telemetry(ts=now, metrics={"t": 9.0}),
                                  now.timestamp())], now.timestamp())
    with tiny_disk(tmp_path / "disk", 64) as disk:
        store = StateStore(disk / "rules")
        store.append(engine, [])  # opens nothing yet
        filler = fill_up(disk)
        with pytest.raises(OSError):
            store.append(engine, engine.drain_changes())
        assert store.unwritten == 1 and store.journal_errors == 1
        filler.unlink()
        store.flush_pending()
        assert store.unwritten == 0
        store.close()
        fresh = RuleEngine(rules)
        assert StateStore(disk / "rules").restore(fresh) == 1
        assert fresh.devices["s1"].rules["hot"].published == "firing"


def test_watchdog_announces_silence_failure_and_recovery_once_each() -> None:
    now = [0.0]
    dog = Watchdog(lambda _t, _b: True, timeout_s=10, expect=["n1"], clock=lambda: now[0])
    assert dog.check() == []
    now[0] = 11
    assert [t for t, _ in dog.check()] == ["[紧急] Vigil 节点 n1 失联 / node silent"]
    assert dog.check() == []  # once per incident
    dog.ping("n1", "failing", ["disk"])
    assert "自检失败" in dog.check()[0][0]
    dog.ping("n1", "ok", [])
    assert "已恢复" in dog.check()[0][0]
    assert dog.check() == []


def test_alerting_holds_a_batch_its_database_could_not_commit(tmp_path: Path) -> None:
    cfg = load_config({"api": {"enabled": False}, "people": [], "escalation_policies": [], "inhibit_rules": [],
                       "route": {"receivers": ["console-log"], "group_by": ["..."]}})
    with tiny_disk(tmp_path / "disk", 1024) as disk:
        svc = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "alerting-nd"), state_dir=disk / "alerting")
        now = datetime.now(UTC)

        def transition(n: int) -> tuple[Transition, bytes]:
            t = Transition(ts=now, fingerprint=f"fp{n}", rule="hot", status="firing", severity=Severity.MAJOR,
                           kind=Kind.SENSOR, device_id=f"s{n}", summary="x" * 2000, started_at=now)
            return t, encode(t)

        filler = fill_up(disk)
        held: NotDurable | None = None
        for n in range(200):  # until a commit needs a page the disk does not have
            try:
                svc.on_local_transitions([transition(n)])
            except NotDurable as exc:
                held = exc
                break
        assert held is not None and "alerting database" in held.reason
        assert svc.counters["commit_errors"] == 1
        filler.unlink()
        if "rolled back" in held.reason:
            # SQLite undid the transaction (WAL mode on a full disk): the alert in memory is not in the
            # database, so nothing is acknowledged until a restart reloads it and the broker redelivers.
            with pytest.raises(NotDurable, match="restart the node"):
                held.retry()
            with pytest.raises(NotDurable, match="restart the node"):
                svc.on_local_transitions([transition(1000)])
            svc.close()
            again = AlertingService(cfg, mqtt=MqttClient("mqtt://127.0.0.1:1", "alerting-nd"),
                                    state_dir=disk / "alerting")
            assert f"fp{n}" not in again.by_fingerprint  # the redelivered transition will bring it
            again.on_local_transitions([transition(n)])
            assert f"fp{n}" in again.by_fingerprint
            again.close()
        else:
            held.retry()  # space again: the same transaction commits
            assert svc.store.get_alert(svc.by_fingerprint[f"fp{n}"]) is not None
            svc.close()


async def test_a_gateway_holds_messages_nobody_subscribed_to_until_the_platform_is_back(
        mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    link = EdgeLink(mosquitto.url, EdgeIdentity.for_gateway("gw-hold", agent="t"), tmp_path / "gw",
                    backoff_min=0.05, backoff_max=0.2, hold_unrouted=True)
    await link.start()
    got: list[Message] = []
    platform = MqttClient(mosquitto.url, "platform-hold", backoff_min=0.05)
    try:
        for i in range(20):
            link.publish_telemetry(Kind.ELEVATOR, "e1", Telemetry(ts=datetime.now(UTC), seq=i, metrics={"v": 1.0}))
        # No platform session (as after a broker crash before its autosave): "no matching subscribers".
        await wait_for(lambda: link.counters["held_unrouted"] >= 20, 10, "the messages to be held")
        assert len(link.outbox) == 20
        platform.subscribe("vigil/v1/+/+/+", got.extend)
        await platform.start()
        await wait_for(lambda: len(link.outbox) == 0, 15, "the held messages to be delivered")
        await wait_for(lambda: len([m for m in got if m.topic.endswith("/telemetry")]) >= 20, 5, "all 20")
        seqs = [msgspec.json.decode(m.payload)["seq"] for m in got if m.topic.endswith("/telemetry")]
        assert seqs[:20] == list(range(20))  # in order
    finally:
        await platform.stop()
        await link.stop()
