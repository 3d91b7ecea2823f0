"""EdgeIdentity: ids, topics, credentials in URLs without leaking them; password sources; folder lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.contracts import DeviceStatus, decode_device_message
from edge.runtime import EdgeIdentity, EdgeLink, EdgeLinkError, IdentityError, gateway_status_topic, read_password


def test_device_identity_topics_and_user() -> None:
    ident = EdgeIdentity.for_device("elevator", "elev-01", agent="a", password="s3cret")
    assert ident.client_id == "vigil-edge-elevator-elev-01"
    assert ident.status_topic == "vigil/v1/elevator/elev-01/status"
    assert ident.username == "elev-01"
    assert "s3cret" not in repr(ident)


def test_gateway_identity() -> None:
    ident = EdgeIdentity.for_gateway("hj212-gw", agent="a")
    assert ident.status_topic == gateway_status_topic("hj212-gw") == "vigil/v1/gateways/hj212-gw/status"
    assert ident.username == "hj212-gw" and ident.client_id == "vigil-gw-hj212-gw"


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "+", "x" * 65])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        EdgeIdentity.for_device("elevator", bad, agent="a")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        EdgeIdentity.for_device("toaster", "t1", agent="a")


def test_broker_url_gets_quoted_credentials_only_with_a_password() -> None:
    anon = EdgeIdentity.for_device("elevator", "e1", agent="a")
    assert anon.broker_url("mqtt://h:1883") == "mqtt://h:1883"
    ident = EdgeIdentity.for_device("elevator", "e1", agent="a", password="p@ss:w/rd")
    assert ident.broker_url("mqtts://broker.example:8883") == "mqtts://e1:p%40ss%3Aw%2Frd@broker.example:8883"
    assert ident.broker_url("mqtt://other:pw@h:1") == "mqtt://other:pw@h:1"  # explicit URL credentials win


def test_read_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_PW", "from-env")
    assert read_password(password_env="VIGIL_TEST_PW") == "from-env"
    f = tmp_path / "pw"
    f.write_text("from-file\nignored\n")
    assert read_password(password_file=f) == "from-file"
    assert read_password() is None
    with pytest.raises(IdentityError, match="VIGIL_MISSING"):
        read_password(password_env="VIGIL_MISSING")
    with pytest.raises(IdentityError, match="cannot read"):
        read_password(password_file=tmp_path / "absent")


async def test_status_payloads_are_contract_messages_and_folder_is_locked(tmp_path: Path) -> None:
    ident = EdgeIdentity.for_device("elevator", "e1", agent="vigil-test")
    link = EdgeLink("mqtt://127.0.0.1:1", ident, tmp_path / "d")
    with pytest.raises(EdgeLinkError, match="in use"):
        EdgeLink("mqtt://127.0.0.1:1", ident, tmp_path / "d")
    msg = decode_device_message(ident.status_topic, link._status_payload(False, "connection_lost", with_ts=False))
    assert isinstance(msg.payload, DeviceStatus)
    assert msg.payload.online is False and msg.payload.reason == "connection_lost" and msg.payload.agent == "vigil-test"
    # Publishing works offline, before start: the message waits in the outbox.
    seq = link.publish("vigil/v1/elevator/e1/telemetry", b"{}")
    assert seq >= 1 and len(link.outbox) == 1
    with pytest.raises(ValueError):
        link.publish("vigil/v1/elevator/+/telemetry", b"{}")
    with pytest.raises(ValueError):
        link.publish("vigil/v1/elevator/e1/telemetry", b"x" * (64 * 1024 + 1))
    await link.stop(timeout=0.1)
    # The lock is released on stop: a new agent may take the folder, and finds the message.
    again = EdgeLink("mqtt://127.0.0.1:1", ident, tmp_path / "d")
    assert len(again.outbox) == 1
    await again.stop(timeout=0.1)
