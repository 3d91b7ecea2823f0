"""Vigil's storage stage: telemetry, events, status, alert changes and dead letters kept in InfluxDB.

Handlers turn contract messages into line protocol (``lineproto``) and append them to a durable
on-disk outbox (``outbox``) before the MQTT message is acknowledged; a background task drains the
outbox in gzip'd batches to the configured backend (``backends``: InfluxDB v1 or v2 API, or an
embedded SQLite file). See docs/storage.md.
"""
