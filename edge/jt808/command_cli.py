"""``vigil edge jt808 send-command``: publish a platform command to one vehicle and print its audit trail.

    vigil edge jt808 send-command 13800138000 jt808.query_params --mqtt mqtt://vigil-platform@127.0.0.1:1885
    vigil edge jt808 send-command 13800138000 jt808.text --params '{"text": "请减速"}' --mqtt ...

The account must be a platform account (only those may publish command topics). The command goes to
``vigil/v1/vehicle/{id}/command``; the gateway's ``jt808.command`` events for its id are printed as
JSON lines until the terminal answered (or ``--wait`` seconds passed). Exit status 0 when the terminal
acknowledged it, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from collections.abc import Sequence

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
from edge.jt808.downlink import AUDIT_EVENT_TYPE, COMMANDS

_FINAL = frozenset({"acked", "failed", "bad_message", "unsupported", "no_reply", "refused"})


def build_parser() -> argparse.ArgumentParser:
    """Options of ``send-command``."""
    p = argparse.ArgumentParser(prog="vigil edge jt808 send-command", description=__doc__.splitlines()[0])
    p.add_argument("device", help="vehicle device id (the terminal's phone digits without leading zeros)")
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--params", default="{}", help="command parameters as a JSON object (docs/jt808.md)")
    p.add_argument("--wait", type=float, default=90.0, metavar="S", help="seconds to wait for the answer (90)")
    p.add_argument("--client-id", default=f"vigil-send-command-{secrets.token_hex(3)}")
    add_mqtt_arguments(p, default="mqtt://127.0.0.1:1883", help="broker URL of a platform account")
    return p


async def send(args: argparse.Namespace) -> int:
    """Publish the command, print its audit events; 0 when acknowledged."""
    from broker.mqtt import Message, MqttClient

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


def main(argv: Sequence[str]) -> int:
    """Entry point (``vigil edge jt808 send-command ...``)."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(send(args))
    except (ValueError, OSError) as exc:
        print(f"send-command: {exc}")
        return 2
