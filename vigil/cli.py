"""The ``vigil`` command line: one program, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


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
    from vigil.runtime import build_platform, freeze_startup_heap, install_signal_handlers, run_platform

    try:
        cfg = load_config(args.config)
        registry = DeviceRegistry.load(cfg.registry) if cfg.registry else DeviceRegistry({}, {}, {})
    except (ConfigError, RegistryError) as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        platform = build_platform(cfg, registry)
        freeze_startup_heap()
        logging.getLogger("vigil").info("running %s as node %r", ", ".join(cfg.services), cfg.node)
        await run_platform(platform, stop)
        return 0

    return asyncio.run(main())


def _cmd_config_check(args: argparse.Namespace) -> int:
    from broker.registry import DeviceRegistry, RegistryError
    from vigil.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
        if cfg.registry:
            DeviceRegistry.load(cfg.registry)
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

    from broker.mosquitto import BrokerLayout, MosquittoProcess, TlsListener, write_broker_files
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
    b = cfg.broker
    tls = None
    if b.tls_port is not None:
        if not (b.tls_certfile and b.tls_keyfile):
            print("vigil: configuration error: broker.tls_port needs tls_certfile and tls_keyfile", file=sys.stderr)
            return 2
        tls = TlsListener(b.tls_port, b.tls_certfile, b.tls_keyfile, b.tls_cafile, b.listen_host)
    data_dir = Path(b.data_dir)
    if not data_dir.is_absolute():
        data_dir = Path(args.config).parent / data_dir
    layout = BrokerLayout(data_dir=data_dir.resolve(), port=b.port, host=b.listen_host, tls=tls)
    if args.write_only:
        conf = write_broker_files(layout, registry)
        print(f"wrote {conf}, {conf.parent / 'passwd'}, {conf.parent / 'acl'}")
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
    print(f"mosquitto listening on mqtt://{b.listen_host}:{b.port} ({len(registry.devices)} devices, "
          f"{len(registry.services)} service accounts); SIGHUP reloads the registry", flush=True)
    try:
        while not stopping and proc.proc is not None and proc.proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.stop()
    return 0


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
