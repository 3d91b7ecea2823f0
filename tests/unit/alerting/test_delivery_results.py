"""Delivery results: which failures are recoverable (retried) and which are permanent (dead at once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alerting.config import Retry
from alerting.sender import (
    AppriseSender,
    Delivered,
    Failed,
    Message,
    SendResult,
    apprise_transport,
    as_result,
    classify_apprise,
    classify_http,
)


@pytest.mark.parametrize(("status", "recoverable"), [
    (500, True), (502, True), (503, True), (504, True), (408, True), (425, True), (429, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (301, False),
])
def test_http_statuses(status: int, recoverable: bool) -> None:
    got = classify_http(status)
    assert isinstance(got, Failed) and got.recoverable is recoverable and got.reason == f"http_{status}"


def test_2xx_is_delivered() -> None:
    assert classify_http(200) == Delivered() and classify_http(204).ok


class _Entry:
    def __init__(self, message: str) -> None:
        self.message = message


class _Attempt:
    def __init__(self, *lines: str) -> None:
        self.logs = [_Entry(x) for x in lines]


class _Service:
    def __init__(self, *attempts: _Attempt) -> None:
        self.attempts = attempts


class _Status:
    def __init__(self, name: str) -> None:
        self.name = name


class _Result:
    """The shape of Apprise 2.x's AppriseResult: falsy on failure, iterates services, each with attempts and logs."""

    def __init__(self, status: str, *services: _Service) -> None:
        self.status = _Status(status)
        self.services = services

    def __bool__(self) -> bool:
        return self.status.name == "SUCCESS"

    def __iter__(self) -> Iterator[_Service]:
        return iter(self.services)


@pytest.mark.parametrize(("lines", "expected"), [
    (["Failed to send JSON POST notification: Verification Failed., error=401."], Failed("http_401", False, "http 401")),
    (["Failed to send JSON POST notification: Servers are overloaded., error=503."], Failed("http_503", True, "http 503")),
    (["A Connection error occurred sending JSON notification to host."], Failed("connection", True, "connection error")),
    (["something a plugin said"], Failed("apprise_failure", True, "apprise failure")),
    ([], Failed("apprise_failure", True, "apprise failure")),
])
def test_apprise_results_are_classified_by_what_apprise_captured(lines: list[str], expected: Failed) -> None:
    assert classify_apprise(_Result("FAILURE", _Service(_Attempt(*lines)))) == expected


def test_the_last_attempt_decides_and_timeouts_and_bools_are_recoverable() -> None:
    two = _Service(_Attempt("error=503."), _Attempt("error=400."))
    assert classify_apprise(_Result("FAILURE", two)) == Failed("http_400", False, "http 400")
    assert classify_apprise(_Result("TIMEOUT", _Service(_Attempt()))) == Failed("timeout", True, "apprise timeout")
    assert classify_apprise(False) == Failed("apprise_failure", True, "apprise failure")  # Apprise 1.x: a plain bool
    assert classify_apprise(True) == Delivered()


def test_an_url_apprise_cannot_parse_is_permanent() -> None:
    out = apprise_transport(1.0)("nosuchscheme://x", Message("t", "b"))
    assert out == Failed("invalid_url", False, "invalid apprise url")


def test_legacy_pairs() -> None:
    assert as_result((True, None)) == Delivered()
    assert as_result((False, "refused")) == Failed("transport", True, "refused")


class _Script:
    """A transport answering from a list per URL; records every call."""

    def __init__(self, answers: dict[str, list[SendResult | Exception]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, url: str, msg: Message) -> SendResult:
        self.calls.append(url)
        got = self.answers[url].pop(0)
        if isinstance(got, Exception):
            raise got
        return got


RETRY = Retry(attempts=3, backoff_s=0.001, backoff_max_s=0.002, timeout_s=5.0)


async def test_recoverable_failures_are_retried_permanent_ones_are_not() -> None:
    script = _Script({"a://1": [Failed("http_503", True), Failed("timeout", True), Delivered()],
                      "b://1": [Failed("http_401", False)]})
    sender = AppriseSender(RETRY, threads=2, transport=script)
    try:
        ok = await sender.deliver(["a://1"], Message("t", "b"))
        dead = await sender.deliver(["b://1"], Message("t", "b"))
    finally:
        sender.close()
    assert ok.ok and [a.ok for a in ok.attempts] == [False, False, True]
    assert not dead.ok and len(dead.attempts) == 1 and dead.failure == Failed("http_401", False)
    assert script.calls == ["a://1"] * 3 + ["b://1"]
    assert sender.counters["retries"] == 2 and sender.counters["failed_permanent"] == 1
    assert sender.counters["failed_http_401"] == 1


async def test_plugin_crash_is_permanent_network_error_is_recoverable() -> None:
    script = _Script({"c://1": [TypeError("bug")], "d://1": [ConnectionResetError(), Delivered()]})
    sender = AppriseSender(RETRY, threads=2, transport=script)
    try:
        crash = await sender.deliver(["c://1"], Message("t", "b"))
        reset = await sender.deliver(["d://1"], Message("t", "b"))
    finally:
        sender.close()
    assert crash.failure == Failed("plugin_error", False, "TypeError") and len(crash.attempts) == 1
    assert reset.ok and len(reset.attempts) == 2


async def test_no_channels_is_permanent() -> None:
    sender = AppriseSender(RETRY, threads=1, transport=_Script({}))
    try:
        out = await sender.deliver([], Message("t", "b"))
    finally:
        sender.close()
    assert out.failure == Failed("no_channels", False, "recipient has no channels") and out.attempts == []


async def test_a_permanent_refusal_with_a_snapshot_is_tried_once_without_it(tmp_path: Path) -> None:
    from alerting.evidence import EvidenceConfig, EvidencePolicy

    (tmp_path / "cam-1.jpg").write_bytes(bytes.fromhex("ffd8ffe000104a464946") + bytes(64) + bytes.fromhex("ffd9"))
    seen: list[bool] = []

    def too_large_with_picture(url: str, msg: Message) -> SendResult:
        seen.append(msg.attach_file is not None)
        return Failed("http_413", False, "http 413") if msg.attach_file else Delivered()

    sender = AppriseSender(RETRY, threads=1, transport=too_large_with_picture,
                           evidence=EvidencePolicy(EvidenceConfig(dir=str(tmp_path))))
    try:
        out = await sender.deliver(["e://1"], Message("t", "b", str(tmp_path / "cam-1.jpg")))
    finally:
        sender.close()
    assert out.ok and seen == [True, False] and sender.counters["retries"] == 0
