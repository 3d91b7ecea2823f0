"""The driver interface between the elevator agent and a monitoring box.

A driver turns whatever the box speaks (a serial line, Modbus RTU/TCP registers, a vendor
protocol, or the in-process simulator) into ``ElevatorSignals``. The agent owns timing: it
calls ``read`` at its sample rate and never assumes anything else about the box.
"""

from __future__ import annotations

from typing import Protocol

from edge.elevator.signals import ElevatorSignals
from edge.errors import EdgeError


class DriverError(EdgeError):
    """The box could not be read this time (timeout, bad frame); the agent counts it and carries on."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ElevatorBoxDriver(Protocol):
    """What the agent needs from a box driver."""

    async def open(self) -> None:
        """Open the port or connection (raises ``DriverError`` when the box is unreachable)."""
        ...

    async def read(self) -> ElevatorSignals:
        """One reading of all signals (raises ``DriverError`` on a failed read)."""
        ...

    async def close(self) -> None:
        """Release the port or connection."""
        ...
