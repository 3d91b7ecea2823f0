"""Apprise's plugins load at start-up; channels Apprise cannot parse are named (masked) then."""

from __future__ import annotations

import logging
import sys

import pytest

from alerting.config import Retry
from alerting.sender import AppriseSender, preload_apprise


def test_preload_loads_the_plugins_and_reports_unparseable_channels() -> None:
    bad = preload_apprise(["json://127.0.0.1:9/duty", "nosuchscheme://user:s3cret@host/x", "mailto://"])
    assert any(name.startswith("apprise.plugins.") for name in sys.modules)
    assert len(bad) == 2
    assert all("s3cret" not in b for b in bad)


def test_the_sender_warns_at_start_up_about_a_channel_it_cannot_use(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alerting.sender"):
        sender = AppriseSender(Retry(), threads=1, urls=["json://127.0.0.1:9/ok", "nosuchscheme://host/token-123"])
    sender.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nosuchscheme" in warnings[0] and "token-123" not in warnings[0]
