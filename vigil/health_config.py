"""The ``health:`` section of ``vigil.yaml``: the node's health model, its HTTP endpoint and its heartbeat.

Apart from ``vigil.health`` so the configuration can name it without importing the monitor.
"""

from __future__ import annotations

import msgspec


class HeartbeatConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Dead-man heartbeat: an HTTP endpoint pinged periodically; its silence is noticed by the receiver."""

    url: str
    """``http(s)://...``: POSTed a small JSON status every ``interval_s`` (``${ENV}`` for tokens)."""
    interval_s: float = 30.0
    timeout_s: float = 10.0
    fail_suffix: str = "/fail"
    """Appended to the URL while a critical check fails (healthchecks.io convention); "" to never use."""


class HealthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The node's health model, its HTTP endpoint and its heartbeat."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    """``/metrics`` and ``/health``; 0 (default) picks a free port, written to ``health.port`` in the node's
    state folder where ``vigil status`` finds it. Give a fixed port for Prometheus scraping (e.g. 9464)."""
    interval_s: float = 5.0
    broker_down_s: float = 30.0
    ingest_stalled_s: float = 5.0
    disk_min_free_bytes: int = 128 << 20
    """Below this much free space in the state folder the ``disk`` check fails (critical)."""
    outbox_high_ratio: float = 0.8
    backend_down_s: float = 60.0
    dead_letter_quiet_s: float = 600.0
    """The ``notifications`` check fails when a notification was dead-lettered within this window."""
    loop_lag_ms: float = 1000.0
    clock_ahead_s: float = 300.0
    """The ``clock`` check fails for devices whose timestamps run this far ahead of the platform's clock."""
    clock_step_s: float = 60.0
    """The ``clock`` check also fails when the platform's own wall clock stepped more than this (against the
    monotonic clock: an NTP step, ``date -s``, a resumed VM) ..."""
    clock_step_quiet_s: float = 600.0
    """... and stays failing this long after the last step."""
    heartbeat: HeartbeatConfig | None = None
