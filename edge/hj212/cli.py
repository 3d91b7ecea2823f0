"""``vigil edge hj212`` (also ``python -m edge.hj212``): configuration, wiring and the CLI entry point.

Wire into ``vigil``: ``add_arguments(subparser)`` then ``run(config_from_args(args))``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
import yaml

from broker.contracts import (
    DEVICE_ID_PATTERN,
    Channel,
    Kind,
    Rejected,
    RejectReason,
    decode_command,
    device_topic,
    parse_device_topic,
)
from broker.credentials import add_mqtt_arguments
from edge.errors import EdgeError
from edge.hj212.codec import MAX_DATA_LENGTH
from edge.hj212.downlink import AuditLog, DownlinkPolicy, DownlinkTracker
from edge.hj212.gateway import (
    STAGE,
    GuardPolicy,
    Hj212Counters,
    Hj212Gateway,
    ServerLimits,
    SessionPolicy,
    dead_letter_publisher,
)
from edge.runtime.cli import parse_nats_servers, run_gateway, setup_logging
from edge.runtime.uplink import open_uplink, stop_on_signals

if TYPE_CHECKING:
    from broker.mqtt import Handler, Message
    from broker.registry import DeviceRegistry

log = logging.getLogger("edge.hj212")


class Hj212GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of ``vigil edge hj212`` (YAML file keys and CLI options have the same names)."""

    listen: str = "0.0.0.0:6000"
    mqtt: str = "mqtt://127.0.0.1:1883"
    nats: list[str] | None = None
    """NATS URLs of a JetStream cluster: publish there instead of MQTT (needs ``data_dir``; docs/cluster.md)."""
    client_id: str = "vigil-edge-hj212"
    registry: str | None = None
    """Device registry YAML (``broker.registry``); loggers are checked by MN and PW against it."""
    accept_unknown_devices: bool = False
    max_data_length: int = MAX_DATA_LENGTH
    split_timeout_s: float = 120.0
    idle_timeout_s: float = 600.0
    max_connections: int = 20000
    timezone: str = "Asia/Shanghai"
    dead_letter: bool = True
    publish_status: bool = True
    stats_interval_s: float = 60.0
    data_dir: str | None = None
    """Outbox folder: when set, publish through ``edge.runtime.EdgeLink`` (store-and-forward on disk)."""
    gateway_name: str = "hj212"
    """Gateway identity with ``data_dir`` (client id ``vigil-gw-{name}``, status ``vigil/v1/gateways/{name}/status``)."""
    # Abuse guards (docs/hj212.md, "Security").
    max_auth_failures: int = 3
    auth_delay_base_s: float = 0.5
    auth_delay_max_s: float = 30.0
    max_connections_per_address: int = 1024
    max_preauth_per_address: int = 16
    preauth_timeout_s: float = 60.0
    frame_timeout_s: float = 60.0
    dead_letter_interval_s: float = 10.0
    # Downlink (docs/hj212.md, "Downlink").
    downlink: bool = True
    time_calibration: bool = True
    gap_detection: bool = True
    command_queue_size: int = 16
    reply_timeout_s: float = 10.0
    retries: int = 3
    exec_timeout_s: float = 300.0
    max_history_hours: int = 24
    gap_grace_s: float = 900.0
    audit_file: str | None = None
    """Command audit (JSON lines); default ``{data_dir}/hj212-commands.jsonl`` when ``data_dir`` is set."""

    def guard_policy(self) -> GuardPolicy:
        """The abuse limits of this configuration."""
        return GuardPolicy(auth_delay_base_s=self.auth_delay_base_s, auth_delay_max_s=self.auth_delay_max_s,
                           max_connections_per_address=self.max_connections_per_address,
                           max_preauth_per_address=self.max_preauth_per_address,
                           preauth_timeout_s=self.preauth_timeout_s, frame_timeout_s=self.frame_timeout_s,
                           dead_letter_interval_s=self.dead_letter_interval_s)

    def downlink_policy(self) -> DownlinkPolicy:
        """The command queue settings of this configuration."""
        return DownlinkPolicy(queue_size=self.command_queue_size, reply_timeout_s=self.reply_timeout_s,
                              retries=self.retries, exec_timeout_s=self.exec_timeout_s,
                              time_calibration=self.time_calibration, gap_detection=self.gap_detection,
                              max_history_hours=self.max_history_hours, gap_grace_s=self.gap_grace_s)

    def audit_path(self) -> Path | None:
        """Where command audit records go, if anywhere."""
        if self.audit_file is not None:
            return Path(self.audit_file)
        return Path(self.data_dir) / "hj212-commands.jsonl" if self.data_dir is not None else None

    def listen_address(self) -> tuple[str, int]:
        """``listen`` split into host and port.

        Raises:
            ValueError: not ``HOST:PORT``.
        """
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen: {self.listen!r} is not HOST:PORT")
        return host.strip("[]") or "0.0.0.0", int(port)


