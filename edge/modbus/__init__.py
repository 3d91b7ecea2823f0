"""Modbus TCP gateway: polls gas detection controllers, PLC/DCS/SIS gateways and tank gauges from a tag map."""
