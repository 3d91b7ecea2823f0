"""Vigil alerting: alert lifecycle, routing, grouping, muting, duty rosters, escalation, notifications."""
