"""Pure parts of the cluster runtime: lease expiry as seen by one instance, backlog cutting, config."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from broker.contracts import Kind, Severity, Transition, encode
from broker.mqtt import Message
from broker.nats_server import partition_mapping
from broker.nats_transport import device_topic, subject_to_topic, topic_to_subject, transition_msg_id
from vigil.cluster_alerting import split_episodes
from vigil.cluster_leases import LeaseTable, fair_share
from vigil.config import ConfigError, parse_config


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_lease_expires_only_after_ttl_unchanged_on_this_instances_clock() -> None:
    clock = Clock()
    table = LeaseTable(5.0, clock)
    assert table.state("p0") == ("absent", None)
    table.observe("p0", 7, "inst-a")
    clock.t += 4.9
    table.observe("p0", 7, "inst-a")
    assert table.state("p0") == ("held", 7)
    clock.t += 0.2
    assert table.state("p0") == ("expired", 7)
    table.observe("p0", 8, "inst-a")  # renewed: the count starts again
    assert table.state("p0") == ("held", 8)


def test_a_failed_round_forgets_so_an_outage_does_not_expire_leases() -> None:
    clock = Clock()
    table = LeaseTable(5.0, clock)
    table.observe("p0", 7, "inst-a")
    clock.t += 3
    table.forget()  # e.g. a JetStream leader election: nobody could renew
    clock.t += 3
    table.observe("p0", 7, "inst-a")
    assert table.state("p0") == ("held", 7)


def test_deleted_lease_is_absent_and_live_instances_come_from_heartbeats() -> None:
    clock = Clock()
    table = LeaseTable(5.0, clock)
    table.observe("p1", 3, "inst-b")
    table.observe("p1", None, None)
    assert table.state("p1") == ("absent", None)
    table.observe("i.inst-b", 10, "inst-b")
    table.observe("i.inst-c", 11, "inst-c")
    clock.t += 6
    table.observe("i.inst-b", 12, "inst-b")  # inst-c stopped beating
    assert table.live_instances("inst-a") == {"inst-a", "inst-b"}


@pytest.mark.parametrize(("partitions", "live", "share"), [(12, 3, 4), (12, 5, 3), (6, 1, 6), (6, 0, 6), (1, 3, 1)])
def test_fair_share(partitions: int, live: int, share: int) -> None:
    assert fair_share(partitions, live) == share


def test_subjects_and_topics_round_trip_with_dots_in_device_ids() -> None:
    topic = "vigil/v1/elevator/bldg.7-e1/telemetry"
    assert topic_to_subject(topic) == "vigil.v1.elevator.bldg//7-e1.telemetry"
    assert subject_to_topic(topic_to_subject(topic)) == topic
    assert device_topic("vigil.p.5.elevator.bldg//7-e1.telemetry") == topic
    source, dest = partition_mapping(12)
    assert source == "vigil.v1.*.*.*"
    assert dest == "vigil.p.{{partition(12,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"


def _transition(fp: str, status: str, started: float) -> bytes:
    t = Transition(ts=datetime.fromtimestamp(started + 5, UTC), fingerprint=fp, rule="r", status=status,  # type: ignore[arg-type]
                   severity=Severity.MAJOR, kind=Kind.ELEVATOR, device_id="e1",
                   started_at=datetime.fromtimestamp(started, UTC))
    return encode(t)


def test_transition_id_is_the_episode_decision_not_the_time_it_was_made() -> None:
    a = _transition("f1", "firing", 1000.0)
    again = encode(msgspec.structs.replace(msgspec.json.decode(a, type=Transition),
                                           ts=datetime.fromtimestamp(2000, UTC)))
    assert transition_msg_id(a) == transition_msg_id(again)  # replayed later: same id, JetStream drops it
    assert transition_msg_id(a) != transition_msg_id(_transition("f1", "resolved", 1000.0))
    assert transition_msg_id(a) != transition_msg_id(_transition("f1", "firing", 1060.0))  # next episode


def test_a_backlog_is_cut_where_an_alert_repeats() -> None:
    msgs = [Message("vigil/v1/transitions/elevator/e1", p, 1, False, 0.0) for p in (
        _transition("f1", "firing", 1.0), _transition("f2", "firing", 1.0), _transition("f1", "resolved", 1.0),
        b"not json", _transition("f2", "resolved", 1.0))]
    parts = split_episodes(msgs)
    assert [len(p) for p in parts] == [2, 3]
    assert [m for p in parts for m in p] == msgs


def test_cluster_config_is_validated_with_the_key_named() -> None:
    ok = parse_config({"services": ["rules", "alerting"], "cluster": {"servers": ["nats://10.0.0.1:4222"]}})
    assert ok.cluster is not None and ok.cluster.partitions == 12
    with pytest.raises(ConfigError, match=r"cluster\.servers"):
        parse_config({"services": ["rules"], "cluster": {"servers": ["http://x"]}})
    with pytest.raises(ConfigError, match="cannot run in cluster mode"):
        parse_config({"services": ["rules", "console"], "cluster": {"servers": ["nats://a:4222"]}})
    assert parse_config({"services": ["rules", "storage"], "cluster": {"servers": ["nats://a:4222"]}}).cluster
    with pytest.raises(ConfigError, match="add rules"):
        parse_config({"services": ["storage"], "cluster": {"servers": ["nats://a:4222"]}})
    with pytest.raises(ConfigError, match="partitions"):
        parse_config({"services": ["rules"], "cluster": {"servers": ["nats://a:4222"], "partitions": 0}})
    with pytest.raises(ConfigError, match="lease_tt"):
        parse_config({"services": ["rules"], "cluster": {"servers": ["nats://a:4222"], "lease_tt": 3}})
