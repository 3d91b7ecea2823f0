"""Alert actions that reach a vehicle's terminal through the JT/T 808 gateway (platform commands on MQTT).

- Acknowledging or closing an alert of a rule watching a clear-on-ack alarm bit (0, 3, 20-22, 27, 28
  in the shipped pack) sends ``jt808.alarm_ack`` (0x8203): the terminal keeps those bits set until the
  platform confirms them.
- ``POST /api/alerts/{id}/driver-text`` sends ``jt808.text`` (0x8300) to the driver.

The gateway audits each command (``jt808.command`` events: sent, acked / failed / no_reply, refused);
the alert's timeline records who asked for it, with the command id.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from alerting.lifecycle import AlertRecord
from broker.contracts import Channel, DeviceCommand, Kind, device_topic, encode, utcnow

CLEAR_ON_ACK_RULES: Final[dict[str, tuple[int, ...]]] = {
    "vehicle_emergency_alarm": (0,),
    "vehicle_danger_warning": (3,),
    "vehicle_illegal_ignition": (27,),
    "vehicle_illegal_displacement": (28,),
    "vehicle_terminal_area_route_alarm": (20, 21, 22),
}
"""Rules whose alarm bit the terminal clears only on the platform's 0x8203, and those bits."""
MAX_DRIVER_TEXT: Final = 200
"""Characters of a text to the driver (a terminal screen / TTS message, not a letter)."""


def _command_id(rec: AlertRecord, what: str) -> str:
    # Unique per request (the gateway drops repeated ids as redeliveries), traceable to the alert.
    return f"{what}-{rec.id[:24]}-{int(time.time())}-{secrets.token_hex(3)}"


def _is_vehicle(rec: AlertRecord) -> bool:
    return str(rec.kind) == Kind.VEHICLE.value


def alarm_confirmation(rec: AlertRecord, actor: str) -> tuple[str, bytes, str] | None:
    """(topic, payload, command id) of the 0x8203 an acknowledgement of ``rec`` calls for, or None."""
    bits = CLEAR_ON_ACK_RULES.get(rec.rule)
    if bits is None or not _is_vehicle(rec):
        return None
    cid = _command_id(rec, "ack")
    cmd = DeviceCommand(ts=utcnow(), command="jt808.alarm_ack", command_id=cid,
                        params={"bits": list(bits), "alert_id": rec.id, "by": actor})
    return device_topic(Kind.VEHICLE, rec.device_id, Channel.COMMAND), encode(cmd), cid


def driver_text(rec: AlertRecord, actor: str, text: str, *, emergency: bool = False) -> tuple[str, bytes, str]:
    """(topic, payload, command id) of a 0x8300 text to the driver of the alert's vehicle.

    Raises:
        ValueError: not a vehicle alert, or the text is empty or too long.
    """
    if not _is_vehicle(rec):
        raise ValueError("only vehicle alerts can message a driver")
    text = text.strip()
    if not text or len(text) > MAX_DRIVER_TEXT:
        raise ValueError(f"text must be 1..{MAX_DRIVER_TEXT} characters")
    cid = _command_id(rec, "text")
    cmd = DeviceCommand(ts=utcnow(), command="jt808.text", command_id=cid,
                        params={"text": text, "emergency": emergency, "tts": True, "alert_id": rec.id, "by": actor})
    return device_topic(Kind.VEHICLE, rec.device_id, Channel.COMMAND), encode(cmd), cid
