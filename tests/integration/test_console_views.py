"""The console's views on an alerting stage built in-process (no broker connection needed).

Feeds device messages and transitions straight into the handlers, then checks the map, device,
duty and figures views, including a registry built in code with plain-string kinds (as the demo does).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.config import AlertingConfig, ApiConfig, Person, Roster, Route, User
from alerting.desk import Actor
from alerting.lifecycle import to_contract
from alerting.service import AlertingService
from broker.contracts import (
    Channel,
    DeviceMessage,
    Kind,
    Severity,
    Telemetry,
    Transition,
    encode,
    transition_topic,
)
from broker.ingest import DeviceIngest
from broker.mqtt import Message, MqttClient
from broker.registry import Device, DeviceRegistry, Site
from console.board import BoardQuery
from console.config import ConsoleConfig, MapConfig, MapFeature
from console.service import ConsoleError, ConsoleService


def make(tmp_path: Path, **console: object) -> tuple[ConsoleService, AlertingService]:
    registry = DeviceRegistry.build(
        [Site(id="s1", name="一号站", industry="elevator", unit="市场监管局", lat=30.29, lon=120.117)],
        [Device(id="e1", kind="elevator", site="s1", name="1号梯"),  # type: ignore[arg-type]
         Device(id="v1", kind="vehicle", name="危化品车", attributes={"lat": 30.3, "lon": 120.2})],  # type: ignore[arg-type]
        [])
    mqtt = MqttClient("mqtt://127.0.0.1:1", "views-test")
    cfg = AlertingConfig(users=[User(name="op", token="t")], api=ApiConfig(enabled=False), receivers=[],
                         people=[Person(id="op", name="王芳", roles=["operator"])],
                         rosters=[Roster(name="desk", role="operator", members=["op"])],
                         route=Route(name="root", escalation="135"), inhibit_rules=[])
    alerting = AlertingService(cfg, mqtt=mqtt, registry=registry, state_dir=tmp_path / "alerting")
    svc = ConsoleService(ConsoleConfig(**console), mqtt=mqtt, ingest=DeviceIngest(mqtt), registry=registry,  # type: ignore[arg-type]
                         state_dir=tmp_path / "console", peers={"alerting": alerting})
    return svc, alerting


def fire(alerting: AlertingService, device: str, kind: Kind, severity: Severity = Severity.CRITICAL) -> None:
    t = Transition(ts=datetime.now(UTC), fingerprint=f"fp-{device}", rule="r1", status="firing", severity=severity,
                   kind=kind, device_id=device, site="s1", summary="测试", values={"speed_mps": 2.4})
    alerting.on_transitions([Message(transition_topic(kind, device), encode(t), 1, False, time.time())])


def test_console_needs_alerting_in_its_process(tmp_path: Path) -> None:
    mqtt = MqttClient("mqtt://127.0.0.1:1", "x")
    with pytest.raises(ConsoleError, match="alerting"):
        ConsoleService(ConsoleConfig(), mqtt=mqtt, ingest=DeviceIngest(mqtt), registry=DeviceRegistry({}, {}, {}),
                       state_dir=tmp_path, peers={})


def test_views_with_code_built_registry(tmp_path: Path) -> None:
    svc, alerting = make(tmp_path, map=MapConfig(geofences=[MapFeature(name="禁区", coordinates=[(120.0, 30.0),
                                                                                                 (120.1, 30.0),
                                                                                                 (120.1, 30.1)])]))
    now = time.time()
    svc.on_device_messages([DeviceMessage(Kind.VEHICLE, "v1", Channel.TELEMETRY, Telemetry(
        ts=datetime.fromtimestamp(now - i, UTC), metrics={"lat": 30.31 + i * 0.001, "lon": 120.21}), now)
        for i in (3, 2, 1)])
    fire(alerting, "e1", Kind.ELEVATOR)
    svc.on_alert_change(to_contract(next(iter(alerting.open.values()))))
    m = svc.map_data()
    kinds = {d["id"]: d["kind"] for d in m["devices"]}
    assert kinds == {"e1": "elevator", "v1": "vehicle"}
    assert [d["position"] for d in m["devices"] if d["id"] == "e1"] == [[120.117, 30.29]]
    assert [d["position"] for d in m["devices"] if d["id"] == "v1"] == [[120.21, 30.311]]
    assert m["markers"][0]["device_id"] == "e1" and m["markers"][0]["severity"] == "critical"
    assert len(m["tracks"]["v1"]) == 3 and m["geofences"][0]["name"] == "禁区"
    devs = svc.devices({})
    assert [d["id"] for d in devs["devices"]] == ["e1", "v1"]  # the one with an open alert first
    assert devs["devices"][0]["open_alerts"] == 1 and devs["devices"][0]["worst_severity"] == "critical"
    duty = svc.duty()
    assert duty["on_duty"][0]["name"] == "王芳" and len(duty["rosters"][0]["upcoming"]) == 6
    assert duty["escalations"][0]["policy"] == "135" and len(duty["escalations"][0]["steps"]) == 4
    fig = svc.figures(7)
    assert fig["today"]["total"] == 1 and fig["by_industry"]["elevator"]["total"] == 1
    assert sum(d["count"] for d in fig["daily"]) == 1
    aid = next(iter(alerting.open))
    snap = svc.journal.snapshot(aid)
    assert snap is not None and snap["values"] == {"speed_mps": 2.4}
    assert svc.day_start(now) <= now < svc.day_start(now) + 86400

    # The critical alert sounds until it is silenced; silenced, it stays on the board without the banner.
    q = BoardQuery.parse({})
    assert [a["id"] for a in svc.board(q, False)["critical"]] == [aid]
    alerting.desk.create_silence(Actor("lead", "supervisor"), ["device_id=e1"], now + 600)
    out = svc.board(q, False)
    assert out["critical"] == [] and out["alerts"][0]["muted"]["kind"] == "silence"

