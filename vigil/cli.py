"""The ``vigil`` command line: one program, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.mosquitto import BrokerLayout
    from broker.registry import DeviceRegistry
    from vigil.config import VigilConfig


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from vigil.demo import DemoOptions, run_demo

    _setup_logging(args.log_level)
    opts = DemoOptions(duration=args.duration, state_dir=Path(args.state_dir), elevators=args.elevators,
                       console_port=args.console_port, broker_port=args.broker_port)
    return asyncio.run(run_demo(opts))


def _cmd_run(args: argparse.Namespace) -> int:
    from broker.registry import DeviceRegistry, RegistryError
    from vigil.config import ConfigError, load_config
    from vigil.runtime import (
        build_platform,
        freeze_startup_heap,
        install_signal_handlers,
        run_platform,
        shorten_gil_switch_interval,
    )

    try:
        cfg = load_config(args.config)
        registry = DeviceRegistry.load(cfg.registry) if cfg.registry else DeviceRegistry({}, {}, {})
        _check_emission_standards(cfg, registry)
    except (ConfigError, RegistryError) as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        shorten_gil_switch_interval()
        if cfg.cluster is not None:
            # One instance of a NATS JetStream cluster: partitions by lease (vigil.cluster, docs/cluster.md).
            from vigil.cluster import run_cluster_instance

            logging.getLogger("vigil").info("running %s as cluster instance %r", ", ".join(cfg.services), cfg.node)
            await run_cluster_instance(cfg, registry, stop)
            return 0
        platform = build_platform(cfg, registry)
        freeze_startup_heap()
        logging.getLogger("vigil").info("running %s as node %r", ", ".join(cfg.services), cfg.node)
        await run_platform(platform, stop)
        return 0

    return asyncio.run(main())


def _check_emission_standards(cfg: VigilConfig, registry: DeviceRegistry) -> None:
    """With the emission pack loaded, every registered stack must declare a usable standard (docs/emission.md)."""
    from broker.registry import RegistryError
    from rules.emission_limits import check_registry

    if "rules" in cfg.services and "emission" in cfg.rules.packs:
        problems = check_registry(registry)
        if problems:
            raise RegistryError("emission devices without a usable standard:\n  " + "\n  ".join(problems))


def _cmd_config_check(args: argparse.Namespace) -> int:
    from broker.registry import DeviceRegistry, RegistryError
    from vigil.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
        if cfg.registry:
            _check_emission_standards(cfg, DeviceRegistry.load(cfg.registry))
    except (ConfigError, RegistryError) as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok ({', '.join(cfg.services)})")
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    import json

    import msgspec

    from vigil.config import VigilConfig

    print(json.dumps(msgspec.json.schema(VigilConfig), indent=2, ensure_ascii=False))
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import time

    from broker.mosquitto import MosquittoProcess, write_broker_files
    from broker.registry import DeviceRegistry, RegistryError
    from vigil.config import ConfigError, load_config

    _setup_logging("info")
    try:
        cfg = load_config(args.config)
        if not cfg.registry:
            raise ConfigError(f"{args.config}: `registry` is required to run the broker")
        registry = DeviceRegistry.load(cfg.registry)
    except (ConfigError, RegistryError) as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        layout = broker_layout(cfg, Path(args.config))
    except ConfigError as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    b = cfg.broker
    tls = layout.tls
    if os.geteuid() == 0:
        print("vigil: warning: running Mosquitto as root; run `vigil broker` as an unprivileged user "
              "(the container image does)", file=sys.stderr)
    if args.write_only:
        conf = write_broker_files(layout, registry)
        print(f"wrote {conf}, {conf.parent / 'passwd-*'}, {conf.parent / 'acl'}")
        return 0
    proc = MosquittoProcess(layout, registry)
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(*_: object) -> None:
        try:
            proc.registry = DeviceRegistry.load(cfg.registry or "")
            proc.reload()
            print("registry reloaded")
        except RegistryError as exc:
            print(f"vigil: registry not reloaded: {exc}", file=sys.stderr)

    # Handlers first: a SIGTERM during start-up must still stop Mosquitto, never orphan it.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        proc.start()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    field = f"mqtts://{b.listen_host}:{b.tls_port}" if tls is not None else f"mqtt://{b.listen_host}:{b.port}"
    print(f"mosquitto listening: devices and gateways {field}, observers port {b.observer_port}, platform "
          f"{b.platform_host or b.listen_host}:{b.platform_port} ({len(registry.devices)} devices, "
          f"{len(registry.services)} service accounts); SIGHUP reloads the registry", flush=True)
    try:
        while not stopping and proc.proc is not None and proc.proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.stop()
    return 0


def broker_layout(cfg: VigilConfig, config_path: Path) -> BrokerLayout:
    """Mosquitto's listeners and files as the ``broker:`` section of a configuration describes them.

    Raises:
        ConfigError: TLS is asked for without its certificate and key.
    """
    from broker.mosquitto import BrokerLayout, TlsListener
    from vigil.config import ConfigError

    b = cfg.broker
    tls = None
    if b.tls_port is not None:
        if not (b.tls_certfile and b.tls_keyfile):
            raise ConfigError("broker.tls_port needs tls_certfile and tls_keyfile")
        tls = TlsListener(b.tls_port, b.tls_certfile, b.tls_keyfile, b.tls_cafile, b.listen_host)
    data_dir = Path(b.data_dir)
    if not data_dir.is_absolute():
        data_dir = config_path.parent / data_dir
    return BrokerLayout(data_dir=data_dir.resolve(), port=b.port, host=b.listen_host, tls=tls,
                        observer_port=b.observer_port, platform_port=b.platform_port, platform_host=b.platform_host,
                        password_iterations=b.password_iterations,
                        device_password_iterations=b.device_password_iterations)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vigil", description="Vigil: 24/7 off-site supervision platform")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole system with simulated devices")
    demo.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS",
                      help="stop cleanly after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--state-dir", default="var/demo", help="where the demo keeps its data (default var/demo)")
    demo.add_argument("--elevators", type=int, default=12, help="number of simulated elevators")
    demo.add_argument("--console-port", type=int, default=8080)
    demo.add_argument("--broker-port", type=int, default=None, help="default: a free port")
    demo.add_argument("--log-level", default="warning")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run the services a deployment configures")
    run.add_argument("--config", required=True, metavar="FILE")
    run.set_defaults(func=_cmd_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("config", metavar="FILE")
    check.set_defaults(func=_cmd_config_check)
    schema = cfg_sub.add_parser("schema", help="print the JSON Schema of the configuration file")
    schema.set_defaults(func=_cmd_config_schema)

    broker = sub.add_parser("broker", help="run Mosquitto configured from the device registry")
    broker.add_argument("--config", required=True, metavar="FILE")
    broker.add_argument("--write-only", action="store_true", help="write conf, passwd and acl, then exit")
    broker.set_defaults(func=_cmd_broker)

    status = sub.add_parser("status", help="health of a running node (its /health endpoint, else stats.json)")
    status.add_argument("--config", metavar="FILE", help="the node's configuration (finds its health endpoint)")
    status.add_argument("--url", help="health endpoint base URL, e.g. http://127.0.0.1:9464")
    status.add_argument("--json", action="store_true", help="print the whole report as JSON")
    status.set_defaults(func=lambda a: __import__("vigil.health", fromlist=["status_main"]).status_main(
        a.config, a.url, a.json))

    dog = sub.add_parser("watchdog", help="receive nodes' dead-man heartbeats; announce silence and failure")
    dog.add_argument("--listen", default="127.0.0.1:9099", metavar="HOST:PORT")
    dog.add_argument("--expect", action="append", default=[], metavar="NODE",
                     help="a node that must ping (repeatable); others are watched from their first ping")
    dog.add_argument("--timeout", type=float, default=90.0, help="seconds of silence before announcing")
    dog.add_argument("--notify", action="append", default=[], metavar="APPRISE_URL",
                     help="where to announce (repeatable); URLs with tokens: use --notify-env")
    dog.add_argument("--notify-env", action="append", default=[], metavar="VAR",
                     help="an environment variable holding an Apprise URL (keeps tokens out of the process list)")
    dog.set_defaults(func=lambda a: __import__("vigil.watchdog", fromlist=["watchdog_main"]).watchdog_main(
        a.listen, a.expect, a.timeout, a.notify, a.notify_env))

    _add_optional_groups(sub)
    return parser


def _add_optional_groups(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands that live with their stage (rules tools, edge agents)."""
    from vigil import plugins

    plugins.add_rules_commands(sub)
    plugins.add_edge_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vigil`` program."""
    from vigil.plugins import run_delegated

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        delegated = run_delegated(argv)
    except KeyboardInterrupt:
        return 130
    if delegated is not None:
        return delegated
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
