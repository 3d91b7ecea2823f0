"""`vigil rules replay` of a recording of the two-hour SO2 story raises the hourly exceedance.

The simulated logger sends the story over real TCP to `vigil edge hj212` (a separate process), which
publishes on a real Mosquitto; a subscriber records every message as JSON lines with its receive
time, exactly as `vigil rules replay --mqtt-file` reads them; then `vigil rules replay` runs the
shipped packs over the recording with a registry that declares the stack's standard.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import yaml

from broker.mosquitto import free_port
from broker.mqtt import Message, MqttClient
from simulators.hj212_logger import LoggerModel, Scenario, run_fleet

ROOT = Path(__file__).resolve().parents[2]
VIGIL = [str(Path(sys.executable).with_name("vigil"))]


def story() -> Scenario:
    """A coal stack: one ordinary hour, then two hours at ~84 mg/m3 converted SO2, sent 3600x faster than real time."""
    return msgspec.convert({
        "name": "so2-two-hours", "seed": 11, "devices": 1, "mn_prefix": "5A98", "start": "2026-11-26T08:00:00",
        "duration_s": 3 * 3600, "speed": 3600, "rtd_interval_s": 30, "minute_interval_min": 1,
        "reference_o2": 6.0,
        "pollutants": [
            {"code": "a21026", "mean": 28.8, "stddev": 1.0, "converted": True, "emission": True},
            {"code": "a21002", "mean": 38.0, "stddev": 3.0, "converted": True},
            {"code": "a34013", "mean": 4.5, "stddev": 0.6, "converted": True},
            {"code": "a19001", "mean": 6.5, "stddev": 0.2, "decimals": 1},
            {"code": "a00000", "mean": 160.0, "stddev": 4.0, "decimals": 1},
        ],
        "faults": [{"type": "exceedance", "code": "a21026", "start_s": 3600, "duration_s": 7200, "factor": 3.0}],
    }, Scenario)


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "gateway exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("vigil edge hj212 did not start listening")


async def test_replay_of_the_recorded_so2_story_raises_the_hourly_exceedance(mosquitto: Any, tmp_path: Path) -> None:
    scenario = story()
    mn = scenario.mn(0)
    frames = sum(1 for _ in LoggerModel(scenario, 0).frames())
    recorded: list[Message] = []
    port = free_port()
    gateway = subprocess.Popen([*VIGIL, "edge", "hj212", "--listen", f"127.0.0.1:{port}", "--mqtt", mosquitto.url,
                                "--accept-unknown-devices", "--client-id", "hj212-story"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with MqttClient(mosquitto.url, "story-recorder", clean_start=True) as client:
            client.subscribe("vigil/v1/emission/#", recorded.extend)
            await asyncio.sleep(0.3)
            await wait_listening(port, gateway)
            stats = await run_fleet(scenario, "127.0.0.1", port)
            assert stats.frames_sent == frames
            async with asyncio.timeout(30):
                while sum(m.topic.endswith("/telemetry") for m in recorded) < frames:
                    await asyncio.sleep(0.05)
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)

    recording = tmp_path / "story.jsonl"
    with recording.open("w", encoding="utf-8") as out:
        for m in recorded:
            out.write(json.dumps({"topic": m.topic, "payload": m.payload.decode("utf-8"), "ts": m.received_at}) + "\n")
    telemetry = [json.loads(m.payload) for m in recorded if m.topic.endswith("/telemetry")]
    assert {t["metrics"]["hj212.cn"] for t in telemetry} == {"2011", "2051", "2061"}  # text, as published

    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({
        "sites": [{"id": "plant-1", "name": "第一热电厂"}],
        "devices": [{"id": mn, "kind": "emission", "site": "plant-1", "name": "1号烟囱",
                     "attributes": {"standard": "GB13223", "fuel": "coal", "new_source": True, "ultra_low": True}}],
    }, allow_unicode=True), encoding="utf-8")
    result = subprocess.run([*VIGIL, "rules", "replay", "--mqtt-file", str(recording), "--registry", str(registry),
                             "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    transitions = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    exceed = [t for t in transitions if t["rule"] == "emission_hourly_over_limit_a21026"]
    assert [t["status"] for t in exceed] == ["firing"], [(t["rule"], t["status"]) for t in transitions]
    assert exceed[0]["device_id"] == mn
    assert exceed[0]["ts"].startswith("2026-11-26T02:00:00")  # judged at 10:00 local, the end of the 09:00 hour
    assert 82.0 <= exceed[0]["values"]["hourly_mean"] <= 85.0
    quiet = [t["rule"] for t in transitions if t["status"] == "firing"
             and not t["rule"].startswith(("emission_hourly_over_limit_a21026", "emission_rolling_hour_over_limit"))]
    assert quiet == []

    # The same recording without the standard in the registry is refused, not judged against a default.
    registry.write_text(yaml.safe_dump({"devices": [{"id": mn, "kind": "emission"}]}), encoding="utf-8")
    refused = subprocess.run([*VIGIL, "rules", "replay", "--mqtt-file", str(recording), "--registry", str(registry)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "no 'standard' attribute" in refused.stderr


def test_replay_from_influxdb_judges_hourly_records_at_their_period_end(influxdb: Any, tmp_path: Path) -> None:
    """Stored history has no receive time: period records are replayed as arriving at their period's end."""
    import urllib.request

    from broker.contracts import Kind, Telemetry, decode_device_message
    from edge.hj212.gateway import Hj212Counters, Hj212Session, SessionPolicy
    from storage.lineproto import LineEncoder

    scenario = story()
    mn = scenario.mn(0)
    session = Hj212Session(SessionPolicy(accept_unknown_devices=True), Hj212Counters())
    enc = LineEncoder()
    lines = []
    for frame in LoggerModel(scenario, 0).frames():
        for pub in session.receive(frame.data, frame.at_s).publications:
            dm = decode_device_message(pub.topic, pub.payload)
            assert isinstance(dm.payload, Telemetry)
            line = enc.telemetry(Kind.EMISSION, mn, "plant-1", dm.payload)
            assert line is not None
            lines.append(line)
    req = urllib.request.Request(f"{influxdb.url}/write?db={influxdb.database}&precision=ns",
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"sites": [{"id": "plant-1"}], "devices": [{
        "id": mn, "kind": "emission", "site": "plant-1",
        "attributes": {"standard": "GB13223", "fuel": "coal", "new_source": True, "ultra_low": True}}]}),
        encoding="utf-8")
    result = subprocess.run([*VIGIL, "rules", "replay", "--influx-url", influxdb.url, "--influx-db",
                             influxdb.database, "--since", "2026-11-25T23:00:00Z", "--until", "2026-11-26T04:00:00Z",
                             "--kind", "emission", "--registry", str(registry), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    transitions = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    exceed = [t for t in transitions if t["rule"] == "emission_hourly_over_limit_a21026"]
    assert [(t["status"], t["ts"][:19]) for t in exceed] == [("firing", "2026-11-26T02:00:00")]
    assert 82.0 <= exceed[0]["values"]["hourly_mean"] <= 85.0
