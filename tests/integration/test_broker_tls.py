"""The optional TLS listener: a client that trusts the CA connects over mqtts:// and exchanges messages."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from broker.mosquitto import BrokerLayout, MosquittoProcess, TlsListener, free_port, wait_for_port
from broker.mqtt import Message, MqttClient, MqttError
from broker.registry import DeviceRegistry

REG = DeviceRegistry.from_data({
    "devices": [{"id": "elev-1", "kind": "elevator", "password": "dev-pw"}],
    "services": [{"name": "vigil-platform", "role": "platform", "password": "pw"},
                 {"name": "control-room", "role": "observer", "password": "cr-pw"}],
})


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Vigil test CA",
        "-keyout", str(ca_key), "-out", str(ca_crt))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return ca_crt, crt, key


async def test_tls_listener_accepts_clients_that_trust_the_ca(tmp_path: Path) -> None:
    ca, crt, key = make_certificates(tmp_path)
    tls_port, plain_port = free_port(), free_port()
    layout = BrokerLayout(data_dir=tmp_path / "broker", port=plain_port,
                          tls=TlsListener(tls_port, str(crt), str(key), host="127.0.0.1"))
    broker = MosquittoProcess(layout, REG)
    broker.start()
    try:
        wait_for_port("127.0.0.1", tls_port)
        device_url = broker.account_url("elev-1", "dev-pw")
        observer_url = broker.account_url("control-room", "cr-pw")
        assert device_url == f"mqtts://elev-1:dev-pw@127.0.0.1:{tls_port}"
        assert observer_url == f"mqtts://control-room:cr-pw@127.0.0.1:{broker.observer_port}"
        got: list[Message] = []
        async with MqttClient(observer_url, "tls-sub", clean_start=True, ca_file=str(ca)) as sub, \
                MqttClient(device_url, "tls-pub", clean_start=True, ca_file=str(ca)) as pub:
            sub.subscribe("vigil/v1/#", got.extend)
            await asyncio.sleep(0.3)
            await pub.publish("vigil/v1/elevator/elev-1/telemetry", b"{}")
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
        assert [m.topic for m in got] == ["vigil/v1/elevator/elev-1/telemetry"]
        # Without the CA the certificate is not trusted: no connection.
        untrusting = MqttClient(device_url, "tls-untrusting", clean_start=True)
        with pytest.raises(MqttError):
            await untrusting.start(timeout=3)
        # With TLS configured, devices and observers have no plaintext listener beside it.
        for port in (plain_port, broker.observer_port):
            with pytest.raises(MqttError):
                await MqttClient(f"mqtt://elev-1:dev-pw@127.0.0.1:{port}", "plain", clean_start=True,
                                 backoff_max=0.5).start(timeout=2)
        conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
        assert f"listener {plain_port} " not in conf
    finally:
        broker.stop()
