"""Finding 9: broker passwords must not be readable from process arguments (``ps``, /proc/PID/cmdline).

Agents take ``--mqtt mqtt://user@host`` and the password from ``VIGIL_MQTT_PASSWORD`` or
``--mqtt-password-file``; a password left in the URL still works but is warned about; the demo
starts its gateways without a password on their command lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.mosquitto import MosquittoProcess, free_port, running_mosquitto
from tests.security.mqtt_rig import PASSWORDS, REGISTRY, broker_log

VIGIL = [sys.executable, "-m", "vigil.cli"]
GATEWAY = "vigil-gw-elev"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with running_mosquitto(tmp_path / "broker", REGISTRY) as proc:
        yield proc


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _wait_for_login(broker: MosquittoProcess, account: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f"u'{account}'" not in broker_log(broker):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{account} never logged in:\n{broker_log(broker)[-2000:]}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _gateway(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_MQTT_PASSWORD")}
    return subprocess.Popen([*VIGIL, *argv], env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_password_from_the_environment_never_appears_in_the_command_line(broker: MosquittoProcess) -> None:
    secret = PASSWORDS[GATEWAY]
    proc = _gateway(["edge", "jt808", "--listen", f"127.0.0.1:{free_port()}", "--accept-unknown-devices",
                     "--mqtt", f"mqtt://{GATEWAY}@127.0.0.1:{broker.port}"], {"VIGIL_MQTT_PASSWORD": secret})
    try:
        _wait_for_login(broker, GATEWAY, proc)
        assert secret not in _cmdline(proc.pid)
    finally:
        err = _stop(proc)
    assert "password is on the command line" not in err


def test_password_file_option_logs_in_without_the_secret_in_argv(broker: MosquittoProcess, tmp_path: Path) -> None:
    secret = PASSWORDS[GATEWAY]
    pw_file = tmp_path / "mqtt-password"
    pw_file.write_text(secret + "\n")
    pw_file.chmod(0o600)
    proc = _gateway(["edge", "hj212", "--listen", f"127.0.0.1:{free_port()}", "--accept-unknown-devices",
                     "--mqtt", f"mqtt://{GATEWAY}@127.0.0.1:{broker.port}", "--mqtt-password-file", str(pw_file)], {})
    try:
        _wait_for_login(broker, GATEWAY, proc)
        assert secret not in _cmdline(proc.pid)
    finally:
        _stop(proc)


def test_a_password_in_the_url_on_the_command_line_is_warned_about(broker: MosquittoProcess) -> None:
    secret = PASSWORDS[GATEWAY]
    proc = _gateway(["edge", "jt808", "--listen", f"127.0.0.1:{free_port()}", "--accept-unknown-devices",
                     "--mqtt", f"mqtt://{GATEWAY}:{secret}@127.0.0.1:{broker.port}"], {})
    try:
        _wait_for_login(broker, GATEWAY, proc)
    finally:
        err = _stop(proc)
    assert "the MQTT password is on the command line" in err
    assert secret not in err  # the warning itself never repeats the secret


def test_the_demo_starts_its_gateways_without_passwords_in_their_arguments(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    demo = subprocess.Popen([*VIGIL, "demo", "--for", "40", "--state-dir", str(state), "--elevators", "2",
                             "--console-port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        log = state / "mosquitto" / "mosquitto.log"
        deadline = time.monotonic() + 60
        while not (log.exists() and all(f"u'{gw}'" in log.read_text(errors="replace")
                                        for gw in ("vigil-gw-hj212", "vigil-gw-jt808"))):
            assert demo.poll() is None, demo.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the demo's gateways never logged in to the broker"
            time.sleep(0.5)
        secrets = json.loads((state / "demo-secrets.json").read_text())
        cmdlines = [_cmdline(pid) for pid in _descendants(demo.pid)]
        for gateway in ("edge hj212", "edge jt808"):
            assert any(gateway in c for c in cmdlines), cmdlines
        for cmdline in [_cmdline(demo.pid), *cmdlines]:
            for name, secret in secrets.items():
                assert secret not in cmdline, f"the password of {name} is in the arguments of: {cmdline[:120]}"
    finally:
        demo.send_signal(signal.SIGTERM)  # stops cleanly, as Ctrl-C does
        _, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err[-2000:]


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found
