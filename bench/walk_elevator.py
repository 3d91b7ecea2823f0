"""One elevator message's road: which Vigil source files it runs through, from the box to the phone and to InfluxDB.

Runs the real path in one process: a scripted monitoring box behind edge's ``ElevatorBoxDriver`` read
by the real ``ElevatorAgent`` (monitor, detectors, ``EdgeLink`` with its on-disk outbox), a real
Mosquitto with the device's account and ACL, the platform as ``vigil run`` builds it (ingest, rules
with the elevator pack, alerting with Apprise to a local ``json://`` receiver standing in for the
phone, storage to a real InfluxDB 1.x). Once everything is idle, it records every Python call (a
profile hook in every thread) while one alarm-button press travels: from the box reading to the
notification's HTTP POST and to the event's point in InfluxDB. It prints the package source files
that ran, per stage, the calls that crossed a stage, and whether any stage called back into one it
had handed the message to (back-and-forth). An idle window of the same length is recorded first,
and files that ran then too are marked (periodic work such as the rules tick).

    .venv/bin/python bench/walk_elevator.py [--json]

Counting: distinct ``.py`` files of the packages (edge, broker, rules, alerting, storage, vigil,
console, simulators, scenario) that executed at least one function call in the window. The
phone road is those of edge, broker, rules, alerting and vigil; the InfluxDB road those of edge,
broker, storage and vigil.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ("edge", "broker", "rules", "alerting", "storage", "vigil", "console", "simulators", "scenario")
PHONE = ("edge", "broker", "rules", "alerting", "vigil")
INFLUX = ("edge", "broker", "storage", "vigil")
DEVICE = "el-walk"
PASSWORDS = {DEVICE: "walk-dev-pw", "vigil-platform": "walk-plat-pw"}


class Recorder:
    """A profile hook for every thread: files called and calls that cross a stage, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.files: set[str] = set()
        self.crossings: set[tuple[str, str]] = set()
        self._prefix = str(ROOT) + "/"
        self._lock = threading.Lock()

    def _rel(self, filename: str) -> str | None:
        if not filename.startswith(self._prefix):
            return None
        rel = filename[len(self._prefix):]
        return rel if rel.split("/", 1)[0] in PACKAGES else None

    def hook(self, frame: FrameType, event: str, _arg: object) -> None:
        if not self.on or event != "call":
            return
        callee = self._rel(frame.f_code.co_filename)
        if callee is None:
            return
        caller_frame = frame.f_back
        caller = self._rel(caller_frame.f_code.co_filename) if caller_frame is not None else None
        with self._lock:
            self.files.add(callee)
            if caller is not None and caller.split("/", 1)[0] != callee.split("/", 1)[0]:
                self.crossings.add((caller, callee))

    def install(self) -> None:
        sys.setprofile(self.hook)
        threading.setprofile(self.hook)  # threads started from now on (Apprise's pool, storage's writer)

    def take(self) -> tuple[set[str], set[tuple[str, str]]]:
        with self._lock:
            out = (set(self.files), set(self.crossings))
            self.files.clear()
            self.crossings.clear()
        return out


@dataclass
class ScriptedBox:
    """An idle car at the 3rd floor, door closed; ``press`` holds the alarm button."""

    press: bool = False
    readings: int = 0

    async def open(self) -> None:
        return None

    async def read(self) -> Any:
        from edge.elevator.signals import ElevatorSignals

        self.readings += 1
        return ElevatorSignals(position_m=6.0, speed_mps=0.0, direction="stopped", door="closed", door_zone=True,
                               floor=3, occupancy=1, load_kg=70.0, power="mains", mode="normal",
                               safety_circuit_ok=True, alarm_button=self.press)

    async def close(self) -> None:
        return None


@dataclass
class Phone:
    """The local HTTP endpoint Apprise's json:// plugin posts to (the duty officer's phone)."""

    posts: list[dict[str, Any]] = field(default_factory=list)


async def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise SystemExit(f"walk: timed out after {timeout} s waiting for {what}")


def influx_events(url: str) -> int:
    query = urllib.parse.urlencode({"db": "vigil", "q": f"SELECT * FROM events WHERE device = '{DEVICE}'"})
    try:
        with urllib.request.urlopen(f"{url}/query?{query}", timeout=5) as resp:
            body = json.loads(resp.read())
    except OSError:
        return 0
    return sum(len(s["values"]) for r in body.get("results", []) for s in r.get("series", []))


