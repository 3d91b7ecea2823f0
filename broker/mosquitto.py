"""Mosquitto configured from the device registry, and a supervised Mosquitto process.

Generates the password files (Mosquitto's own ``$7$`` PBKDF2-SHA512 format), the ACL (a
device may publish only under its own id and read only its own command topic; services get
what their role needs) and ``mosquitto.conf`` with persistence.

A secured broker has one listener per kind of account, because Mosquitto 2.0 ties a client id
to an account only per listener (``use_username_as_clientid``) and limits QoS only per listener:

- field: devices and gateways; the client id is forced to the user name (no session takeover),
  QoS at most 1; TLS only when TLS is configured (no plaintext twin).
- observer: read-only control-room accounts; client id forced to the user name and QoS 0, so
  an offline observer session queues nothing.
- platform: the platform's own accounts, with the stable client ids of their persistent
  sessions; meant for the internal network only (never published).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from broker.contracts import TOPIC_ROOT, Channel, Kind
from broker.registry import Device, DeviceRegistry, RegistryError, ServiceAccount, resolve_clear_password

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 100_000
"""Iterations of the ``$7$`` hashes Vigil writes. mosquitto_passwd 2.0 writes only 101, which
makes a leaked password file cheap to crack; Mosquitto reads the count from each hash, so a
strong count works unchanged. The price is broker CPU per login (~0.1 s on one core at
100,000), paid serially by Mosquitto's single thread when many clients reconnect at once;
``BrokerLayout.password_iterations`` trades that off (see docs/security.md)."""

_HASH_CACHE: dict[tuple[str, int], str] = {}


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash a password in Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt).

    Without a given salt, the hash of a password is computed once per process and reused (a
    reload or restart of the broker would otherwise spend ~0.1 s per account again).
    """
    if salt is None:
        cached = _HASH_CACHE.get((password, iterations))
        if cached is not None:
            return cached
        encoded = hash_password(password, salt=secrets.token_bytes(12), iterations=iterations)
        _HASH_CACHE[(password, iterations)] = encoded
        return encoded
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against a ``$7$`` hash."""
    try:
        _, alg, iters, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if alg != "7":
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iters))
    return secrets.compare_digest(base64.b64encode(got).decode(), digest)


def _hash_of(acct: Device | ServiceAccount, name: str, iterations: int) -> str | None:
    if acct.password_hash is not None:
        return acct.password_hash
    clear = resolve_clear_password(acct)
    if clear is None:
        if acct.password_env is not None:
            raise RegistryError(f"account {name!r}: environment variable {acct.password_env} is not set")
        return None
    return hash_password(clear, iterations=iterations)


Listener = Literal["field", "observer", "platform"]
LISTENERS: tuple[Listener, ...] = ("field", "observer", "platform")


def listener_of(acct: Device | ServiceAccount) -> Listener:
    """Which listener an account may log in on (devices and gateways: field)."""
    if isinstance(acct, Device) or acct.role == "gateway":
        return "field"
    return "platform" if acct.role == "platform" else "observer"


def password_file(registry: DeviceRegistry, listener: Listener | None = None, *,
                  iterations: int = PBKDF2_ITERATIONS, device_iterations: int | None = None) -> str:
    """The Mosquitto password file of one listener's accounts (all accounts when None).

    ``device_iterations`` (default ``iterations``) applies to device accounts: a large fleet of
    machine-generated secrets may trade hash strength for a faster reconnect after a broker restart.
    """
    lines = []
    accounts: list[tuple[str, Device | ServiceAccount]] = [
        *((svc.name, svc) for svc in registry.services.values()),
        *((dev.id, dev) for dev in registry.devices.values()),
    ]
    for name, acct in accounts:
        if listener is not None and listener_of(acct) != listener:
            continue
        rounds = device_iterations if isinstance(acct, Device) and device_iterations else iterations
        hashed = _hash_of(acct, name, rounds)
        if hashed:
            lines.append(f"{name}:{hashed}")
    return "\n".join(lines) + "\n"


_DEVICE_WRITE = (Channel.TELEMETRY, Channel.EVENT, Channel.STATUS)


def acl_file(registry: DeviceRegistry) -> str:
    """The Mosquitto ACL: least privilege for devices, role-based for services."""
    out = ["# Generated by Vigil from the device registry; do not edit by hand.", ""]
    for svc in registry.services.values():
        out.append(f"user {svc.name}")
        if svc.role == "platform":
            out.append(f"topic readwrite {TOPIC_ROOT}/#")
        elif svc.role == "gateway":
            kinds = svc.kinds or list(Kind)
            for kind in kinds:
                for ch in _DEVICE_WRITE:
                    out.append(f"topic write {TOPIC_ROOT}/{kind}/+/{ch}")
                out.append(f"topic read {TOPIC_ROOT}/{kind}/+/{Channel.COMMAND}")
            out.append(f"topic write {TOPIC_ROOT}/deadletter/#")
            out.append(f"topic write {TOPIC_ROOT}/gateways/{svc.name}/#")
        elif svc.role in ("observer", "operator"):
            out.append(f"topic read {TOPIC_ROOT}/#")
        out.append("")
    for dev in registry.devices.values():
        out.append(f"user {dev.id}")
        for ch in _DEVICE_WRITE:
            out.append(f"topic write {TOPIC_ROOT}/{dev.kind}/{dev.id}/{ch}")
        out.append(f"topic read {TOPIC_ROOT}/{dev.kind}/{dev.id}/{Channel.COMMAND}")
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class TlsListener:
    """An extra TLS listener."""

    port: int
    certfile: str
    keyfile: str
    cafile: str | None = None
    host: str = "0.0.0.0"


@dataclass(frozen=True)
class BrokerLayout:
    """Where Mosquitto keeps its files and what it listens on."""

    data_dir: Path
    port: int
    """The field listener's plaintext port (unused when ``tls`` is set: then only TLS is offered)."""
    host: str = "127.0.0.1"
    tls: TlsListener | None = None
    observer_port: int | None = None
    """Read-only accounts' listener (TLS when ``tls`` is set); a free port when None."""
    platform_port: int | None = None
    """The platform accounts' listener (internal network only); a free port when None."""
    platform_host: str | None = None
    """Address of the platform listener (default: ``host``)."""
    max_queued_messages: int = 1_000_000
    max_queued_bytes: int = 256 * 1024 * 1024
    """Per offline session: the platform's queue while it restarts (1,000,000 messages of
    ~250 bytes fit); also the most any other session can hold (see docs/security.md)."""
    session_expiry: str = "7d"
    """Offline persistent sessions are dropped after this (the platform's own session expiry)."""
    max_inflight_messages: int = 1000
    message_size_limit: int = 1024 * 1024
    password_iterations: int = PBKDF2_ITERATIONS
    device_password_iterations: int | None = 10_000
    """For device accounts (None: ``password_iterations``); see ``vigil.config.BrokerSettings``."""
    extra: list[str] = field(default_factory=list)

    def with_ports(self) -> BrokerLayout:
        """This layout with free ports chosen for the observer and platform listeners left unset."""
        return dataclasses.replace(self, observer_port=self.observer_port or free_port(),
                                   platform_port=self.platform_port or free_port())


