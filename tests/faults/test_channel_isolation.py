"""A hung notification channel never holds up another: real Apprise json:// to a real HTTP server."""

from __future__ import annotations

import asyncio

from aiohttp import web

from alerting.config import Retry
from alerting.sender import AppriseSender, Message
from broker.mosquitto import free_port


async def test_a_hung_channel_holds_no_sender_another_channel_needs() -> None:
    release = asyncio.Event()
    got: list[str] = []
    hung_calls = 0

    async def on_post(request: web.Request) -> web.Response:
        nonlocal hung_calls
        if request.path.startswith("/hung"):
            hung_calls += 1
            await release.wait()
        got.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", on_post)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sender = AppriseSender(Retry(attempts=1, backoff_s=0.05, backoff_max_s=0.1, timeout_s=3.0), threads=2)
    try:
        duty_url = f"json://127.0.0.1:{port}/duty"
        # Eight hung channels (more stuck calls than Apprise's own shared pool has threads), every thread
        # of each one stuck...
        hung_urls = [f"json://127.0.0.1:{port}/hung{n}" for n in range(8)]
        stuck = [asyncio.create_task(sender.deliver([hung_urls[i % 8]], Message(f"h{i}", "b"))) for i in range(40)]
        while hung_calls < 16:
            await asyncio.sleep(0.01)
        # ...then twenty critical alerts to a healthy channel: all delivered while the other still hangs.
        results = await asyncio.gather(*(sender.deliver([duty_url], Message(f"d{i}", "b")) for i in range(20)))
        assert all(r.ok for r in results) and got.count("/duty") == 20
        assert not release.is_set() and hung_calls == 16  # each hung channel's two threads, nothing more
        assert sum(lane.running for lane in sender._lanes.values()) == 16
        # The hung channel's messages fail by their deadline (counted from the request start), waiting included.
        outcomes = await asyncio.gather(*stuck)
        assert not any(o.ok for o in outcomes)
        assert {o.error for o in outcomes} <= {"timeout after 3 s", "channel busy: no free sender within 3 s",
                                               "apprise failure"}
    finally:
        release.set()
        sender.close()
        await runner.cleanup()
