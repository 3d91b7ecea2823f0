"""The Apprise adapter: delivers one notification to one recipient's channels, in a thread pool.

Apprise's plugins are synchronous, so every call runs in a dedicated ``ThreadPoolExecutor``
and never blocks the event loop. Each channel is tried ``attempts`` times with jittered
exponential backoff; then the next channel of the recipient (failover). The time each
notification is first handed to Apprise is recorded for latency tracing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import apprise

from alerting.config import Retry
from alerting.masking import mask_url

log = logging.getLogger(__name__)
# Apprise's own log lines can contain full URLs; keep only its errors (which we never re-emit with URLs).
logging.getLogger("apprise").setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Message:
    """What to send: a title, a body, and optionally an attachment URL (a camera snapshot)."""

    title: str
    body: str
    attach: str | None = None
    notify_type: str = "failure"


@dataclass(slots=True)
class Attempt:
    """One try on one channel."""

    channel: str
    """Masked URL."""
    attempt: int
    ok: bool
    started_at: float
    elapsed_ms: float
    error: str | None = None


@dataclass(slots=True)
class Delivery:
    """The outcome of delivering one message to one recipient."""

    ok: bool
    handed_at: float | None = None
    """Wall-clock time the message was first handed to Apprise."""
    channel: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None


Transport = Callable[[str, Message], tuple[bool, str | None]]
"""Sends a message to one URL synchronously; returns (ok, error). Replaceable in tests and benchmarks."""


def apprise_transport(timeout_s: float) -> Transport:
    """The real transport: one Apprise instance per call (plugin objects are not shared across threads)."""

    def send(url: str, msg: Message) -> tuple[bool, str | None]:
        ap = apprise.Apprise()
        if not ap.add(url):
            return False, "invalid apprise url"
        kwargs: dict[str, object] = {"body": msg.body, "title": msg.title, "notify_type": msg.notify_type,
                                     "timeout": timeout_s}
        if msg.attach:
            kwargs["attach"] = msg.attach
        result = ap.notify(**kwargs)  # type: ignore[arg-type]
        if bool(result):
            return True, None
        status = getattr(getattr(result, "status", None), "name", "FAILURE")
        return False, f"apprise {status.lower()}"

    return send


def preload_apprise(urls: Iterable[str]) -> list[str]:
    """Load Apprise's plugins now and return the (masked) URLs no plugin understands.

    Apprise imports its ~480 plugin modules on first use. Done at start-up, that cost (about
    0.2 s) does not fall on the first alert, and the modules join the heap the platform
    exempts from garbage collection (see ``vigil.runtime.freeze_startup_heap``).
    """
    bad: list[str] = []
    for url in urls:
        try:
            ok = apprise.Apprise.instantiate(url) is not None
        except Exception:  # a plugin's parser bug must not stop the start-up
            ok = False
        if not ok:
            bad.append(mask_url(url))
    return bad


class AppriseSender:
    """Delivers messages through Apprise off the event loop, with retry and channel failover."""

    def __init__(self, retry: Retry, threads: int = 8, transport: Transport | None = None,
                 urls: Iterable[str] = ()) -> None:
        self.retry = retry
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apprise")
        self.transport = transport or apprise_transport(retry.timeout_s)
        if transport is None:
            for url in preload_apprise(urls):
                log.warning("alerting: Apprise does not understand the channel %s; sends to it will fail", url)

    def close(self) -> None:
        """Stop the thread pool (running deliveries finish)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, url: str, msg: Message, handed: list[float]) -> tuple[bool, str | None, float]:
        start = time.time()
        handed.append(start)
        try:
            ok, err = self.transport(url, msg)
        except Exception as exc:  # a plugin bug must not kill the worker; the message stays URL-free
            ok, err = False, f"{type(exc).__name__}"
        return ok, err, start

    async def deliver(self, channels: list[str], msg: Message,
                      on_attempt: Callable[[Attempt], None] | None = None) -> Delivery:
        """Try each channel in order, each with retries, until one accepts the message.

        Args:
            channels: Apprise URLs of the recipient, preferred first.
            msg: the message.
            on_attempt: called after every attempt (for the notification log).

        Returns:
            The delivery outcome; errors and channel names are masked.
        """
        loop = asyncio.get_running_loop()
        out = Delivery(ok=False)
        if not channels:
            out.error = "recipient has no channels"
            return out
        handed: list[float] = []
        for url in channels:
            masked = mask_url(url)
            delay = self.retry.backoff_s
            for n in range(1, max(1, self.retry.attempts) + 1):
                # Only the last try on the last channel goes without the attachment, in case the snapshot is the
                # reason for failure (an unreachable camera must not stop the alert).
                use = msg
                if msg.attach and n == self.retry.attempts and url == channels[-1]:
                    use = Message(msg.title, msg.body + f"\n{msg.attach}", None, msg.notify_type)
                t0 = time.perf_counter()
                ok, err, started = await loop.run_in_executor(self.executor, self._call, url, use, handed)
                att = Attempt(masked, n, ok, started, (time.perf_counter() - t0) * 1000, err)
                out.attempts.append(att)
                if out.handed_at is None and handed:
                    out.handed_at = handed[0]
                if on_attempt is not None:
                    on_attempt(att)
                if ok:
                    out.ok, out.channel, out.error = True, masked, None
                    return out
                out.error = err
                if n < self.retry.attempts:
                    await asyncio.sleep(min(delay, self.retry.backoff_max_s) * random.uniform(0.5, 1.0))
                    delay *= 2
        out.channel = mask_url(channels[-1])
        return out