def _listener_lines(layout: BrokerLayout, listener: Listener) -> list[str]:
    d, t = layout.data_dir, layout.tls
    if listener == "platform":
        lines = [f"listener {layout.platform_port} {layout.platform_host or layout.host}"]
    elif t is not None:
        port = t.port if listener == "field" else layout.observer_port
        lines = [f"listener {port} {t.host}", f"certfile {t.certfile}", f"keyfile {t.keyfile}"]
        if t.cafile:
            lines.append(f"cafile {t.cafile}")
    else:
        lines = [f"listener {layout.port if listener == 'field' else layout.observer_port} {layout.host}"]
    lines += [f"password_file {d}/passwd-{listener}", f"acl_file {d}/acl", "allow_anonymous false"]
    if listener != "platform":
        # The client id is the account: nobody can claim another account's id (and session).
        lines.append("use_username_as_clientid true")
        # QoS 0 for read-only accounts: an offline observer session queues nothing.
        lines.append(f"max_qos {1 if listener == 'field' else 0}")
    return lines


def mosquitto_conf(layout: BrokerLayout, *, secured: bool) -> str:
    """``mosquitto.conf`` text for the layout; ``secured`` turns on passwords, the ACL and per-role listeners."""
    d = layout.data_dir
    if secured and (layout.observer_port is None or layout.platform_port is None):
        raise ValueError("a secured broker needs observer_port and platform_port (BrokerLayout.with_ports)")
    lines = [
        "# Generated by Vigil.",
        # Run as whoever starts it (the container runs it as the unprivileged "vigil" user);
        # started as root, Mosquitto would switch to "mosquitto", who cannot read a private folder.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        f"per_listener_settings {'true' if secured else 'false'}",
        "persistence true",
        f"persistence_location {d}/",
        "autosave_interval 30",
        f"log_dest file {d}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        # Offline persistent sessions keep this many messages each: large, so a restarting
        # service under load loses nothing.
        f"max_queued_messages {layout.max_queued_messages}",
        f"max_queued_bytes {layout.max_queued_bytes}",
        f"max_inflight_messages {layout.max_inflight_messages}",
        f"max_packet_size {layout.message_size_limit}",
        # Many small packets each way (messages out, PUBACKs back): Nagle's algorithm would hold
        # them back waiting for ACKs.
        "set_tcp_nodelay true",
        f"persistent_client_expiration {layout.session_expiry}",
    ]
    if secured:
        for listener in LISTENERS:
            lines += ["", f"# {listener} accounts", *_listener_lines(layout, listener)]
    else:
        # Anonymous development broker (tests, benchmarks): one listener, plus TLS if asked.
        lines += [f"listener {layout.port} {layout.host}", "allow_anonymous true"]
        if layout.tls is not None:
            t = layout.tls
            lines += [f"listener {t.port} {t.host}", f"certfile {t.certfile}", f"keyfile {t.keyfile}"]
            if t.cafile:
                lines.append(f"cafile {t.cafile}")
    lines += layout.extra
    return "\n".join(lines) + "\n"


