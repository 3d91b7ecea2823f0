"""``vigil edge jt808``: the gateway, the registration admin commands and ``send-command``.

    vigil edge jt808 --listen 0.0.0.0:7808 --mqtt URL --registry FILE --data-dir DIR
    vigil edge jt808 reset-registration PHONE --data-dir DIR   |   list-registrations --data-dir DIR
    vigil edge jt808 send-command PHONE jt808.query_params --mqtt URL-of-a-platform-account
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from broker.contracts import (
    Channel,
    DeviceCommand,
    DeviceEvent,
    Kind,
    Rejected,
    decode_device_message,
    device_topic,
    encode,
    utcnow,
)
from broker.credentials import add_mqtt_arguments
from edge.jt808.alarms import ALARMS_FILE, SqliteAlarmStore
from edge.jt808.downlink import AUDIT_EVENT_TYPE, COMMANDS
from edge.jt808.gateway import COMMAND_FILTER, DEFAULT_PORT, Jt808Gateway
from edge.jt808.registrations import (
    REGISTRATIONS_FILE,
    MemoryRegistrations,
    RegistrationStore,
    RegistrationStoreError,
    SqliteRegistrations,
    store_path,
)
from edge.jt808.registry import RegistryTerminals
from edge.jt808.session import STAGE, Jt808Platform, StaticTerminalRegistry, TerminalRegistry
from edge.runtime.cli import (
    add_server_arguments,
    add_uplink_arguments,
    limits_from_args,
    parse_listen,
    run_gateway,
    serve_until_stopped,
    setup_logging,
)
from edge.runtime.server import GatewayLimits
from edge.runtime.uplink import dead_letter_sink, open_uplink, stop_on_signals

if TYPE_CHECKING:
    from broker.mqtt import Message

__all__ = ["ADMIN_COMMANDS", "admin_main", "build_parser", "limits_from_args", "main", "parse_listen",
           "platform_from_args", "run", "send", "send_command_main", "serve"]

log = logging.getLogger("edge.jt808.gateway")

ADMIN_COMMANDS: Final = ("reset-registration", "list-registrations")
_FINAL: Final = frozenset({"acked", "failed", "bad_message", "unsupported", "no_reply", "refused"})


# ---------------------------------------------------------------------------- the gateway

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``vigil edge jt808`` (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(prog="vigil edge jt808", description="JT/T 808 gateway for vehicle "
                                          "terminals")
    add_server_arguments(p, port=DEFAULT_PORT, who="terminals", defaults=GatewayLimits())
    add_uplink_arguments(p, name="jt808", data_dir_help="outbox folder: queue messages on disk while the broker is "
                         "unreachable and deliver them in order, all QoS 1; also keeps open alarms across restarts "
                         f"({ALARMS_FILE}) (default: publish directly, alarms open at a restart never end)")
    p.add_argument("--registry", metavar="FILE", help="device registry YAML: its vehicle ids may register")
    p.add_argument("--accept-unknown-devices", action="store_true", help="let any terminal register")
    p.add_argument("--registrations", metavar="FILE", help="registration store (SQLite; default "
                   "DATA_DIR/jt808-registrations.sqlite3 with --data-dir, else memory only: lost on restart)")
    p.add_argument("--no-commands", action="store_true", help="do not subscribe to platform commands "
                   "(vigil/v1/vehicle/+/command: alarm confirmation, text, terminal parameters)")
    return p


def platform_from_args(args: argparse.Namespace) -> Jt808Platform:
    """Build the platform (registry, registration store) from parsed options.

    Raises:
        RegistrationStoreError: the registration store cannot be opened.
    """
    registry: TerminalRegistry = RegistryTerminals(args.registry) if args.registry else StaticTerminalRegistry()
    if not args.registry and not args.accept_unknown_devices:
        log.warning("jt808: no --registry and no --accept-unknown-devices: every terminal will be refused")
    path = store_path(args.registrations, getattr(args, "data_dir", None))
    store: RegistrationStore
    if path is None:
        log.warning("jt808: no --registrations or --data-dir: registrations are kept in memory only; after a "
                    "restart every terminal must register again")
        store = MemoryRegistrations()
    else:
        store = SqliteRegistrations(path)
    alarm_store: SqliteAlarmStore | None = None
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        # Open alarms survive a restart: on each terminal's first report they are ended (bit now
        # clear) or continued under their original event ids. Without --data-dir they are lost.
        try:
            alarm_store = SqliteAlarmStore(Path(data_dir) / ALARMS_FILE)
        except (OSError, sqlite3.Error) as exc:
            raise RegistrationStoreError(f"{Path(data_dir) / ALARMS_FILE}: {exc}") from None
    platform = Jt808Platform(registry, store, accept_unknown=args.accept_unknown_devices, alarm_store=alarm_store)
    if platform.alarms.restored:
        log.info("jt808: %d open alarm(s) from before the restart; each ends or goes on at its terminal's next "
                 "position", platform.alarms.restored)
    return platform


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None,
                ready: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Run the gateway with MQTT until ``stop`` is set (or SIGINT/SIGTERM); ``ready`` gets the bound address."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        platform = platform_from_args(args)
        async with open_uplink(args.mqtt, client_id=args.client_id, data_dir=getattr(args, "data_dir", None),
                               gateway_name=args.gateway_name, agent=STAGE,
                               telemetry_qos=args.telemetry_qos, nats_servers=getattr(args, "nats", None)) as uplink:
            gateway = Jt808Gateway(platform, uplink.publish, dead_letter=dead_letter_sink(uplink.publish, STAGE),
                                   limits=limits_from_args(args))
            if not getattr(args, "no_commands", False):
                uplink.subscribe(COMMAND_FILTER, gateway.on_commands)
            await serve_until_stopped(gateway, args.listen, stop, ready, log, "jt808")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vigil edge jt808`` (and its admin and send-command subcommands); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN_COMMANDS:
        return admin_main(argv)
    if argv and argv[0] == "send-command":
        return send_command_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging()
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with options parsed by ``build_parser`` (for a CLI that adds them to its own subparser)."""
    if args.registry and not Path(args.registry).is_file():
        log.error("jt808: registry file %s does not exist", args.registry)
        return 2
    return run_gateway("jt808", serve(args), RegistrationStoreError)


