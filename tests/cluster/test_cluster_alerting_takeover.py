"""Alerting survives the death of its lease holder: real nats-server nodes, real `vigil run` instances, real HTTP.

Two instances (rules + alerting, each with its alerting API) share 4 partitions. Six devices behind
gateways report a high level: six alerts open and their "Alert" notifications reach the Apprise
``json://`` receiver. An operator acknowledges three of them through the holder's API. Then the
alerting holder is SIGKILLed (its partitions die with it) while every alert is still open: the
escalation of the three unacknowledged ones (to the lead, 25 s after firing) and every resolution
are pending. The other instance takes the alerting lease, restores the dead holder's database from
its last snapshot in JetStream and continues the transitions stream: the escalations fall due on it,
then the devices report a normal level. Checked: each alert was told once as "Alert" and once as
"Resolved", the three unacknowledged ones escalated once each and the acknowledged ones not at all,
nothing twice; the new holder's API has every alert, the acknowledgements made on the dead holder
included; the sent notifications are recorded in the ``vigil_notified`` bucket.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.mosquitto import free_port
from tests.cluster.harness import GatewayDevice, InstanceProc, js_connect, lease_owner, leases, start_nats, wait_for
from tests.faults.harness import Receiver
from vigil.cluster_alerting import HEAD_KEY, NOTIFIED_BUCKET, SNAPSHOT_BUCKET

PARTITIONS = 4
DEVICES = 6
RULES = """\
rules:
  - name: cl_level_high
    kind: elevator
    severity: critical
    condition: "level > 50"
    clear: "level < 40"
    summary: "液位偏高 {device_id}"
    summary_en: "level high {device_id}"