def write_broker_files(layout: BrokerLayout, registry: DeviceRegistry | None) -> Path:
    """Write conf, password file and ACL into ``layout.data_dir``; return the conf path."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    if registry is not None:
        for listener in LISTENERS:
            pw = layout.data_dir / f"passwd-{listener}"
            text = password_file(registry, listener, iterations=layout.password_iterations,
                                 device_iterations=layout.device_password_iterations)
            pw.write_text(text, encoding="utf-8")
            os.chmod(pw, 0o600)
        (layout.data_dir / "acl").write_text(acl_file(registry), encoding="utf-8")
    conf = layout.data_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(layout, secured=registry is not None), encoding="utf-8")
    return conf


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, or None when it is not installed."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port.

    Raises:
        TimeoutError: nothing listened within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class MosquittoProcess:
    """A Mosquitto server run as a child process with a generated configuration."""

    def __init__(self, layout: BrokerLayout, registry: DeviceRegistry | None = None) -> None:
        self.layout = layout.with_ports() if registry is not None else layout
        self.registry = registry
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """Listening address."""
        return self.layout.host

    @property
    def port(self) -> int:
        """Listening port."""
        return self.layout.port

    @property
    def url(self) -> str:
        """Broker URL without credentials (the field listener when secured)."""
        return f"mqtt://{self.layout.host}:{self.layout.port}"

    @property
    def platform_port(self) -> int:
        """The platform accounts' listener (the only listener of an anonymous broker)."""
        return self.layout.platform_port or self.layout.port

    @property
    def observer_port(self) -> int:
        """The read-only accounts' listener (the only listener of an anonymous broker)."""
        return self.layout.observer_port or self.layout.port

    def account_url(self, user: str, password: str) -> str:
        """``mqtt[s]://user:password@host:port`` of the listener this registry account logs in on."""
        acct = None if self.registry is None else (self.registry.services.get(user) or self.registry.devices.get(user))
        listener = "field" if acct is None else listener_of(acct)
        scheme, host = "mqtt", _connectable(self.layout.host)
        port = {"field": self.layout.port, "observer": self.observer_port, "platform": self.platform_port}[listener]
        if listener == "platform":
            host = _connectable(self.layout.platform_host or self.layout.host)
        elif self.layout.tls is not None and self.registry is not None:
            scheme, host = "mqtts", _connectable(self.layout.tls.host)
            port = self.layout.tls.port if listener == "field" else self.observer_port
        q = urllib.parse.quote
        return f"{scheme}://{q(user, safe='')}:{q(password, safe='')}@{host}:{port}"

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration and start Mosquitto; returns once it accepts connections.

        Raises:
            FileNotFoundError: Mosquitto is not installed.
            RuntimeError: it exited during start-up (its log is in the message).
        """
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        conf = write_broker_files(self.layout, self.registry)
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        ports = [(self.layout.host, self.layout.port)]
        if self.registry is not None:
            ports = [(self.layout.platform_host or self.layout.host, self.platform_port)]
        try:
            for host, port in ports:
                wait_for_port(_connectable(host), port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Mosquitto's log."""
        path = self.layout.data_dir / "mosquitto.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def reload(self) -> None:
        """Regenerate password file and ACL and make Mosquitto re-read them (SIGHUP)."""
        write_broker_files(self.layout, self.registry)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Stop Mosquitto (it saves its persistence database on the way out)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_mosquitto(data_dir: Path, registry: DeviceRegistry | None = None,
                      port: int | None = None) -> Iterator[MosquittoProcess]:
    """Run Mosquitto for the duration of a ``with`` block."""
    proc = MosquittoProcess(BrokerLayout(data_dir=data_dir, port=port or free_port()), registry)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
