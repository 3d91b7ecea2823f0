"""Servers for the HTTP security tests: a notification receiver that keeps attachments, a camera agent
serving evidence, an internal service that must never be reached, and InfluxDB 1.6 with auth enabled."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from storage.localservers import InfluxdProcess

# A minimal but well-formed JPEG (SOI, APP0/JFIF, ..., EOI) and PNG signature + IHDR.
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb004300") + bytes(64) + bytes.fromhex("ffd9")
PNG = b"\x89PNG\r\n\x1a\n" + bytes.fromhex("0000000d49484452000000010000000108060000001f15c489") + bytes(16)
SECRET = "VIGIL_DB_PASSWORD=hunter2-do-not-leak"


@dataclass
class Server:
    """An aiohttp app on a free loopback port."""

    app: web.Application
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> Server:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Receiver:
    """Takes Apprise ``json://`` posts and keeps them whole, attachments decoded."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    server: Server | None = None

    async def _post(self, request: web.Request) -> web.Response:
        self.posts.append(json.loads(await request.read()))
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._post)
        self.server = await Server(app).start()
        return self

    def url(self, path: str = "/duty") -> str:
        assert self.server is not None
        return f"json://127.0.0.1:{self.server.port}{path}"

    def attachments(self, post: dict[str, Any]) -> list[bytes]:
        return [base64.b64decode(a["base64"]) for a in post.get("attachments") or []]

    def everything(self) -> bytes:
        """Every byte that reached the receiver (bodies and decoded attachments)."""
        out = [json.dumps(p, ensure_ascii=False).encode() for p in self.posts]
        out += [a for p in self.posts for a in self.attachments(p)]
        return b"\n".join(out)


@dataclass
class HitCounter:
    """An HTTP service that records every request (an internal admin endpoint, or a camera agent)."""

    redirect_to: str = "http://127.0.0.1:9/"
    hits: list[str] = field(default_factory=list)
    server: Server | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path_qs)
        if request.path == "/snap/slow.jpg":  # a camera agent that hangs mid-answer
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await resp.prepare(request)
            await resp.write(JPEG[:10])
            await asyncio.sleep(2)
            return resp
        make = ROUTES.get(request.path)
        if make is not None:
            return make(self)
        return web.Response(body=SECRET.encode(), content_type="text/plain")

    async def start(self) -> HitCounter:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.server = await Server(app).start()
        return self

    @property
    def origin(self) -> str:
        assert self.server is not None
        return self.server.origin


def _redirect(hc: HitCounter) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": hc.redirect_to})


ROUTES: dict[str, Any] = {
    "/snap/ok.jpg": lambda hc: web.Response(body=JPEG, content_type="image/jpeg"),
    "/snap/ok.png": lambda hc: web.Response(body=PNG, content_type="image/png"),
    # claims to be a JPEG but carries text: the magic bytes give it away
    "/snap/fake.jpg": lambda hc: web.Response(body=SECRET.encode(), content_type="image/jpeg"),
    "/snap/page.html": lambda hc: web.Response(body=b"<html>" + SECRET.encode(), content_type="text/html"),
    "/snap/huge.jpg": lambda hc: web.Response(body=JPEG[:-2] + bytes(3 * 1024 * 1024) + b"\xff\xd9",
                                              content_type="image/jpeg"),
    "/snap/redirect.jpg": _redirect,
}


# ---------------------------------------------------------------------- InfluxDB 1.6 with authentication

ADMIN = ("vigil-admin", "admin-pw-7f3a9c1e")
WRITER = ("vigil-writer", "writer-pw-51b2d8aa")
READER = ("vigil-reader", "reader-pw-0c94e7f1")


class AuthInfluxd(InfluxdProcess):
    """``influxd`` with ``auth-enabled = true`` (a separate class so the shared fixture stays open)."""

    def config_text(self) -> str:
        return super().config_text().replace("[http]\n", "[http]\n  auth-enabled = true\n", 1)

    def ready(self) -> bool:
        # /ping answers without credentials even with auth on.
        return self._get_status("/ping") == 204

    def admin_query(self, q: str, user: tuple[str, str] | None = ADMIN) -> dict[str, Any]:
        """A POST /query as ``user`` (None: anonymous); returns the JSON document, errors included."""
        body = urllib.parse.urlencode({"q": q}).encode()
        auth = "?" + urllib.parse.urlencode({"u": user[0], "p": user[1]}) if user is not None else ""
        try:
            with urllib.request.urlopen(f"{self.url}/query{auth}", data=body, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return {"http_status": exc.code, "error": exc.read().decode(errors="replace")}

    def setup_users(self, database: str) -> None:
        """The first admin (allowed anonymously once), the database, a writer and a read-only reader."""
        self.admin_query(f"CREATE USER \"{ADMIN[0]}\" WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES", user=None)
        for q in (f'CREATE DATABASE "{database}"',
                  f"CREATE USER \"{WRITER[0]}\" WITH PASSWORD '{WRITER[1]}'",
                  f'GRANT ALL ON "{database}" TO "{WRITER[0]}"',
                  f"CREATE USER \"{READER[0]}\" WITH PASSWORD '{READER[1]}'",
                  f'GRANT READ ON "{database}" TO "{READER[0]}"'):
            doc = self.admin_query(q)
            assert "error" not in json.dumps(doc), (q, doc)

    def write(self, database: str, lines: str, user: tuple[str, str] = WRITER) -> None:
        params = urllib.parse.urlencode({"db": database, "u": user[0], "p": user[1], "precision": "ms"})
        req = urllib.request.Request(f"{self.url}/write?{params}", data=lines.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204

    def databases(self) -> set[str]:
        doc = self.admin_query("SHOW DATABASES")
        series = doc["results"][0].get("series", [])
        return {v[0] for s in series for v in s.get("values", [])}


def tmp_secret_file(folder: Path) -> Path:
    """A secrets file outside the evidence store, as a deployment's env file would be."""
    path = folder / "secrets.env"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path
