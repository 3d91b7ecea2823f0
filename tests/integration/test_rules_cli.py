"""``vigil rules check|test|replay`` on real files and a real InfluxDB."""

from __future__ import annotations

import io
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.contracts import DeviceEvent, Kind, Telemetry, device_topic, encode
from rules import cli
from rules.loader import PACKS_DIR

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def run(fn: Any, *args: Any, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(*args, out=out, **kw)
    return code, out.getvalue()


def test_check_shipped_packs_and_a_broken_file(tmp_path: Path) -> None:
    code, text = run(cli.check, [str(PACKS_DIR)])
    assert code == 0 and "0 errors" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    kind: sensor\n    severity: loud\n    condition: 'v >'\n"
                   "    summary: s\n  - name: y\n    kind: robot\n", encoding="utf-8")
    code, text = run(cli.check, [str(bad)])
    assert code == 1
    assert f"{bad}:4: rule 'x': severity must be one of" in text
    assert f"{bad}:7: rule 'y': missing required key 'condition'" in text
    assert "2 errors" in text


def test_rule_tests_pass_and_fail(tmp_path: Path) -> None:
    code, text = run(cli.test, [str(PACKS_DIR)])
    assert code == 0 and " 0 failed" in text
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - name: hot\n    kind: sensor\n    severity: major\n    condition: 'v > 10'\n"
                     "    summary: 'v={v}'\n", encoding="utf-8")
    tests = tmp_path / "r_test.yaml"
    tests.write_text("rule_files: [r.yaml]\ntests:\n  - name: wrong time\n    kind: sensor\n"
                     "    series: [{metric: v, interval: 1s, values: '1 11'}]\n"
                     "    expect: [{at: 0s, rule: hot, status: firing}]\n", encoding="utf-8")
    code, text = run(cli.test, [str(tests)])
    assert code == 1
    assert "FAIL" in text and "wrong time" in text and "at 1s" in text


def _registry(tmp_path: Path, elevator: str) -> str:
    path = tmp_path / "registry.yaml"
    path.write_text(f"devices:\n  - {{id: {elevator}, kind: elevator, attributes: {{rated_speed_mps: 1.75}}}}\n",
                    encoding="utf-8")
    return str(path)


def _record(lines: list[dict[str, Any]], path: Path) -> None:
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8")


def test_replay_a_recorded_mqtt_file(tmp_path: Path) -> None:
    recs: list[dict[str, Any]] = []
    for i, speed in enumerate([1.0, 2.2, 2.2, 2.2, 1.0]):
        tel = Telemetry(ts=T0 + timedelta(seconds=i), metrics={"speed_mps": speed, "door": "closed"})
        recs.append({"topic": device_topic(Kind.ELEVATOR, "el-9", "telemetry"),
                     "payload": json.loads(encode(tel)), "ts": (T0 + timedelta(seconds=i, milliseconds=40)).timestamp()})
    ev = DeviceEvent(ts=T0 + timedelta(seconds=5), type="trapped_passenger", state="start")
    recs.append({"topic": device_topic(Kind.ELEVATOR, "el-9", "event"), "payload": encode(ev).decode(),
                 "ts": "2026-11-26T06:00:05.050Z"})
    recs.append({"topic": "vigil/v1/elevator/el-9/telemetry", "payload": "{broken", "ts": 0})
    path = tmp_path / "rec.jsonl"
    _record(recs, path)
    # The overspeed rule needs the lift's rated speed from the registry (no guessed default).
    registry = _registry(tmp_path, "el-9")
    code, text = run(cli.replay, [str(PACKS_DIR / "elevator.yaml")], mqtt_file=str(path), registry=registry)
    assert code == 0, text
    lines = text.strip().splitlines()
    assert lines[0].startswith("2026-11-26T06:00:03.000Z  FIRING   critical elevator_overspeed")
    assert lines[1].startswith("2026-11-26T06:00:04.000Z  RESOLVED critical elevator_overspeed")
    assert lines[2].startswith("2026-11-26T06:00:05.000Z  FIRING   critical elevator_trapped_passenger")
    assert "6 messages replayed, 1 refused {'malformed_json': 1}: 2 alerts fired, 1 resolved, 1 still firing" \
        in lines[-1]
    code, text = run(cli.replay, [str(PACKS_DIR / "elevator.yaml")], mqtt_file=str(path), as_json=True,
                     registry=registry)
    assert [json.loads(t)["status"] for t in text.splitlines()] == ["firing", "resolved", "firing"]


def test_replay_missing_file_is_an_error(tmp_path: Path) -> None:
    assert run(cli.replay, [], mqtt_file=str(tmp_path / "nope.jsonl"))[0] == 2


def test_replay_from_influxdb(influxdb: Any, tmp_path: Path) -> None:
    from storage.lineproto import LineEncoder

    enc = LineEncoder()
    lines = []
    for i, speed in enumerate([1.0, 2.2, 2.2, 2.2, 1.0]):
        tel = Telemetry(ts=T0 + timedelta(seconds=i), metrics={"speed_mps": speed, "door": "closed"})
        line = enc.telemetry(Kind.ELEVATOR, "el-7", "tower-1", tel)
        assert line is not None
        lines.append(line)
    lines.append(enc.event(Kind.ELEVATOR, "el-7", "tower-1",
                           DeviceEvent(ts=T0 + timedelta(seconds=6), type="door_fail_open")))
    req = urllib.request.Request(f"{influxdb.url}/write?db={influxdb.database}&precision=ns",
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204
    code, text = run(cli.replay, [str(PACKS_DIR / "elevator.yaml")], influx_url=influxdb.url,
                     influx_db=influxdb.database, since="2026-11-26T05:00:00Z", until="2026-11-26T07:00:00Z",
                     kinds=["elevator"], registry=_registry(tmp_path, "el-7"))
    assert code == 0, text
    got = [line.split()[:4] for line in text.strip().splitlines()[:-1]]
    assert got == [["2026-11-26T06:00:03.000Z", "FIRING", "critical", "elevator_overspeed"],
                   ["2026-11-26T06:00:04.000Z", "RESOLVED", "critical", "elevator_overspeed"],
                   ["2026-11-26T06:00:06.000Z", "FIRING", "major", "elevator_door_fault"]]