class ConfigError(EdgeError, ValueError):
    """Invalid gateway configuration; the message names the file and the key."""


def load_config(path: str | None, overrides: dict[str, Any]) -> Hj212GatewayConfig:
    """Read the YAML file (if any), apply CLI overrides, validate.

    Raises:
        ConfigError: naming the file and the offending key.
    """
    raw: dict[str, Any] = {}
    source = path or "<command line>"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of settings")
        raw.update(loaded.get("hj212", loaded) if isinstance(loaded.get("hj212"), dict) else loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = msgspec.convert(raw, Hj212GatewayConfig)
        config.listen_address()
        ZoneInfo(config.timezone)
    except (msgspec.ValidationError, ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not 0 < config.max_data_length <= 9999:
        raise ConfigError(f"{source}: max_data_length: must be 1..9999")
    if not re.match(DEVICE_ID_PATTERN, config.gateway_name):
        raise ConfigError(f"{source}: gateway_name: must match {DEVICE_ID_PATTERN}")
    for key in ("max_auth_failures", "max_connections_per_address", "max_preauth_per_address",
                "command_queue_size", "max_history_hours"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{source}: {key}: must be at least 1")
    for key in ("auth_delay_max_s", "preauth_timeout_s", "frame_timeout_s", "dead_letter_interval_s",
                "reply_timeout_s", "exec_timeout_s"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{source}: {key}: must be positive")
    if config.auth_delay_base_s < 0 or config.retries < 0:
        raise ConfigError(f"{source}: auth_delay_base_s and retries must not be negative")
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vigil edge hj212`` options to a parser."""
    parser.add_argument("--config", help="YAML file with the settings below (keys as in docs/hj212.md)")
    parser.add_argument("--listen", help="HOST:PORT to accept data loggers on (default 0.0.0.0:6000)")
    add_mqtt_arguments(parser, help="broker URL")
    parser.add_argument("--nats", type=parse_nats_servers, metavar="URL[,URL...]",
                        help="publish into a NATS JetStream cluster instead of MQTT (needs --data-dir; docs/cluster.md)")
    parser.add_argument("--client-id", dest="client_id")
    parser.add_argument("--registry", help="device registry YAML used to check MN and PW")
    parser.add_argument("--accept-unknown-devices", dest="accept_unknown_devices", action="store_const", const=True,
                        help="accept any MN and PW (commissioning, tests)")
    parser.add_argument("--max-data-length", dest="max_data_length", type=int,
                        help="largest data segment accepted (standard: 1024)")
    parser.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, help="seconds before a silent "
                        "connection is closed")
    parser.add_argument("--max-connections", dest="max_connections", type=int)
    parser.add_argument("--timezone", help="loggers' local time zone (default Asia/Shanghai)")
    parser.add_argument("--no-dead-letter", dest="dead_letter", action="store_const", const=False,
                        help="do not publish refused frames on vigil/v1/deadletter/edge-hj212")
    parser.add_argument("--no-status", dest="publish_status", action="store_const", const=False,
                        help="do not publish per-logger online/offline status")
    parser.add_argument("--data-dir", dest="data_dir", help="outbox folder: queue telemetry on disk while the "
                        "broker is unreachable and deliver it in order (default: publish directly)")
    parser.add_argument("--gateway-name", dest="gateway_name",
                        help="gateway identity with --data-dir (default hj212)")
    parser.add_argument("--max-connections-per-address", dest="max_connections_per_address", type=int,
                        help="connections from one source address (default 1024)")
    parser.add_argument("--max-preauth-per-address", dest="max_preauth_per_address", type=int,
                        help="not yet authenticated connections from one source address (default 16)")
    parser.add_argument("--preauth-timeout", dest="preauth_timeout_s", type=float,
                        help="seconds a new connection has to send an authenticated packet (default 60)")
    parser.add_argument("--no-downlink", dest="downlink", action="store_const", const=False,
                        help="send no commands to loggers (no 1012 time calibration, no 2061 history requests)")
    parser.add_argument("--audit-file", dest="audit_file",
                        help="command audit, JSON lines (default DATA_DIR/hj212-commands.jsonl)")


def config_from_args(args: argparse.Namespace) -> Hj212GatewayConfig:
    """Build the config from parsed ``add_arguments`` options. Raises ``ConfigError``."""
    names = [f for f in Hj212GatewayConfig.__struct_fields__ if hasattr(args, f)]
    return load_config(getattr(args, "config", None), {name: getattr(args, name) for name in names})


class RegistryDevicePasswords:
    """``DevicePasswords`` over ``broker.registry.DeviceRegistry`` (emission devices only).

    The logger's PW is the device's ``hj212_password`` (or ``hj212_password_env``), never its MQTT
    ``password``: HJ 212 sends PW in clear, so it must not open the broker too.
    """

    def __init__(self, registry: DeviceRegistry) -> None:
        self._registry = registry
        self._warned: set[str] = set()

    def lookup(self, mn: str) -> str | None:
        """The HJ 212 password of an emission device; None (refused) when it has none."""
        device = self._registry.device(mn)
        if device is None or device.kind != Kind.EMISSION:
            return None
        password = self._registry.hj212_password_of(mn)
        if password is None and mn not in self._warned:
            self._warned.add(mn)
            log.warning("hj212: device %s has no hj212_password (or its hj212_password_env is not set); "
                        "refusing it", mn)
        return password

    def site(self, mn: str) -> str | None:
        """The device's site id."""
        device = self._registry.device(mn)
        return device.site if device is not None else None


COMMAND_FILTER = device_topic(Kind.EMISSION, "+", Channel.COMMAND)


def command_handler(gateway: Hj212Gateway) -> Handler:
    """Hands ``DeviceCommand`` messages on ``vigil/v1/emission/{MN}/command`` to the gateway's downlink.

    The broker's ACL lets only platform accounts publish there. Retained commands are ignored
    (they would run again on every reconnect); malformed ones are logged and counted.
    """
    def handle(batch: list[Message]) -> None:
        for message in batch:
            try:
                topic = parse_device_topic(message.topic)
                if message.retain or topic.kind is not Kind.EMISSION or topic.channel is not Channel.COMMAND:
                    raise Rejected(RejectReason.BAD_TOPIC, "retained or not an emission command topic")
                gateway.request(topic.device_id, decode_command(message.payload))
            except Rejected as exc:
                gateway.counters.rejected[f"command_{exc.reason.value}"] += 1
                log.warning("hj212: platform command on %s refused: %s", message.topic[:120], exc)

    return handle


async def serve(config: Hj212GatewayConfig, *, stop: asyncio.Event | None = None,
                bound: Callable[[str, int], None] | None = None) -> Hj212Counters:
    """Run the gateway with its MQTT client until ``stop`` is set (or cancelled); returns the counters."""
    passwords: RegistryDevicePasswords | None = None
    if config.registry is not None:
        from broker.registry import DeviceRegistry

        passwords = RegistryDevicePasswords(DeviceRegistry.load(config.registry))
    tz = ZoneInfo(config.timezone)
    policy = SessionPolicy(config.accept_unknown_devices, config.max_data_length, config.split_timeout_s, tz,
                           max_auth_failures=config.max_auth_failures)
    limits = ServerLimits(config.idle_timeout_s, config.max_connections, publish_status=config.publish_status)
    downlink = DownlinkTracker(config.downlink_policy(), tz) if config.downlink else None
    audit_path = config.audit_path()
    audit = AuditLog(audit_path) if downlink is not None and audit_path is not None else None
    async with open_uplink(config.mqtt, client_id=config.client_id, data_dir=config.data_dir,
                           gateway_name=config.gateway_name, agent=STAGE, nats_servers=config.nats) as uplink:
        publish = uplink.publish
        gateway = Hj212Gateway(publish, policy=policy, limits=limits, passwords=passwords,
                               sites=passwords.site if passwords is not None else None,
                               dead_letter=dead_letter_publisher(publish) if config.dead_letter else None,
                               guard=config.guard_policy(), downlink=downlink, audit=audit)
        if downlink is not None:
            uplink.subscribe(COMMAND_FILTER, command_handler(gateway))
        host, port = await gateway.start(*config.listen_address())
        if bound is not None:
            bound(host, port)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_log_stats(gateway, config.stats_interval_s), name="hj212-stats")
                tasks.create_task(gateway.serve_forever(), name="hj212-server")
                if stop is not None:
                    await stop.wait()
                    raise _Stop
        except* _Stop:
            pass
        finally:
            await gateway.close()
            log.info("hj212 gateway stopped: %s", gateway.stats())
    return gateway.counters


class _Stop(EdgeError):
    """Ends the gateway's task group."""


async def _log_stats(gateway: Hj212Gateway, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        log.info("hj212 counters: %s", gateway.stats())


def run(config: Hj212GatewayConfig) -> int:
    """Entry point of ``vigil edge hj212``: serve until SIGINT/SIGTERM; exit status 0, 1 when it cannot start."""
    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve(config, stop=stop)

    return run_gateway("hj212", main())


def main(argv: list[str] | None = None) -> int:
    """``vigil edge hj212`` / ``python -m edge.hj212``: parse options and run."""
    parser = argparse.ArgumentParser(prog="vigil edge hj212", description="HJ 212 data-logger gateway")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