async def walk(recorder: Recorder) -> dict[str, Any]:
    import msgspec
    from aiohttp import web

    from broker.mosquitto import free_port, running_mosquitto
    from broker.registry import DeviceRegistry
    from edge.elevator.cli import open_agent, run_agents
    from edge.elevator.detectors import DetectorThresholds
    from edge.elevator.signals import ElevatorGeometry
    from storage.localservers import InfluxdProcess
    from vigil.config import VigilConfig
    from vigil.runtime import build_platform, run_platform

    registry = DeviceRegistry.from_data({
        "sites": [{"id": "tower-a", "name": "翠苑三区3幢", "unit": "市场监管局"}],
        "devices": [{"id": DEVICE, "kind": "elevator", "site": "tower-a", "password": PASSWORDS[DEVICE],
                     "attributes": {"rated_speed_mps": 1.75, "floors": 12, "floor_height_m": 3.0}}],
        "services": [{"name": "vigil-platform", "role": "platform", "password": PASSWORDS["vigil-platform"]}],
    })
    phone = Phone()
    app = web.Application()

    async def on_post(request: web.Request) -> web.Response:
        phone.posts.append({"path": request.path, **(await request.json())})
        return web.Response(text="ok")

    app.router.add_post("/{tail:.*}", on_post)
    runner = web.AppRunner(app)
    await runner.setup()
    phone_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", phone_port).start()
    tmp = Path(tempfile.mkdtemp(prefix="vigil-walk-"))
    influx = InfluxdProcess(tmp / "influxdb")
    await asyncio.to_thread(influx.start)
    try:
        await asyncio.to_thread(influx.create_database, "vigil")
        with running_mosquitto(tmp / "mosquitto", registry) as broker:
            config = msgspec.convert({
                "node": "walk", "state_dir": str(tmp / "state"),
                "services": ["rules", "alerting", "storage"],
                "mqtt": {"url": broker.account_url("vigil-platform", PASSWORDS["vigil-platform"]),
                         "client_id": "vigil-walk"},
                "rules": {"packs": ["elevator"]},
                "health": {"enabled": False},
                "storage": {"backend": "influxdb-v1", "influxdb_v1": {"url": influx.url, "database": "vigil"},
                            "writer": {"flush_interval_s": 0.05}},
                "alerting": {
                    "receivers": [{"name": "duty-phone", "urls": [f"json://127.0.0.1:{phone_port}/duty"]}],
                    "people": [], "escalation_policies": [], "inhibit_rules": [], "api": {"enabled": False},
                    "route": {"receivers": ["duty-phone"], "group_by": ["rule", "device_id"], "group_wait_s": 0,
                              "group_interval_s": 0, "repeat_interval_s": 3600, "send_resolved": True},
                },
            }, VigilConfig)
            platform = build_platform(config, registry)
            stop = asyncio.Event()
            platform_task = asyncio.create_task(run_platform(platform, stop))
            await wait_for(lambda: platform.mqtt.connected, 15, "the platform's MQTT session")
            box = ScriptedBox()
            agent = open_agent(DEVICE, box, ElevatorGeometry(), broker.account_url(DEVICE, PASSWORDS[DEVICE]),
                               tmp / "edge", thresholds=DetectorThresholds(alarm_button_s=0.0),
                               telemetry_interval_s=3600.0, heartbeat_s=3600.0, sample_hz=10.0)
            agent_task = asyncio.create_task(run_agents([agent]))
            await wait_for(lambda: agent.link.stats()["delivered"] >= 1,
                           15, "the agent's first message")
            await asyncio.sleep(3.0)  # everything started and idle

            # The message: one alarm-button press, from the box reading to the phone and InfluxDB.
            influx_url = influx.url  # read before recording: the polling below must not count storage's files
            recorder.on = True
            started = time.monotonic()
            box.press = True
            await wait_for(lambda: [p for p in phone.posts if p["path"] == "/duty"], 30, "the notification")
            to_phone = time.monotonic() - started
            await wait_for(lambda: influx_events(influx_url) >= 1, 30, "the event in InfluxDB")
            window = time.monotonic() - started
            recorder.on = False
            files, crossings = recorder.take()

            # The same length of time again with the button still held: nothing new to send, so what runs is periodic.
            recorder.on = True
            await asyncio.sleep(window)
            recorder.on = False
            idle_files, _ = recorder.take()

            agent_task.cancel()
            await asyncio.gather(agent_task, return_exceptions=True)
            stop.set()
            await asyncio.wait_for(platform_task, 30)
    finally:
        await asyncio.to_thread(influx.stop)
        await runner.cleanup()
    return {"files": files, "crossings": crossings, "idle": idle_files, "to_phone_s": to_phone, "window_s": window}


def report(result: dict[str, Any], as_json: bool) -> None:
    files: set[str] = result["files"]
    idle: set[str] = result["idle"]
    crossings: set[tuple[str, str]] = result["crossings"]

    def stage(path: str) -> str:
        return path.split("/", 1)[0]

    phone = sorted(f for f in files if stage(f) in PHONE)
    influx = sorted(f for f in files if stage(f) in INFLUX)
    pairs = sorted({(stage(a), stage(b)) for a, b in crossings})
    # Back-and-forth: two stages (broker, the shared transport and contracts, and vigil, the wiring, aside)
    # that each call into the other while the message travels.
    core = [(a, b) for a, b in pairs if a not in ("broker", "vigil") and b not in ("broker", "vigil")]
    back_and_forth = sorted({tuple(sorted(p)) for p in core if (p[1], p[0]) in core})
    if as_json:
        print(json.dumps({"phone": phone, "influx": influx, "idle_too": sorted(files & idle),
                          "stage_calls": pairs, "back_and_forth": back_and_forth,
                          "to_phone_s": round(result["to_phone_s"], 3), "window_s": round(result["window_s"], 3)},
                         indent=1))
        return
    print(f"one alarm-button press: at the phone after {result['to_phone_s']:.2f} s, "
          f"in InfluxDB after {result['window_s']:.2f} s")
    for name, road in (("box -> phone", phone), ("box -> InfluxDB", influx)):
        print(f"\n{name}: {len(road)} files ({len([f for f in road if f not in idle])} not run when idle)")
        for f in road:
            print(f"  {f}{'   (also runs when idle)' if f in idle else ''}")
    print("\ncalls crossing a stage (caller stage -> callee stage; between two stages other than broker, the files):")
    for a, b in pairs:
        print(f"  {a} -> {b}")
        if "broker" not in (a, b):
            for caller, callee in sorted(c for c in crossings if (stage(c[0]), stage(c[1])) == (a, b)):
                print(f"      {caller} -> {callee}")
    print(f"\nback-and-forth between stages (broker and vigil aside): {back_and_forth or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    recorder = Recorder()
    recorder.install()
    result = asyncio.run(walk(recorder))
    sys.setprofile(None)
    threading.setprofile(None)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
