"""JT/T 808 gateway: the runtime's TCP server around the pure sessions, plus platform commands.

``Jt808Gateway`` is ``edge.runtime.server.GatewayServer`` (connection caps, authentication
deadline, bounded publish queue with backpressure, counted and aggregated rejections) running
``Jt808Session`` s, and adds what only JT/T 808 has: platform commands to terminals
(``vigil/v1/vehicle/+/command``) and their time-outs. The command line is ``edge.jt808.cli``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from broker.contracts import (
    Channel,
    DeviceCommand,
    Kind,
    Rejected,
    RejectReason,
    decode_command,
    device_topic,
    parse_device_topic,
)
from edge.jt808.session import STAGE, Jt808Platform, dead_letter_of
from edge.runtime.output import SessionOutput
from edge.runtime.server import DeadLetterSink, GatewayLimits, GatewayServer, PublishSink

if TYPE_CHECKING:
    from broker.mqtt import Message

__all__ = ["COMMAND_FILTER", "DEFAULT_LIMITS", "DEFAULT_PORT", "STAGE", "DeadLetterSink", "GatewayLimits", "Jt808Gateway",
           "PublishSink"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 7808
COMMAND_FILTER: Final = device_topic(Kind.VEHICLE, "+", Channel.COMMAND)
"""Platform commands to terminals (the broker lets only platform accounts publish there)."""
DEFAULT_LIMITS: Final = GatewayLimits()


class Jt808Gateway(GatewayServer):
    """The TCP server for terminals: the runtime's server with JT/T 808 sessions and platform commands."""

    def __init__(self, platform: Jt808Platform, publish: PublishSink, *, dead_letter: DeadLetterSink | None = None,
                 limits: GatewayLimits = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(platform, publish, name="jt808", dead_letter_of=dead_letter_of, dead_letter=dead_letter,
                         limits=limits, clock=clock)
        self.platform: Jt808Platform = platform

    def stats(self) -> dict[str, int]:
        """The server's figures plus the split-message reassembly memory."""
        snap = super().stats()
        snap["reassembly_bytes"] = self.platform.reassembly_budget.used
        snap["reassembly_bytes_peak"] = self.platform.reassembly_budget.peak
        return snap

    async def __aenter__(self) -> Jt808Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def command(self, device_id: str, command: DeviceCommand) -> None:
        """Send a platform command to a terminal on its connection; the audit goes to the event queue."""
        session, out = self.platform.command(device_id, command, self.clock())
        conn = next((c for c in self.connections if session is not None and c.session is session), None)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            self.handle_output(conn, out)
        else:
            self.enqueue(SessionOutput(publications=out.publications))

    def on_commands(self, batch: list[Message]) -> None:
        """MQTT handler of ``vigil/v1/vehicle/+/command``: retained, malformed or repeated ones are refused."""
        for message in batch:
            try:
                topic = parse_device_topic(message.topic)
                if message.retain or topic.kind is not Kind.VEHICLE or topic.channel is not Channel.COMMAND:
                    raise Rejected(RejectReason.BAD_TOPIC, "retained or not a vehicle command topic")
                command = decode_command(message.payload)
            except Rejected as exc:
                self.platform.commands.counts["invalid"] = self.platform.commands.counts.get("invalid", 0) + 1
                log.warning("jt808: platform command on %s refused: %s", message.topic[:120], exc)
                continue
            if self.platform.commands.repeated(command):
                continue  # a redelivery (QoS 1): the terminal must not get the text twice
            self.command(topic.device_id, command)

    def housekeeping(self, now: float) -> SessionOutput | None:
        """Commands that timed out become audit events."""
        expired = self.platform.commands.expire(now)
        return SessionOutput(publications=expired) if expired else None