# ---------------------------------------------------------------------------- registrations

def admin_main(argv: Sequence[str]) -> int:
    """``vigil edge jt808 reset-registration PHONE ...`` / ``list-registrations``; returns the exit status."""
    p = argparse.ArgumentParser(prog="vigil edge jt808", description="manage JT/T 808 terminal registrations: "
                                "reset-registration PHONE lets a terminal register again; list-registrations")
    p.add_argument("command", choices=ADMIN_COMMANDS)
    p.add_argument("phone", nargs="?", help="terminal phone number or device id (reset-registration)")
    p.add_argument("--registrations", metavar="FILE", help="registration store file (as given to the gateway)")
    p.add_argument("--data-dir", metavar="DIR", help=f"the gateway's --data-dir (store {REGISTRATIONS_FILE})")
    args = p.parse_args(argv)
    path = store_path(args.registrations, args.data_dir)
    if path is None:
        p.error("give --registrations FILE or --data-dir DIR")
    if not path.is_file():
        print(f"{path}: no registration store", file=sys.stderr)
        return 2
    try:
        store = SqliteRegistrations(path)
    except RegistrationStoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        if args.command == "list-registrations":
            for reg in store.all():
                i = reg.identity
                print(f"{reg.device_id}\t{i.plate_colour}/{i.plate}\t{i.manufacturer}/{i.model}/{i.terminal_id}\t"
                      f"{reg.registered_at.isoformat()}\t{reg.peer}")
            return 0
        if not args.phone or not args.phone.isdigit():
            p.error("reset-registration needs the terminal's phone number (digits)")
        device_id = args.phone.lstrip("0")
        if not store.remove(device_id):
            print(f"{device_id}: not registered", file=sys.stderr)
            return 1
        print(f"{device_id}: registration reset; the terminal may register again (its old auth code no longer works)")
        return 0
    except RegistrationStoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        store.close()


# ---------------------------------------------------------------------------- send-command

def send_command_parser() -> argparse.ArgumentParser:
    """Options of ``send-command``: publish a platform command to one vehicle and print its audit trail.

    The account must be a platform account (only those may publish command topics). The command goes
    to ``vigil/v1/vehicle/{id}/command``; the gateway's ``jt808.command`` events for its id are printed
    as JSON lines until the terminal answered (or ``--wait`` seconds passed).
    """
    p = argparse.ArgumentParser(prog="vigil edge jt808 send-command",
                                description="publish a platform command to one vehicle and print its audit trail; "
                                "exit status 0 when the terminal acknowledged it, 1 otherwise")
    p.add_argument("device", help="vehicle device id (the terminal's phone digits without leading zeros)")
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--params", default="{}", help="command parameters as a JSON object (docs/jt808.md)")
    p.add_argument("--wait", type=float, default=90.0, metavar="S", help="seconds to wait for the answer (90)")
    p.add_argument("--client-id", default=f"vigil-send-command-{secrets.token_hex(3)}")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL of a platform account")
    return p


async def send(args: argparse.Namespace) -> int:
    """Publish the command, print its audit events; 0 when acknowledged."""
    from broker.mqtt import MqttClient

    params = json.loads(args.params)
    if not isinstance(params, dict):
        raise ValueError("--params must be a JSON object")
    cid = f"cli-{secrets.token_hex(6)}"
    device_id = str(args.device).lstrip("0")
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_event(batch: list[Message]) -> None:
        for m in batch:
            try:
                ev = decode_device_message(m.topic, m.payload).payload
            except Rejected:
                continue
            if isinstance(ev, DeviceEvent) and ev.type == AUDIT_EVENT_TYPE and ev.event_id == cid:
                print(json.dumps({"ts": ev.ts.isoformat(), **ev.data}, ensure_ascii=False), flush=True)
                if ev.data.get("status") in _FINAL and not done.done():
                    done.set_result(str(ev.data["status"]))

    async with MqttClient(args.mqtt, args.client_id, clean_start=True) as mqtt:
        mqtt.subscribe(device_topic(Kind.VEHICLE, device_id, Channel.EVENT), on_event)
        await asyncio.sleep(0.3)  # the subscription is in place before the command can be answered
        await mqtt.publish(device_topic(Kind.VEHICLE, device_id, Channel.COMMAND),
                           encode(DeviceCommand(ts=utcnow(), command=args.command, command_id=cid, params=params)))
        try:
            status = await asyncio.wait_for(done, args.wait)
        except TimeoutError:
            print(json.dumps({"command_id": cid, "status": "no_answer", "detail": f"nothing in {args.wait:.0f} s "
                              "(gateway down, or this account may not publish commands)"}), flush=True)
            return 1
    return 0 if status == "acked" else 1


def send_command_main(argv: Sequence[str]) -> int:
    """``vigil edge jt808 send-command DEVICE COMMAND ...``; returns the exit status."""
    args = send_command_parser().parse_args(argv)
    try:
        return asyncio.run(send(args))
    except (ValueError, OSError) as exc:
        print(f"send-command: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
