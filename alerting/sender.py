"""The Apprise adapter: delivers one notification to one recipient's channels, in a thread pool.

Apprise's plugins are synchronous, so every call runs in a thread and never blocks the event
loop. Channels are isolated: each channel (Apprise URL) has its own small thread pool and its
own slots, and every attempt has one deadline (``timeout_s`` from the moment it asks for a
slot: waiting for a busy channel, connecting and the answer all count). A hung channel thus
costs its own messages at most ``timeout_s`` per attempt before failover to the recipient's
next channel, and never holds a thread or a slot another channel needs. Each channel is tried ``attempts`` times with jittered
exponential backoff; then the next channel of the recipient (failover). The time each
notification is first handed to Apprise is recorded for latency tracing.

Every attempt ends in a typed result, ``Delivered`` or ``Failed(reason, recoverable)``. Only
recoverable failures (timeouts, connection errors, HTTP 5xx / 408 / 429, a busy channel) are
retried; a permanent one (an URL Apprise cannot parse, HTTP 4xx such as 401 or 400, a plugin
crash) moves on to the recipient's next channel at once, and the last channel's permanent failure
dead-letters the notification without retries. Apprise's ``notify()`` itself only says yes or no;
the HTTP status and connection errors are read from the log lines Apprise captures per attempt
(see ``classify_apprise``). What cannot be told apart is treated as recoverable, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import apprise

from alerting.config import Retry
from alerting.evidence import EvidencePolicy, EvidenceRefused
from alerting.templates import mask_url

log = logging.getLogger(__name__)
# Apprise's own log lines can contain full URLs: they never reach Vigil's log handlers (no propagation).
# Its warnings are still recorded, because Apprise captures them per attempt and they carry the HTTP
# status a plugin saw, which tells a permanent failure from a recoverable one (classify_apprise).
_apprise_log = logging.getLogger("apprise")
_apprise_log.setLevel(logging.WARNING)
_apprise_log.propagate = False
_apprise_log.addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True)
class Message:
    """What to send: a title, a body, and optionally a snapshot reference (a camera event's ``snapshot_url``).

    ``attach`` is device-supplied text and never reaches Apprise: the sender reads it through the
    evidence policy into a temp file and hands Apprise only that file (``attach_file``).
    """

    title: str
    body: str
    attach: str | None = None
    notify_type: str = "failure"
    attach_file: str | None = None
    """A local file the sender wrote from checked evidence bytes (set by the sender, not by callers)."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """The channel accepted the message."""

    ok: Literal[True] = True


@dataclass(frozen=True, slots=True)
class Failed:
    """The channel did not take the message; ``recoverable`` says whether trying again may help.

    ``reason`` is a short machine word (``http_401``, ``http_503``, ``connection``, ``timeout``,
    ``channel_busy``, ``invalid_url``, ``no_channels``, ``plugin_error``, ``apprise_failure``,
    ``transport``); ``detail`` is a URL-free text for the notification log.
    """

    reason: str
    recoverable: bool
    detail: str = ""
    ok: Literal[False] = False

    @property
    def error(self) -> str:
        """The text stored with the attempt: detail, then whether it is permanent."""
        text = self.detail or self.reason
        return text if self.recoverable else f"{text} (permanent)"


SendResult = Delivered | Failed
"""The typed outcome of one attempt on one channel."""

DELIVERED = Delivered()

_RECOVERABLE_HTTP = frozenset({408, 425, 429})


def classify_http(status: int) -> SendResult:
    """An HTTP answer as a result: 2xx delivered; 5xx, 408, 425 and 429 recoverable; anything else permanent."""
    if 200 <= status < 300:
        return DELIVERED
    recoverable = status >= 500 or status in _RECOVERABLE_HTTP
    return Failed(f"http_{status}", recoverable, f"http {status}")


_HTTP_ERROR = re.compile(r"error=(\d{3})\b")
_CONNECTION = re.compile(r"connection error|socket exception|timed out|timeout", re.IGNORECASE)


def classify_apprise(result: object) -> SendResult:
    """Classify an ``Apprise.notify()`` result by what Apprise can tell.

    Apprise's plugins log ``... error=<HTTP status>.`` when a server answers outside 2xx (about 160 of
    its 183 plugins) and ``A Connection error occurred ...`` when the request did not get through;
    Apprise 2.x captures those lines on each attempt of its result. A result without such a line (a
    plugin that reports nothing usable, or Apprise 1.x, whose result is a plain bool) cannot be
    told apart and counts as recoverable, so it is retried as before.
    """
    if bool(result):
        return DELIVERED
    status = getattr(result, "status", None)
    lines: list[str] = []
    for service in result if isinstance(result, Iterable) else ():
        for attempt in getattr(service, "attempts", ()):
            lines += [str(getattr(e, "message", "")) for e in getattr(attempt, "logs", ())]
    for line in reversed(lines):  # the last attempt's own words decide
        if (m := _HTTP_ERROR.search(line)) is not None:
            return classify_http(int(m.group(1)))
        if _CONNECTION.search(line):
            return Failed("connection", True, "connection error")
    if getattr(status, "name", "") == "TIMEOUT":
        return Failed("timeout", True, "apprise timeout")
    return Failed("apprise_failure", True, "apprise failure")


def as_result(value: SendResult | tuple[bool, str | None]) -> SendResult:
    """A transport's answer as a result; a plain ``(ok, error)`` pair cannot say more, so its failure is recoverable."""
    if isinstance(value, (Delivered, Failed)):
        return value
    ok, err = value
    return DELIVERED if ok else Failed("transport", True, err or "transport failure")


