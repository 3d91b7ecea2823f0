"""Elevator monitoring at the edge: box driver -> fault detectors -> contract telemetry and events."""

from edge.elevator.agent import ElevatorMonitor, MonitorOutput
from edge.elevator.detectors import DetectorThresholds, EventChange
from edge.elevator.signals import ElevatorGeometry, ElevatorSignals

__all__ = [
    "DetectorThresholds",
    "ElevatorGeometry",
    "ElevatorMonitor",
    "ElevatorSignals",
    "EventChange",
    "MonitorOutput",
]
