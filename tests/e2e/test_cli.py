"""The fixed command-line interface, run as operators run it: `vigil demo`, `vigil run`, `vigil broker`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from broker.contracts import ALERTS_FILTER, decode_alert
from broker.mosquitto import MosquittoProcess, free_port, wait_for_port
from broker.mqtt import Message, MqttClient

VIGIL = [sys.executable, "-m", "vigil.cli"]


def test_demo_runs_for_the_given_time_prints_where_to_look_and_alerts_reach_mqtt(tmp_path: Path) -> None:
    proc = subprocess.Popen([*VIGIL, "demo", "--for", "45", "--state-dir", str(tmp_path / "demo"), "--elevators", "12",
                             "--console-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Read the banner to learn the read-only broker URL, then follow the alerts like a control-room client.
    url = None
    deadline = time.monotonic() + 60
    banner = []
    assert proc.stdout is not None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        banner.append(line)
        m = re.search(r"broker \(control-room, read-only\): (mqtt://\S+)", line)
        if m:
            url = m.group(1)
    assert url is not None, "".join(banner)
    alerts: list[Message] = []

    async def follow() -> None:
        async with MqttClient(url, "test-control-room", clean_start=True) as client:
            client.subscribe(ALERTS_FILTER, alerts.extend)
            await asyncio.sleep(40)

    asyncio.run(follow())
    # Keep reading through the same buffered stream the banner came from.
    out = proc.stdout.read()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait(60)
    assert proc.returncode == 0, err[-2000:]
    text = "".join(banner) + out
    assert "notifications:" in text, text
    assert "storage:" in text, text
    assert "Vigil demo stopped after" in text
    firing = [decode_alert(m.payload) for m in alerts if m.payload]
    assert any(a.status == "firing" for a in firing), "no alert reached vigil/v1/alerts/# in 40 s"
    notes = (tmp_path / "demo" / "notifications.log").read_text(encoding="utf-8").splitlines()
    assert notes and all("title" in json.loads(n) for n in notes)


def test_run_starts_the_configured_services_and_stops_cleanly_on_sigterm(tmp_path: Path,
                                                                       mosquitto: MosquittoProcess) -> None:
    config = {
        "node": "cli-test", "state_dir": str(tmp_path / "state"),
        "services": ["rules", "alerting", "storage"],
        "mqtt": {"url": mosquitto.url},
        "alerting": {"api": {"enabled": False}},
    }
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*VIGIL, "run", "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "state" / "cli-test").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "running rules, alerting, storage" in err


def test_run_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("storage:\n  backend: cassandra\n")
    proc = subprocess.run([*VIGIL, "run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "$.storage.backend" in proc.stderr and str(path) in proc.stderr


def test_broker_command_runs_mosquitto_from_the_registry(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump({
        "devices": [{"id": "elev-1", "kind": "elevator", "password_env": "VIGIL_TEST_ELEV_PW"}],
        "services": [{"name": "vigil-platform", "role": "platform", "password": "pp"}],
    }))
    (tmp_path / "vigil.yaml").write_text(yaml.safe_dump({
        "registry": "registry.yaml",
        "broker": {"port": port, "observer_port": free_port(), "platform_port": free_port(), "data_dir": "mosq"}}))
    env = {**os.environ, "VIGIL_TEST_ELEV_PW": "elev-secret"}
    proc = subprocess.Popen([*VIGIL, "broker", "--config", str(tmp_path / "vigil.yaml")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, 15)
        ok = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "elev-1", "-P", "elev-secret", "-q", "1",
                             "-t", "vigil/v1/elevator/elev-1/telemetry", "-m", "{}"], capture_output=True, timeout=10)
        bad = subprocess.run(["mosquitto_pub", "-p", str(port), "-u", "elev-1", "-P", "wrong", "-q", "1",
                              "-t", "vigil/v1/elevator/elev-1/telemetry", "-m", "{}"], capture_output=True, timeout=10)
        assert ok.returncode == 0 and bad.returncode != 0
        acl = (tmp_path / "mosq" / "acl").read_text()
        assert "topic write vigil/v1/elevator/elev-1/telemetry" in acl
        assert "elev-secret" not in (tmp_path / "mosq" / "passwd-field").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize("argv", [["edge", "hj212", "--help"], ["edge", "jt808", "--help"],
                                  ["edge", "camera", "--help"], ["edge", "elevator", "--help"],
                                  ["rules", "check", "--help"], ["sim", "elevator-fleet", "--help"],
                                  ["sim", "elevator-box", "--help"]])
def test_stage_commands_are_reachable(argv: list[str]) -> None:
    proc = subprocess.run([*VIGIL, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
