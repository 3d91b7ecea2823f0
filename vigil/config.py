"""The deployment configuration: one YAML file, validated at start.

Errors name the file and the key (``vigil.yaml: Expected `int`, got `str` - at `$.storage.batch_size```);
unknown keys are errors. Any string may reference environment variables as ``${NAME}`` or
``${NAME:-default}``, so secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from alerting.config import AlertingConfig, AlertingConfigError, check_tokens
from console.config import ConsoleConfig
from rules.config import RulesConfig
from storage.config import StorageConfig
from vigil.cluster_config import ClusterSettings, check_cluster
from vigil.errors import ProgramError
from vigil.health_config import HealthConfig

ServiceName = Literal["rules", "alerting", "storage", "console"]


class ConfigError(ProgramError, ValueError):
    """The configuration is invalid; the message names the file and the key."""


class MqttSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the platform's services reach the broker."""

    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://user:password@host:port`` (``mqtts://`` for TLS); use ``${ENV}`` for the password."""
    client_id: str | None = None
    """Persistent-session client id; defaults to ``vigil-{node}``. Keep it stable across restarts."""
    ca_file: str | None = None
    max_pending: int = 2000
    alarm_lane: bool = True
    """Receive device events and status on a second session (``{client_id}-alarm``), so an alarm never
    waits behind queued telemetry (docs/architecture.md, Scaling)."""
    partition: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,3}/[0-9]{1,3}$")] | None = None
    """``"i/n"``: this process handles only the devices whose id hashes to partition i of n (n processes
    split the fleet; run alerting in one of them). Each partition needs its own ``client_id``."""


class BrokerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Mosquitto run by ``vigil broker`` from the device registry."""

    listen_host: str = "127.0.0.1"
    port: int = 1883
    """Devices' and gateways' plaintext listener; not opened when ``tls_port`` is set."""
    data_dir: str = "var/mosquitto"
    tls_port: int | None = None
    """Devices' and gateways' TLS listener; when set, the field and observer listeners are TLS only."""
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_cafile: str | None = None
    observer_port: int = 1885
    """Read-only (observer, operator) accounts: QoS 0, client id = user name."""
    platform_port: int = 1884
    """Platform accounts (stable client ids of persistent sessions); keep it off public networks."""
    platform_host: str | None = None
    """Address of the platform listener (default: ``listen_host``)."""
    password_iterations: int = 100_000
    """PBKDF2 iterations of the password hashes Vigil writes (~0.09 s of broker CPU per login)."""
    device_password_iterations: int | None = 10_000
    """For device accounts (``null``: ``password_iterations``). Device secrets are machine-generated, so
    iterations add little there, while a broker restart makes every device log in again: 10,000
    keeps 10,000 reconnecting devices to about 1.6 min of broker CPU instead of 14 (docs/security.md)."""


class VigilConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Top level of ``vigil.yaml``."""

    node: str = "platform"
    """This process's name; part of its MQTT client id and its state folder."""
    services: list[ServiceName] = msgspec.field(default_factory=lambda: ["rules", "alerting", "storage"])
    state_dir: str = "var/state"
    registry: str | None = None
    """Path of the device registry YAML (relative paths are relative to the config file)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    mqtt: MqttSettings = MqttSettings()
    broker: BrokerSettings = BrokerSettings()
    rules: RulesConfig = RulesConfig()
    alerting: AlertingConfig = AlertingConfig()
    storage: StorageConfig = StorageConfig()
    console: ConsoleConfig = ConsoleConfig()
    health: HealthConfig = HealthConfig()
    """Self-monitoring: checks, own alerts, /metrics and /health, dead-man heartbeat (vigil.health)."""
    cluster: ClusterSettings | None = None
    """Run as one of N instances on a NATS JetStream cluster instead of MQTT (docs/cluster.md)."""


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, path: str = "$", env: dict[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree.

    Raises:
        ConfigError: a referenced variable is unset and has no default (names the key).
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (needed at `{path}`)")
        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, f"{path}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


def parse_config(raw: Any, source: str = "<config>", base_dir: Path | None = None) -> VigilConfig:
    """Validate parsed YAML as a Vigil configuration.

    Raises:
        ConfigError: naming ``source`` and the offending key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        raw = substitute_env(raw)
        cfg = msgspec.convert(raw, VigilConfig)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        check_tokens(cfg.alerting, "alerting")
    except AlertingConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_console_exposure(cfg, source)
    if cfg.mqtt.partition is not None:
        index, count = (int(x) for x in cfg.mqtt.partition.split("/"))
        if not 0 <= index < count:
            raise ConfigError(f"{source}: mqtt.partition {cfg.mqtt.partition!r}: need i/n with 0 <= i < n")
    if cfg.cluster is not None:
        problems = check_cluster(cfg.cluster, list(cfg.services))
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def _check_console_exposure(cfg: VigilConfig, source: str) -> None:
    """A console reachable beyond this machine must be served over HTTPS with ``Secure`` cookies.

    Raises:
        ConfigError: the console listens on a non-loopback address without ``secure_cookies``.
    """
    if "console" not in cfg.services or cfg.console.secure_cookies:
        return
    host = cfg.console.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"{source}: console.listen {cfg.console.listen!r} is reachable from the network: serve the "
                          "console behind HTTPS and set console.secure_cookies: true (session cookies must not "
                          "travel in clear)")


def load_config(path: str | Path) -> VigilConfig:
    """Read and validate a configuration file.

    Raises:
        ConfigError: unreadable file, bad YAML, or an invalid key (named in the message).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path), path.parent)


def _resolve_paths(cfg: VigilConfig, base: Path) -> VigilConfig:
    def rel(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    return msgspec.structs.replace(cfg, registry=rel(cfg.registry), state_dir=rel(cfg.state_dir) or cfg.state_dir)
