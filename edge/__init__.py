"""Vigil edge gateways: field protocols in, contract telemetry out."""
