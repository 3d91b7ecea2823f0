"""Issue 14 #1: a device-supplied ``snapshot_url`` must never make alerting or the console read a file or
fetch a URL of the attacker's choosing.

The attack: a device account publishes an event whose ``snapshot_url`` is a secrets file, a symlink in the
evidence store pointing at it, or an internal HTTP URL. Before the fix alerting handed that string to
Apprise as an attachment (Apprise read the file / fetched the URL and sent it to every channel) and the
console put it in an ``<img>``. Every test below sends the notification through real Apprise to a real
HTTP receiver and checks what arrived; the alert itself must still be delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from http_helpers import JPEG, PNG, SECRET, HitCounter, Receiver, tmp_secret_file

from alerting.config import AlertingConfig, ApiConfig, Person, Retry, Route
from alerting.evidence import EvidenceConfig, EvidencePolicy, EvidenceRefused
from alerting.sender import AppriseSender, Message
from alerting.service import AlertingService
from broker.contracts import Kind, Severity, Transition, encode, utcnow
from broker.mosquitto import MosquittoProcess
from broker.mqtt import Message as MqttMessage
from broker.mqtt import MqttClient
from tests.support import console_stack as testing
from tests.support.console_stack import ConsoleStack, wait_until


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    assert r.server is not None
    await r.server.stop()


@pytest.fixture
async def camera_agent() -> AsyncIterator[HitCounter]:
    """An allow-listed evidence host (a camera agent's ``evidence.base_url``)."""
    h = await HitCounter().start()
    yield h
    assert h.server is not None
    await h.server.stop()


@pytest.fixture
async def internal() -> AsyncIterator[HitCounter]:
    """An internal service (metadata endpoint, admin API) that no device may make Vigil fetch."""
    h = await HitCounter().start()
    yield h
    assert h.server is not None
    await h.server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The evidence store with one real snapshot and a symlink escaping to the secrets file."""
    root = tmp_path / "evidence"
    (root / "cam-1" / "2026-12-03").mkdir(parents=True)
    (root / "cam-1" / "2026-12-03" / "intrusion.jpg").write_bytes(JPEG)
    secret = tmp_secret_file(tmp_path)
    (root / "cam-1" / "2026-12-03" / "escape.jpg").symlink_to(secret)
    (root / "cam-1" / "2026-12-03" / "text.jpg").write_text(SECRET)
    return root


def policy(store: Path, *hosts: str, max_bytes: int = 1024 * 1024) -> EvidencePolicy:
    return EvidencePolicy(EvidenceConfig(dir=str(store), hosts=list(hosts), max_bytes=max_bytes, timeout_s=5.0))


async def send(sender: AppriseSender, receiver: Receiver, ref: str | None) -> dict[str, Any]:
    before = len(receiver.posts)
    result = await sender.deliver([receiver.url()], Message("告警", "电梯困人", ref))
    assert result.ok, result.error  # the alert is delivered whatever happened to the snapshot
    assert len(receiver.posts) == before + 1
    return receiver.posts[-1]


async def test_device_references_outside_the_store_and_hosts_are_refused_and_the_alert_still_goes_out(
        receiver: Receiver, camera_agent: HitCounter, internal: HitCounter, store: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the sender's temp files go
    pol = policy(store, camera_agent.origin)
    sender = AppriseSender(Retry(attempts=1, timeout_s=5.0), threads=2, evidence=pol)
    secret = tmp_path / "secrets.env"
    camera_agent.redirect_to = f"{internal.origin}/latest/meta-data/iam"
    attacks = {
        "outside_store": [secret.as_uri(), str(secret), f"{store}/../secrets.env",
                          (store / "cam-1" / "2026-12-03" / "escape.jpg").as_uri()],  # symlink out of the store
        "not_found": ["file:///etc/shadow-does-not-exist.jpg"],
        "host_not_allowed": [f"{internal.origin}/admin/secrets.jpg", "http://169.254.169.254/latest/meta-data/",
                             f"https://127.0.0.1:{camera_agent.server.port if camera_agent.server else 0}/snap/ok.jpg",
                             f"http://localhost:{camera_agent.server.port if camera_agent.server else 0}/snap/ok.jpg"],
        "scheme_not_allowed": ["ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1:6379/_FLUSHALL"],
        "malformed": [f"http://user@{camera_agent.origin[7:]}/snap/ok.jpg"],
        "not_image": [(store / "cam-1" / "2026-12-03" / "text.jpg").as_uri(), f"{camera_agent.origin}/snap/fake.jpg"],
        "content_type": [f"{camera_agent.origin}/snap/page.html"],
        "too_large": [f"{camera_agent.origin}/snap/huge.jpg"],
        "http_status": [f"{camera_agent.origin}/snap/redirect.jpg"],  # a redirect is not followed
    }
    try:
        for reason, refs in attacks.items():
            for ref in refs:
                post = await send(sender, receiver, ref)
                assert receiver.attachments(post) == [], (reason, ref)
                assert ref not in post["message"], ref  # nor pasted into the text for the channel to fetch
        # Nothing secret reached any channel, the internal service was never asked, the refusals were counted.
        assert SECRET.encode() not in receiver.everything()
        assert internal.hits == []
        for reason, refs in attacks.items():
            assert pol.refused[reason] == len(refs), (reason, dict(pol.refused))
        # The temp files the sender writes are gone afterwards.
        assert not list((tmp_path / "tmp").iterdir())
    finally:
        sender.close()


async def test_allowed_evidence_is_fetched_checked_and_attached(
        receiver: Receiver, camera_agent: HitCounter, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    pol = policy(store, camera_agent.origin + "/")
    sender = AppriseSender(Retry(attempts=1, timeout_s=5.0), threads=2, evidence=pol)
    try:
        for ref, data in [((store / "cam-1" / "2026-12-03" / "intrusion.jpg").as_uri(), JPEG),
                          (str(store / "cam-1" / "2026-12-03" / "intrusion.jpg"), JPEG),
                          (f"{camera_agent.origin}/snap/ok.jpg", JPEG), (f"{camera_agent.origin}/snap/ok.png", PNG)]:
            post = await send(sender, receiver, ref)
            assert receiver.attachments(post) == [data], ref
        assert pol.fetched == 4 and sum(pol.refused.values()) == 0
        assert not list((tmp_path / "tmp").iterdir())  # each attached copy was deleted after its delivery
    finally:
        sender.close()


async def test_hanging_or_unreachable_hosts_cost_at_most_the_timeout(camera_agent: HitCounter, store: Path) -> None:
    pol = EvidencePolicy(EvidenceConfig(dir=str(store), hosts=[camera_agent.origin, "http://127.0.0.1:9"],
                                        timeout_s=0.5))
    for ref, reason in ((f"{camera_agent.origin}/snap/slow.jpg", "timeout"), ("http://127.0.0.1:9/x.jpg",
                                                                                "unreachable")):
        with pytest.raises(EvidenceRefused) as exc:
            await asyncio.to_thread(pol.read, ref)
        assert exc.value.reason == reason
    assert pol.refused == {"timeout": 1, "unreachable": 1}


def test_policy_is_exact_about_origins(store: Path) -> None:
    pol = policy(store, "http://cam-agent-1:8090", "https://evidence.example.org")
    assert pol.classify("http://cam-agent-1:8090/cam-1/a.jpg")[0] == "host"
    assert pol.classify("HTTP://CAM-AGENT-1:8090/cam-1/a.jpg")[0] == "host"
    assert pol.classify("https://evidence.example.org:443/a.jpg")[0] == "host"
    for ref in ("http://cam-agent-1/a.jpg", "http://cam-agent-1:8091/a.jpg", "https://cam-agent-1:8090/a.jpg",
                "http://cam-agent-1.attacker.example:8090/a.jpg", "http://evidence.example.org/a.jpg",
                "http://cam-agent-1:8090@127.0.0.1/a.jpg", "http://127.0.0.1#@cam-agent-1:8090/a.jpg",
                "http://cam-agent-1:8090\\@127.0.0.1/", "x" * 5000, ""):
        with pytest.raises(EvidenceRefused):
            pol.classify(ref)
    with pytest.raises(ValueError, match=r"hosts\[0\]"):
        EvidenceConfig(hosts=["http://user:pw@cam:80"])
    # Without a store, file references are refused outright.
    with pytest.raises(EvidenceRefused, match="no_store"):
        EvidencePolicy(EvidenceConfig()).classify("/etc/passwd")


async def test_service_delivers_the_alert_without_the_attachment_and_counts_the_refusal(
        mosquitto: MosquittoProcess, receiver: Receiver, internal: HitCounter, store: Path, tmp_path: Path) -> None:
    """Through the whole alerting stage: transitions carrying the attacker's references, as the rules engine
    forwards them from a device event."""
    cfg = AlertingConfig(
        people=[Person(id="op", roles=["operator"], channels=[receiver.url("/op")])],
        receivers=[], route=Route(name="root", receivers=["person:op"], group_wait_s=0.0, group_by=["device_id"]),
        escalation_policies=[], inhibit_rules=[], api=ApiConfig(enabled=False),
        retry=Retry(attempts=1, backoff_s=0.01, timeout_s=5.0), evidence=EvidenceConfig(dir=str(store)))
    mqtt = MqttClient(mosquitto.url, "alerting-evidence-test", clean_start=True)
    svc = AlertingService(cfg, mqtt=mqtt, state_dir=tmp_path / "state")
    svc.attach()
    await mqtt.start()
    task = asyncio.create_task(svc.run())
    refs = {"cam-a": (tmp_path / "secrets.env").as_uri(), "cam-b": f"{internal.origin}/admin/export",
            "cam-c": (store / "cam-1" / "2026-12-03" / "intrusion.jpg").as_uri()}
    try:
        now = utcnow()
        for dev, ref in refs.items():
            t = Transition(ts=now, fingerprint=f"intrusion:{dev}", rule="intrusion", status="firing",
                           severity=Severity.MAJOR, kind=Kind.CAMERA, device_id=dev, site="gate-1",
                           summary="周界入侵", source_ts=now, snapshot_url=ref)
            svc.on_transitions([MqttMessage(f"vigil/v1/transitions/camera/{dev}", encode(t), 1, False, 0.0)])
        await wait_until(lambda: len(svc.store.notifications(status="sent")) == 3, 15, "three notifications")
        by_device = {next(d for d in refs if d in p["title"]): p for p in receiver.posts}
        assert receiver.attachments(by_device["cam-a"]) == [] and receiver.attachments(by_device["cam-b"]) == []
        assert receiver.attachments(by_device["cam-c"]) == [JPEG]
        assert SECRET.encode() not in receiver.everything() and internal.hits == []
        stats = svc.stats()
        assert stats["evidence_refused_outside_store"] == 1 and stats["evidence_refused_host_not_allowed"] == 1
        assert stats["evidence_fetched"] == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mqtt.stop()
        svc.store.close()


# ---------------------------------------------------------------------- the console

@pytest.fixture
async def stack(tmp_path: Path, store: Path, camera_agent: HitCounter,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ConsoleStack]:
    data = copy.deepcopy(testing.REGISTRY_DATA)
    data["devices"].append({"id": "elev-0003", "kind": "elevator", "site": "cuiyuan-3", "name": "3号梯",
                            "attributes": {"rated_speed_mps": 1.75, "floors": 18, "floor_height_m": 3.0}})
    monkeypatch.setattr(testing, "REGISTRY_DATA", data)
    async with ConsoleStack(tmp_path / "stack", console_options={"evidence_dir": str(store)},
                            alerting_options={"evidence": {"hosts": [camera_agent.origin]}}) as st:
        yield st


async def raise_with_snapshot(st: ConsoleStack, device: str, ref: str) -> str:
    before = set(st.alerting.open)
    await st.event("elevator", device, "trapped_passenger", snapshot_url=ref)
    new = await wait_until(lambda: set(st.alerting.open) - before, 5, f"an alert for {device}")
    aid = str(next(iter(new)))
    assert st.alerting.open[aid].snapshot_url == ref  # the device's string travelled this far
    return aid


async def test_console_shows_only_allowed_evidence_through_its_own_routes(
        stack: ConsoleStack, store: Path, tmp_path: Path, camera_agent: HitCounter, internal: HitCounter) -> None:
    headers = {"Authorization": "Bearer wang-token-0001"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async def detail(aid: str) -> dict[str, Any]:
            async with http.get(f"{stack.url}/api/alerts/{aid}") as resp:
                assert resp.status == 200
                return dict(await resp.json())

        async def snapshot(aid: str) -> tuple[int, bytes, str]:
            async with http.get(f"{stack.url}/api/alerts/{aid}/snapshot") as resp:
                return resp.status, await resp.read(), resp.content_type

        bad = await raise_with_snapshot(stack, "elev-0001", (tmp_path / "secrets.env").as_uri())
        d = await detail(bad)
        assert d["snapshot_image"] is None
        status, body, _ = await snapshot(bad)
        assert status == 404 and SECRET.encode() not in body

        internal_alert = await raise_with_snapshot(stack, "elev-0002", f"{internal.origin}/admin/export")
        assert (await detail(internal_alert))["snapshot_image"] is None
        assert (await snapshot(internal_alert))[0] == 404 and internal.hits == []

        ok = await raise_with_snapshot(stack, "elev-0003", f"{camera_agent.origin}/snap/ok.jpg")
        href = (await detail(ok))["snapshot_image"]
        assert href == f"/api/alerts/{ok}/snapshot"
        status, body, ctype = await snapshot(ok)
        assert (status, body, ctype) == (200, JPEG, "image/jpeg")

        # Store files go through /evidence/, checked by the same policy (symlink escapes and non-images refused).
        async with http.get(f"{stack.url}/evidence/cam-1/2026-12-03/intrusion.jpg") as resp:
            assert resp.status == 200 and await resp.read() == JPEG
        for path in ("cam-1/2026-12-03/escape.jpg", "cam-1/2026-12-03/text.jpg", "..%2Fsecrets.env",
                     "cam-1/..%2F..%2Fsecrets.env"):
            async with http.get(f"{stack.url}/evidence/{path}") as resp:
                assert resp.status == 404, path
                assert SECRET.encode() not in await resp.read()
        # The page may load images from the console only.
        async with http.get(f"{stack.url}/api/session") as resp:
            csp = resp.headers["Content-Security-Policy"]
        assert "img-src 'self' data:;" in csp and "http:" not in csp
    assert stack.console is not None and stack.console.counters["evidence_refused_outside_store"] >= 1