"""
TITLE = re.compile(r"(Alert|Resolved)\b.*?level high (\S+)")
ESCALATE_S = 25.0
ROUTE = {"receivers": ["duty"], "group_by": ["..."], "group_wait_s": 0, "group_interval_s": 0,
         "repeat_interval_s": 86400, "send_resolved": True}


def _told(receiver: Receiver) -> Counter[tuple[str, str]]:
    """(Alert|Resolved, device) of the level notifications; the platform's own alerts (e.g. its event loop
    running late on a loaded machine, rule ``vigil_loop``) reach the same receiver and are left out."""
    told: Counter[tuple[str, str]] = Counter()
    for post in receiver.on("duty"):
        m = TITLE.search(post["title"])
        if m:
            told[(m.group(1), m.group(2))] += 1
        elif "level high" in post["title"] + post["message"]:
            told[("?", post["title"])] += 1
    return told


def _escalated(receiver: Receiver) -> Counter[str]:
    """Device -> escalation notifications to the lead naming it (due together, they come as one per recipient)."""
    out: Counter[str] = Counter()
    for post in receiver.on("lead"):
        # (the platform's own alerts escalate too on a loaded machine: they name no device here)
        out.update(set(re.findall(r"elev-t\d+", post["title"] + "\n" + post["message"])))
    return out


async def _api(port: int, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.request(method, url, json=body, headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


async def _snapshot_head(js: Any) -> dict[str, Any] | None:
    try:
        kv = await js.key_value(SNAPSHOT_BUCKET)
        entry = await kv.get(HEAD_KEY)
    except Exception:
        return None
    head: dict[str, Any] = json.loads(entry.value)
    return head


@pytest.mark.timeout(400)
async def test_alerting_holder_killed_with_open_alerts(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    nodes = start_nats(tmp_path / "nats", PARTITIONS)
    servers = [n.node.url for n in nodes]
    token = secrets.token_urlsafe(32)
    ports = {c: free_port() for c in "ab"}
    instances = {c: InstanceProc(tmp_path, f"inst-{c}", servers, PARTITIONS, receiver.url("duty"), rules_text=RULES,
                                 extra={"alerting": {"api": {"enabled": True, "port": ports[c]},
                                                     "users": [{"name": "zhang", "role": "operator", "token": token}],
                                                     "people": [{"id": "lead", "channels": [receiver.url("lead")]}],
                                                     "escalation_policies": [{"name": "climb", "steps": [
                                                         {"delay_s": ESCALATE_S, "targets": ["person:lead"]}]}],
                                                     "route": {**ROUTE, "escalation": "climb"}},
                                        "health": {"interval_s": 1.0}})
                 for c in "ab"}
    devices: list[GatewayDevice] = []
    nc = None
    try:
        for inst in instances.values():
            inst.start()
        nc, js = await js_connect(servers)
        wanted = {f"p{n}" for n in range(PARTITIONS)} | {"alerting"}

        async def shared() -> bool:
            owners = await leases(js)
            return set(owners) >= wanted and len({v for k, v in owners.items() if k.startswith("p")}) == 2

        await wait_for(shared, 90, lambda: "partitions leased by both instances; "
                       + "\n".join(i.log_tail(8) for i in instances.values()))

        devices = [GatewayDevice(f"elev-t{i:02d}", servers[i % 3:] + servers[:i % 3]) for i in range(DEVICES)]
        for d in devices:
            await d.start()
        ids = [d.device_id for d in devices]
        seq = 0

        async def publish(level: float, count: int) -> None:
            nonlocal seq
            for _ in range(count):
                now = time.time()
                for d in devices:
                    d.publish(seq, now, {"level": level, "speed_mps": 1.0})
                seq += 1
                await asyncio.sleep(0.1)

        await publish(60.0, 20)
        fired_at = time.time()
        await wait_for(lambda: {("Alert", d) for d in ids} <= set(_told(receiver)), 90,
                       lambda: f"the Alert notifications; told {dict(_told(receiver))}")

        holder_name = await lease_owner(js, "alerting")
        holder_key = holder_name.removeprefix("inst-")
        holder, other = instances[holder_key], next(i for k, i in instances.items() if k != holder_key)
        listed = await _api(ports[holder_key], token, "GET", "/api/alerts?status=firing")
        by_device = {a["device_id"]: a["id"] for a in listed["alerts"] if a["rule"] == "cl_level_high"}
        assert set(by_device) == set(ids), listed
        acked = sorted(ids)[:3]
        ack_at = time.time()
        for dev in acked:
            await _api(ports[holder_key], token, "POST", f"/api/alerts/{by_device[dev]}/ack", {"note": "已派人"})

        # The holder's snapshot in JetStream holds the acknowledgements (replicated within a fraction of a second).
        async def replicated() -> bool:
            head = await _snapshot_head(js)
            return head is not None and head["owner"] == holder_name and head["at"] > ack_at + 0.05

        await wait_for(replicated, 30, "a snapshot written after the acknowledgements")
        holder.kill()  # every alert open, every resolution and the escalations still to come
        killed_at = time.time()

        # The escalation of the three alerts nobody acknowledged falls due on the new holder.
        unacked = sorted(set(ids) - set(acked))
        await wait_for(lambda: set(_escalated(receiver)) >= set(unacked), 120,
                       lambda: f"the escalations from the new holder; got {_escalated(receiver)}\n" + other.log_tail(20))
        await publish(10.0, 20)

        await wait_for(lambda: {(k, d) for d in ids for k in ("Alert", "Resolved")} <= set(_told(receiver)), 120,
                       lambda: f"the Resolved notifications from the new holder; told {dict(_told(receiver))}\n"
                       + other.log_tail(20))
        await asyncio.sleep(3.0)  # a late duplicate would arrive now
        told = _told(receiver)
        assert {k: n for k, n in told.items() if n > 1} == {}, f"notified twice: {told}"
        assert set(told) == {(k, d) for d in ids for k in ("Alert", "Resolved")}, told
        assert await lease_owner(js, "alerting") == other.name
        assert _escalated(receiver) == Counter(unacked), f"escalations: {_escalated(receiver)}"

        # The new holder has every alert, with the acknowledgements made on the dead holder.
        other_port = ports[next(k for k, i in instances.items() if i is other)]
        for dev in ids:
            got = await _api(other_port, token, "GET", f"/api/alerts/{by_device[dev]}")
            alert = got["alert"]
            assert alert["status"] == "resolved", alert
            actions = [e["action"] for e in got["timeline"]]
            assert actions[0] == "created" and "resolved" in actions, actions
            if dev in acked:
                assert alert["acknowledged_by"] == "zhang", alert
                assert "acknowledged" in actions, actions
            statuses = [n["status"] for n in got["notifications"]]
            # Alert, Resolved, and the escalation for those nobody acknowledged: all sent, each once.
            assert len(statuses) == (2 if dev in acked else 3) and set(statuses) == {"sent"}, got["notifications"]
        kv = await js.key_value(NOTIFIED_BUCKET)
        recorded = [k for k in await kv.keys() if k.startswith("n.")]
        assert len(recorded) >= 2 * DEVICES, recorded
        head = await _snapshot_head(js)
        assert head is not None and head["owner"] == other.name
        print(f"\ncluster alerting: {holder_name} killed {killed_at - fired_at:.1f} s after the last high message, with "
              f"{DEVICES} open ({len(acked)} acknowledged, {len(unacked)} escalations due at {ESCALATE_S:.0f} s); "
              f"{other.name} restored snapshot of {head['bytes']} bytes; notifications {sum(told.values())}, "
              f"none twice; {len(recorded)} recorded as sent")
    finally:
        for d in devices:
            await d.stop()
        if nc is not None:
            await nc.close()
        for inst in instances.values():
            inst.stop()
        for n in nodes:
            n.stop()
        await receiver.stop()