@dataclass(slots=True)
class Attempt:
    """One try on one channel and its typed result."""

    channel: str
    """Masked URL."""
    attempt: int
    started_at: float
    elapsed_ms: float
    result: SendResult

    @property
    def ok(self) -> bool:
        """Whether the channel took the message."""
        return self.result.ok

    @property
    def error(self) -> str | None:
        """URL-free failure text (None when delivered)."""
        return self.result.error if isinstance(self.result, Failed) else None


@dataclass(slots=True)
class Delivery:
    """The outcome of delivering one message to one recipient."""

    ok: bool
    handed_at: float | None = None
    """Wall-clock time the message was first handed to Apprise."""
    channel: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None
    failure: Failed | None = None
    """The last failure when nothing delivered (its ``recoverable`` says whether the outbox may try later)."""


Transport = Callable[[str, Message], SendResult | tuple[bool, str | None]]
"""Sends a message to one URL synchronously; returns a result (or a legacy ``(ok, error)`` pair). Replaceable in
tests and benchmarks."""


def _calling_thread_asset() -> apprise.AppriseAsset:
    """An Apprise asset that makes ``notify`` run the plugin in the calling thread."""
    try:
        asset = apprise.AppriseAsset(service_timeout=0)  # Apprise 2.x: no shared-pool deadline
    except (TypeError, AttributeError):
        asset = apprise.AppriseAsset()  # Apprise 1.x has no shared pool
    asset.async_mode = False
    return asset


def apprise_transport(timeout_s: float) -> Transport:
    """The real transport: one Apprise instance per call (plugin objects are not shared across threads).

    Not kept warm on purpose: a plugin object throttles its own requests (112 of Apprise 2.3's 180
    plugins keep the default of 5.5 s since that object's previous request), so a reused one would
    hold the second alert of a burst for seconds; building one costs ~0.3 ms of the ~3 ms CPU a send takes.

    The call runs in the calling thread (the channel's own): Apprise 2.x otherwise hands every
    service call with a deadline to one process-wide pool of ``cpu + 4`` threads, where a few
    hung channels block every other channel (measured: 1.7-2.0 s delays on a healthy one). The
    sender enforces the deadline; the plugin's socket timeouts free the thread soon after.
    """

    def send(url: str, msg: Message) -> SendResult:
        ap = apprise.Apprise(asset=_calling_thread_asset())
        if not ap.add(url):
            return Failed("invalid_url", False, "invalid apprise url")
        for server in ap:
            # Bound a silent server's hold on this channel's thread (connect and each read).
            for attr in ("socket_connect_timeout", "socket_read_timeout"):
                if hasattr(server, attr):
                    setattr(server, attr, timeout_s)
        kwargs: dict[str, object] = {"body": msg.body, "title": msg.title, "notify_type": msg.notify_type}
        if msg.attach_file:
            kwargs["attach"] = msg.attach_file
        return classify_apprise(ap.notify(**kwargs))  # type: ignore[arg-type]

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


class Slots:
    """A channel's free sender threads: taken at once when one is free and nobody waits (``try_take``),
    else waited for in order (``take``). Unlike ``asyncio.Semaphore`` it can be taken without a suspension,
    so a delivery can reach its thread within the callback that committed it (``AppriseSender.start``)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one; whether it was taken."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in order for one (cancellable: a slot handed over at that moment is passed on)."""
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # given a slot just as the wait was cancelled: the next waiter gets it
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, or to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    def waiting(self) -> int:
        """Deliveries waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())


@dataclass(slots=True)
class _Lane:
    """One channel's own threads and slots (a slot is held until its thread is free again)."""

    executor: ThreadPoolExecutor
    slots: Slots
    running: int = 0


