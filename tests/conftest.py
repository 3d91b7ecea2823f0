"""Shared fixtures: real servers started on free ports in temporary folders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port


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
