"""The NATS uplink's pure parts: record ids, order keys, command filters, the ``--nats`` option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge.runtime.cli import parse_nats_servers
from edge.runtime.identity import EdgeIdentity
from edge.runtime.link import EdgeLinkError
from edge.runtime.nats_link import NatsEdgeLink, filter_to_subject, order_key, record_msg_id, subject_topic
from edge.runtime.outbox import OutboxMessage


def test_record_id_is_stable_and_tells_outboxes_apart() -> None:
    first = OutboxMessage(7, "vigil/v1/elevator/e1/telemetry", b"{}", False, 1_700_000_000.123456)
    again = OutboxMessage(7, "vigil/v1/elevator/e1/telemetry", b"{}", False, 1_700_000_000.123456)
    fresh_outbox = OutboxMessage(7, "vigil/v1/elevator/e1/telemetry", b"{}", False, 1_700_000_050.0)
    assert record_msg_id("vigil-gw-a", first) == record_msg_id("vigil-gw-a", again) == "vigil-gw-a:7:1700000000123456"
    assert record_msg_id("vigil-gw-a", fresh_outbox) != record_msg_id("vigil-gw-a", first)
    assert record_msg_id("vigil-gw-b", first) != record_msg_id("vigil-gw-a", first)


@pytest.mark.parametrize(("topic", "key"), [
    ("vigil/v1/elevator/e1/telemetry", "vigil/v1/elevator/e1"),
    ("vigil/v1/elevator/e1/event", "vigil/v1/elevator/e1"),
    ("vigil/v1/vehicle/13800000000/status", "vigil/v1/vehicle/13800000000"),
    ("vigil/v1/deadletter/jt808", "vigil/v1/deadletter/jt808"),
    ("other/topic/a/b/c", "other/topic/a/b/c"),
])
def test_order_key_is_the_device(topic: str, key: str) -> None:
    assert order_key(topic) == key


@pytest.mark.parametrize(("topic_filter", "subject"), [
    ("vigil/v1/emission/+/command", "vigil.p.*.emission.*.command"),
    ("vigil/v1/elevator/e1/command", "vigil.p.*.elevator.e1.command"),
    ("vigil/v1/alerts/#", "vigil.v1.alerts.>"),
    ("vigil/v1/gateways/gw.1/status", "vigil.p.*.gateways.gw//1.status"),
])
def test_command_filter_listens_on_the_mapped_subject(topic_filter: str, subject: str) -> None:
    assert filter_to_subject(topic_filter) == subject


def test_received_subject_back_to_topic() -> None:
    assert subject_topic("vigil.p.3.emission.mn-1.command") == "vigil/v1/emission/mn-1/command"
    assert subject_topic("vigil.v1.alerts.x") == "vigil/v1/alerts/x"


def test_nats_option() -> None:
    assert parse_nats_servers("nats://a:4222, nats://b:4222") == ["nats://a:4222", "nats://b:4222"]
    for bad in ("", "mqtt://a:1883", "nats://a:4222,a:4222"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_nats_servers(bad)


async def test_link_needs_a_server_and_owns_its_folder(tmp_path: Path) -> None:
    identity = EdgeIdentity.for_gateway("gw-unit", agent="t")
    with pytest.raises(EdgeLinkError):
        NatsEdgeLink([], identity, tmp_path / "o")
    link = NatsEdgeLink(["nats://127.0.0.1:1"], identity, tmp_path / "o")
    try:
        with pytest.raises(EdgeLinkError):
            NatsEdgeLink(["nats://127.0.0.1:1"], identity, tmp_path / "o")
        with pytest.raises(ValueError):
            link.publish("vigil/v1/elevator/+/telemetry", b"{}")
        assert link.publish("vigil/v1/elevator/e1/telemetry", b"{}") == 1
        assert len(link.outbox) == 1
    finally:
        await link.stop()
    again = NatsEdgeLink(["nats://127.0.0.1:1"], identity, tmp_path / "o")  # the folder is free once stopped
    assert len(again.outbox) == 1
    await again.stop()