@dataclass(slots=True)
class Started:
    """A first attempt already running in its channel's thread (``AppriseSender.start``), awaited by ``deliver``."""

    url: str
    msg: Message
    handed: list[float]
    future: asyncio.Future[tuple[SendResult, float]]
    asked: float
    deadline: float
    t0: float
    """``time.perf_counter()`` when it was asked for (the attempt's elapsed time counts from there)."""


class AppriseSender:
    """Delivers messages through Apprise off the event loop, with retry and channel failover."""

    LANE_THREADS_MAX = 4
    """Threads per channel at most: a hung channel can hold no more than these."""

    def __init__(self, retry: Retry, threads: int = 8, transport: Transport | None = None,
                 urls: Iterable[str] = (), evidence: EvidencePolicy | None = None) -> None:
        self.retry = retry
        self.evidence = evidence
        """Without a policy no snapshot is ever attached."""
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apprise")
        self.lane_threads = max(1, min(threads, self.LANE_THREADS_MAX))
        self._lanes: dict[str, _Lane] = {}
        self.counters: Counter[str] = Counter()
        self.transport = transport or apprise_transport(retry.timeout_s)
        if transport is None:
            for url in preload_apprise(urls):
                log.warning("alerting: Apprise does not understand the channel %s; sends to it will fail", url)

    def close(self) -> None:
        """Stop the thread pools (running deliveries finish)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        for lane in self._lanes.values():
            lane.executor.shutdown(wait=False, cancel_futures=True)

    def busy_channels(self) -> dict[str, int]:
        """Masked channel -> threads still busy (a hung channel shows its stuck threads here)."""
        return {mask_url(url): lane.running for url, lane in self._lanes.items() if lane.running}

    def _lane(self, url: str) -> _Lane:
        lane = self._lanes.get(url)
        if lane is None:
            lane = self._lanes[url] = _Lane(
                ThreadPoolExecutor(max_workers=self.lane_threads, thread_name_prefix="apprise-ch"),
                Slots(self.lane_threads))
        return lane

    def start(self, channels: list[str], msg: Message) -> Started | None:
        """Hand the first attempt on the first channel to its thread now, when a slot is free and there is no
        snapshot to fetch first; ``deliver(..., started=)`` then awaits it. None: nothing started (``deliver``
        does it all). Called from the callback that committed the notification, this saves the event-loop
        turns a task would wait before reaching the thread (each one a telemetry batch under load)."""
        if not channels or msg.attach:
            return None
        url = channels[0]
        lane = self._lane(url)
        if not lane.slots.try_take():
            return None
        loop = asyncio.get_running_loop()
        handed: list[float] = []
        t0, asked = time.perf_counter(), time.time()
        msg = Message(msg.title, msg.body, None, msg.notify_type)
        future = self._submit(loop, lane, url, msg, handed)
        return Started(url, msg, handed, future, asked, loop.time() + self.retry.timeout_s, t0)

    def _submit(self, loop: asyncio.AbstractEventLoop, lane: _Lane, url: str, msg: Message,
                handed: list[float]) -> asyncio.Future[tuple[SendResult, float]]:
        """Run one call in the lane's thread (its slot already taken); the slot is freed when the thread is."""
        lane.running += 1

        def freed(_f: object) -> None:
            # Runs in the sender thread when the call ends, however late: only then is the slot free.
            def release() -> None:
                lane.running -= 1
                lane.slots.release()
            with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown)
                loop.call_soon_threadsafe(release)

        fut = lane.executor.submit(self._call, url, msg, handed)
        fut.add_done_callback(freed)
        return asyncio.wrap_future(fut, loop=loop)

    async def _result(self, future: asyncio.Future[tuple[SendResult, float]], deadline: float,
                      asked: float) -> tuple[SendResult, float]:
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            self.counters["timeouts"] += 1
            return Failed("timeout", True, f"timeout after {self.retry.timeout_s:g} s"), asked

    async def _attempt(self, url: str, msg: Message, handed: list[float]) -> tuple[SendResult, float]:
        """One try on one channel, within ``timeout_s`` counted from now (waiting for the channel included)."""
        loop = asyncio.get_running_loop()
        lane = self._lane(url)
        asked = time.time()
        timeout = self.retry.timeout_s
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await lane.slots.take()
        except TimeoutError:
            self.counters["channel_busy"] += 1
            return Failed("channel_busy", True, f"channel busy: no free sender within {timeout:g} s"), asked
        return await self._result(self._submit(loop, lane, url, msg, handed), deadline, asked)

    def _call(self, url: str, msg: Message, handed: list[float]) -> tuple[SendResult, float]:
        start = time.time()
        handed.append(start)
        try:
            result = as_result(self.transport(url, msg))
        except OSError as exc:  # the network below a plugin that does not catch it: worth another try
            result = Failed("connection", True, type(exc).__name__)
        except Exception as exc:  # a plugin bug must not kill the worker; it would fail the same way again
            result = Failed("plugin_error", False, type(exc).__name__)
        return result, start

    async def deliver(self, channels: list[str], msg: Message,
                      on_attempt: Callable[[Attempt], None] | None = None, started: Started | None = None) -> Delivery:
        """Try each channel in order, each with retries, until one accepts the message.

        Args:
            channels: Apprise URLs of the recipient, preferred first.
            msg: the message.
            on_attempt: called after every attempt (for the notification log).
            started: the first attempt, when ``start`` already handed it to the first channel's thread.

        Returns:
            The delivery outcome; errors and channel names are masked.
        """
        out = Delivery(ok=False)
        if started is not None:
            return await self._deliver(channels, started.msg, on_attempt, out, started)
        if not channels:
            out.failure = Failed("no_channels", False, "recipient has no channels")
            out.error = out.failure.detail
            self._count_failure(out.failure)
            return out
        snapshot = await self._snapshot_file(msg.attach) if msg.attach else None
        msg = Message(msg.title, msg.body, None, msg.notify_type, str(snapshot) if snapshot else None)
        try:
            return await self._deliver(channels, msg, on_attempt, out)
        finally:
            if snapshot is not None:
                snapshot.unlink(missing_ok=True)

    async def _snapshot_file(self, ref: str) -> Path | None:
        """The checked snapshot in a temp file, or None (refused references are counted and logged)."""
        if self.evidence is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.evidence.to_temp_file, ref)
        except EvidenceRefused as exc:
            # The alert still goes out, without the picture; the reference itself is device text, so only
            # its refusal reason is logged.
            log.warning("alerting: snapshot not attached: %s", exc)
            return None
        except OSError as exc:
            log.warning("alerting: snapshot not attached: temp file: %s", exc.strerror)
            return None

    def _count_failure(self, failure: Failed) -> None:
        self.counters["failed_recoverable" if failure.recoverable else "failed_permanent"] += 1
        self.counters[f"failed_{failure.reason}"] += 1

    async def _deliver(self, channels: list[str], msg: Message, on_attempt: Callable[[Attempt], None] | None,
                       out: Delivery, started: Started | None = None) -> Delivery:
        handed: list[float] = started.handed if started is not None else []
        attempts = max(1, self.retry.attempts)
        for url in channels:
            masked = mask_url(url)
            delay = self.retry.backoff_s
            use, limit, n = msg, attempts, 0
            while n < limit:
                n += 1
                # Only the last try on the last channel goes without the attachment, once something failed, in case
                # the snapshot is the reason (a channel refusing its size must not stop the alert).
                if use.attach_file and out.attempts and n == limit and url == channels[-1]:
                    use = Message(msg.title, msg.body, None, msg.notify_type)
                if started is not None:  # the first attempt, already running
                    first, started = started, None
                    t0 = first.t0
                    result, began = await self._result(first.future, first.deadline, first.asked)
                else:
                    t0 = time.perf_counter()
                    result, began = await self._attempt(url, use, handed)
                att = Attempt(masked, n, began, (time.perf_counter() - t0) * 1000, result)
                out.attempts.append(att)
                if out.handed_at is None and handed:
                    out.handed_at = handed[0]
                if on_attempt is not None:
                    on_attempt(att)
                if isinstance(result, Delivered):
                    out.ok, out.channel, out.error, out.failure = True, masked, None, None
                    return out
                out.error, out.failure = result.error, result
                self._count_failure(result)
                if not result.recoverable:
                    if use.attach_file:
                        # A refusal may be the snapshot's (size, type): one more try without it, not a retry.
                        use = Message(msg.title, msg.body, None, msg.notify_type)
                        limit = max(limit, n + 1)
                        continue
                    break  # trying again cannot help; the recipient's next channel may
                if n < limit:
                    self.counters["retries"] += 1
                    await asyncio.sleep(min(delay, self.retry.backoff_max_s) * random.uniform(0.5, 1.0))
                    delay *= 2
        out.channel = mask_url(channels[-1])
        return out
