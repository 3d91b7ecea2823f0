"""Hot reload against a real Mosquitto: unchanged rules keep their state, a broken file is refused whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.contracts import TRANSITIONS_FILTER, Channel, Kind, Telemetry, Transition, decode_transition, device_topic, encode
from broker.ingest import DeviceIngest
from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient
from broker.registry import DeviceRegistry
from rules.config import RulesConfig
from rules.service import RulesService

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
RULES = """\
rules:
  - name: hot
    kind: sensor
    severity: major
    condition: "v > 10"
    for: 3s
    summary: "过热 {v}"
  - name: other
    kind: sensor
    severity: info
    condition: "v > 100"
    summary: "other"
"""


def write(path: Path, text: str, bump: int) -> None:
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


async def test_hot_reload_keeps_state_and_refuses_a_broken_file(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    rule_file = tmp_path / "site.yaml"
    write(rule_file, RULES, 0)
    config = RulesConfig(packs=[], paths=[str(rule_file)], tick_interval_s=0.05, reload_interval_s=0.05,
                         snapshot_interval_s=3600)
    mqtt = MqttClient(mosquitto.url, "vigil-rules-reload")
    ingest = DeviceIngest(mqtt, "rules")
    service = RulesService(config, mqtt=mqtt, ingest=ingest, registry=DeviceRegistry({}, {}, {}),
                           state_dir=tmp_path / "state")
    service.attach()
    seen: list[Transition] = []
    watcher = MqttClient(mosquitto.url, "vigil-rules-reload-watch", clean_start=True)
    watcher.subscribe(TRANSITIONS_FILTER, lambda batch: seen.extend(decode_transition(m.payload) for m in batch))
    await watcher.start()
    await mqtt.start()
    task = asyncio.create_task(service.run())

    async def send(second: float, v: float) -> None:
        tel = Telemetry(ts=T0 + timedelta(seconds=second), metrics={"v": v})
        await watcher.publish(device_topic(Kind.SENSOR, "s-1", Channel.TELEMETRY), encode(tel))

    async def until(pred: object, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():  # type: ignore[operator]
                await asyncio.sleep(0.02)

    try:
        await send(0, 11)  # 'hot' pending
        await until(lambda: service.stats()["messages"] >= 1)
        write(rule_file, RULES.replace('"v > 100"', '"v > 50"'), 1)  # change 'other' only
        await until(lambda: service.reloads >= 1)
        await send(3, 12)  # held 3 s since t=0: the pending timer survived the reload
        await until(lambda: len(seen) >= 1)
        assert [(t.rule, t.status) for t in seen] == [("hot", "firing")]

        write(rule_file, RULES.replace("for: 3s", "for: soon"), 2)  # broken: refused whole
        await until(lambda: service.reload_failures >= 1)
        assert service.stats()["rule_file_errors"] == 1
        assert "for: bad duration 'soon'" in service.files.errors[0]
        assert set(service.engine.rules) == {"hot", "other"}
        await send(4, 60)  # the previous 'other' (v > 50) still runs
        await send(5, 1)
        await until(lambda: len(seen) >= 4)
        assert [(t.rule, t.status) for t in seen[1:]] == [("other", "firing"), ("hot", "resolved"),
                                                           ("other", "resolved")]

        write(rule_file, RULES.replace("  - name: other", "  - name: renamed"), 3)
        service.request_reload()  # what SIGHUP does
        await until(lambda: "renamed" in service.engine.rules)
        assert set(service.engine.rules) == {"hot", "renamed"}
        assert service.files.errors == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mqtt.stop()
        await watcher.stop()


def test_rule_directories_are_rescanned(tmp_path: Path) -> None:
    from rules.service import RuleFiles, configured_files

    folder = tmp_path / "rules.d"
    folder.mkdir()
    write(folder / "a.yaml", RULES, 0)
    config = RulesConfig(packs=[], paths=[str(folder)])
    files = RuleFiles(configured_files(config), config.timezone, config)
    assert files.load(force=True)
    assert [r.name for r in files.rules()] == ["hot", "other"]
    write(folder / "b.yaml", RULES.replace("name: hot", "name: hot2").replace("name: other", "name: other2"), 1)
    assert files.load()
    assert {r.name for r in files.rules()} == {"hot", "other", "hot2", "other2"}
    (folder / "a.yaml").unlink()
    assert files.load()
    assert {r.name for r in files.rules()} == {"hot2", "other2"}
    assert not files.load()  # nothing changed
