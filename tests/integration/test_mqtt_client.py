"""MqttClient shuts down without leaking sockets, even mid-connect or after its loop is gone."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.mosquitto import MosquittoProcess
from broker.mqtt import MqttClient, MqttError


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server that accepts connections and never answers (no CONNACK)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], accepted
    finally:
        stop.set()
        t.join(2)
        srv.close()
        for conn in accepted:
            conn.close()


async def test_stop_while_waiting_for_connack_closes_the_socket(silent_server: tuple[int, list[socket.socket]]) -> None:
    port, accepted = silent_server
    client = MqttClient(f"mqtt://127.0.0.1:{port}", "never-acked")
    with pytest.raises(MqttError, match="no connection"):
        await client.start(timeout=1.0)
    assert accepted, "the client should have opened a TCP connection"
    assert client._client.socket() is None  # paho holds no open socket after stop
    # The server side sees the connection closed: recv returns b"" (EOF) rather than blocking.
    conn = accepted[0]
    conn.settimeout(2.0)
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    assert data[:1] == b"\x10"  # the CONNECT it sent, then EOF


def test_finaliser_after_the_loop_closed_raises_nothing(mosquitto: MosquittoProcess) -> None:
    """A client dropped without stop(): paho's finaliser runs after the loop closed, on another thread."""
    holder: dict[str, Any] = {}

    async def connect_and_abandon() -> None:
        client = MqttClient(mosquitto.url, "abandoned")
        await client.start(timeout=5)
        holder["client"] = client
        for task in client._tasks:
            task.cancel()

    asyncio.run(connect_and_abandon())
    client = holder.pop("client")
    assert client._client.socket() is not None  # still open: only the finaliser will close it
    unraisable: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        def drop() -> None:
            nonlocal client
            del client
            gc.collect()

        t = threading.Thread(target=drop)
        t.start()
        t.join(5)
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [u.exc_value for u in unraisable] == []


async def test_pubacks_report_success_and_refusal_through_the_quick_path(tmp_path: Path) -> None:
    """Acks with a success code take the short path; a refusal (ACL) still reaches the caller."""
    from broker.mosquitto import running_mosquitto
    from broker.mqtt import _CLIENT_CLASS, _QuickAckClient
    from broker.registry import DeviceRegistry

    assert _CLIENT_CLASS is _QuickAckClient  # the installed paho has what the short path needs
    reg = DeviceRegistry.from_data({"devices": [{"id": "veh-1", "kind": "vehicle", "password": "pw-1"},
                                                {"id": "veh-2", "kind": "vehicle", "password": "pw-2"}]})
    results: dict[str, list[bool]] = {"own": [], "other": [], "own311": []}
    with running_mosquitto(tmp_path / "broker", reg) as broker:
        for key, suffix in (("own", ""), ("own311", "?protocol=3.1.1")):
            async with MqttClient(f"mqtt://veh-1:pw-1@127.0.0.1:{broker.port}{suffix}", f"ack-{key}") as client:
                client.publish_nowait("vigil/v1/vehicle/veh-1/telemetry", b"{}", on_acked=results[key].append)
                if key == "own":
                    client.publish_nowait("vigil/v1/vehicle/veh-2/telemetry", b"{}", on_acked=results["other"].append)
                await client.flush()
    assert results == {"own": [True], "other": [False], "own311": [True]}
