"""Shared fixtures: real servers started on free ports in temporary folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port

# CI runs the property-based fuzzers on a fixed, reproducible sequence of examples; developers'
# runs keep exploring new ones (and keep any failure they find in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A real Mosquitto, anonymous access allowed, on a free port; stopped afterwards.

    Attributes: ``.host``, ``.port``, ``.url``; ``.stop()`` / ``.start()`` restart it on the same
    port with its persistence kept (outage tests).
    """
    proc = MosquittoProcess(BrokerLayout(data_dir=tmp_path / "mosquitto", port=free_port()))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _fail_on_logged_exception(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A test that logs an unexpected exception fails (tests expecting one clear caplog)."""
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.exc_info]
    if bad:
        pytest.fail(f"unexpected exception logged: {bad[0].getMessage()}\n{bad[0].exc_text or ''}")


from dataclasses import dataclass  # noqa: E402 - storage fixtures below were added after the broker ones
from typing import TYPE_CHECKING  # noqa: E402

# Storage fixtures import ``storage`` lazily so the other stages' tests never depend on it.
if TYPE_CHECKING:
    from storage.localservers import InfluxdProcess, VictoriaMetricsProcess


@dataclass(frozen=True)
class InfluxServer:
    """A running test InfluxDB 1.x: ``.url``, ``.database`` and the process (``.process.stop()/.start()``)."""

    process: InfluxdProcess
    database: str

    @property
    def url(self) -> str:
        """Base HTTP URL."""
        return self.process.url


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxServer]:
    """A real InfluxDB 1.6 (Debian's influxd) on free ports in a temp folder, database ``vigil`` created."""
    from storage.localservers import InfluxdProcess

    proc = InfluxdProcess(tmp_path / "influxdb")
    proc.start()
    try:
        proc.create_database("vigil")
        yield InfluxServer(proc, "vigil")
    finally:
        proc.stop()


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetricsProcess]:
    """A real VictoriaMetrics (accepts ``/api/v2/write``) on a free port in a temp folder; ``.url``."""
    from storage.localservers import VictoriaMetricsProcess

    proc = VictoriaMetricsProcess(tmp_path / "victoria-metrics")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
