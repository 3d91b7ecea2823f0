"""Evidence snapshots named by device messages: decide whether a reference may be used, and read it safely.

A camera event's ``snapshot_url`` is written by a device account, so it is untrusted text. Vigil
uses it only when it names a file inside the evidence store (the camera agents' ``evidence.dir``;
the resolved path, symlinks followed, must stay inside the store) or a URL on one of the
configured evidence hosts (scheme, host and port equal to an allow-listed origin). The bytes are
read here, with size, time and content-type limits, and must start with JPEG or PNG magic bytes.
Apprise and the console only ever see what this module read: never the device's string.
"""

from __future__ import annotations

import http.client
import logging
import os
import stat
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec

from alerting.errors import AlertingError

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TYPES = {"image/jpeg": (JPEG_MAGIC, ".jpg"), "image/png": (PNG_MAGIC, ".png")}
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REF_CHARS = 2048


class EvidenceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where evidence snapshots may come from (``alerting.evidence``)."""

    dir: str | None = None
    """The evidence store (the camera agents' ``evidence.dir``): ``file://`` references must resolve inside it."""
    hosts: list[str] = []
    """Origins of camera agents serving snapshots (``evidence.base_url``), e.g. ``http://cam-agent-1:8090``."""
    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 5.0
    """Whole fetch of one snapshot from an evidence host (connect, headers and body)."""

    def __post_init__(self) -> None:
        if not 1024 <= self.max_bytes <= 64 * 1024 * 1024:
            raise ValueError("evidence.max_bytes must be 1024 .. 67108864")
        if not 0 < self.timeout_s <= 60:
            raise ValueError("evidence.timeout_s must be > 0 and <= 60")
        for i, h in enumerate(self.hosts):
            if origin_of(h) is None:
                raise ValueError(f"evidence.hosts[{i}]: {h!r} must be http(s)://host[:port] without user or query")


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL with an explicit or default port; None if unusable."""
    if not url or len(url) > MAX_REF_CHARS or any(c in url for c in " \\\t\r\n\0"):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


class EvidenceRefused(AlertingError):
    """A snapshot reference was not used; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Checked image bytes and their content type."""

    data: bytes = field(repr=False)
    content_type: str

    @property
    def suffix(self) -> str:
        """File name suffix for the content type."""
        return _TYPES[self.content_type][1]


def sniff(data: bytes) -> str | None:
    """The image type given by the magic bytes (JPEG or PNG), else None."""
    for ctype, (magic, _) in _TYPES.items():
        if data.startswith(magic):
            return ctype
    return None


class EvidencePolicy:
    """Decides and reads evidence references; counts what it refused, by reason."""

    def __init__(self, config: EvidenceConfig) -> None:
        self.config = config
        self.root = Path(config.dir).resolve() if config.dir else None
        self.origins = {o for h in config.hosts if (o := origin_of(h)) is not None}
        self.refused: Counter[str] = Counter()
        self.fetched = 0

    # ------------------------------------------------------------------ deciding

    def classify(self, ref: str) -> tuple[str, str]:
        """``("store", path)`` or ``("host", url)`` for a usable reference.

        Raises:
            EvidenceRefused: the reference is neither inside the store nor on an evidence host.
        """
        if not isinstance(ref, str) or not ref or len(ref) > MAX_REF_CHARS or "\0" in ref:
            raise EvidenceRefused("malformed")
        scheme = urlsplit(ref).scheme.lower() if "://" in ref else ""
        if scheme in _DEFAULT_PORTS:
            origin = origin_of(ref)
            if origin is None:
                raise EvidenceRefused("malformed")
            if origin not in self.origins:
                raise EvidenceRefused("host_not_allowed", f"{origin[0]}://{origin[1]}:{origin[2]}")
            return "host", ref
        if scheme == "file":
            parts = urlsplit(ref)
            if parts.netloc not in ("", "localhost"):
                raise EvidenceRefused("malformed")
            raw = unquote(parts.path)
        elif scheme:
            raise EvidenceRefused("scheme_not_allowed", scheme[:16])
        else:
            raw = ref
        return "store", str(self._store_path(raw))

    def _store_path(self, raw: str) -> Path:
        if self.root is None:
            raise EvidenceRefused("no_store")
        p = Path(raw)
        if not p.is_absolute():
            p = self.root / p
        try:
            # resolve() follows every symlink, so a link inside the store pointing out of it is caught here.
            resolved = p.resolve(strict=True)
        except (OSError, RuntimeError):
            raise EvidenceRefused("not_found") from None
        if not resolved.is_relative_to(self.root):
            raise EvidenceRefused("outside_store")
        if resolved.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            raise EvidenceRefused("not_image")
        return resolved

    def allowed(self, ref: str | None) -> bool:
        """Whether a reference would be used (without reading it)."""
        if not ref:
            return False
        try:
            self.classify(ref)
        except EvidenceRefused:
            return False
        return True

    # ------------------------------------------------------------------ reading (blocking: call from a thread)

    def read(self, ref: str) -> Snapshot:
        """The checked image a reference names (blocking).

        Raises:
            EvidenceRefused: refused or unreadable; counted in ``refused`` by reason.
        """
        try:
            kind, target = self.classify(ref)
            snap = self._read_file(Path(target)) if kind == "store" else self._fetch(target)
        except EvidenceRefused as exc:
            self.refused[exc.reason] += 1
            raise
        self.fetched += 1
        return snap

    def _read_file(self, path: Path) -> Snapshot:
        try:
            # O_NOFOLLOW: the last component cannot have been swapped for a symlink since it was resolved.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise EvidenceRefused("not_found") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise EvidenceRefused("not_file")
            if st.st_size > self.config.max_bytes:
                raise EvidenceRefused("too_large")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(self.config.max_bytes + 1)
        finally:
            os.close(fd)
        return self._checked(data, None)

    def _fetch(self, url: str) -> Snapshot:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
        deadline = time.monotonic() + self.config.timeout_s
        # http.client directly: no redirects (they could point anywhere), no proxies from the environment.
        conn_cls = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
        conn = conn_cls(host, port, timeout=self.config.timeout_s)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"Accept": "image/jpeg, image/png", "User-Agent": "vigil-alerting"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise EvidenceRefused("http_status", str(resp.status))
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in _TYPES:
                raise EvidenceRefused("content_type", ctype[:40])
            length = resp.getheader("Content-Length")
            if length is not None and (not length.strip().isdigit() or int(length) > self.config.max_bytes):
                raise EvidenceRefused("too_large")
            chunks: list[bytes] = []
            size = 0
            while size <= self.config.max_bytes:
                if time.monotonic() > deadline:
                    raise EvidenceRefused("timeout")
                chunk = resp.read(min(65536, self.config.max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return self._checked(b"".join(chunks), ctype)
        except EvidenceRefused:
            raise
        except TimeoutError:
            raise EvidenceRefused("timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EvidenceRefused("unreachable", type(exc).__name__) from None
        finally:
            conn.close()

    def _checked(self, data: bytes, declared: str | None) -> Snapshot:
        if len(data) > self.config.max_bytes:
            raise EvidenceRefused("too_large")
        found = sniff(data)
        if found is None or (declared is not None and declared != found):
            raise EvidenceRefused("not_image")
        return Snapshot(data, found)

    def to_temp_file(self, ref: str) -> Path:
        """Read a reference and write the checked image to a new private temp file (caller deletes it).

        Raises:
            EvidenceRefused: as ``read``.
        """
        snap = self.read(ref)
        fd, name = tempfile.mkstemp(prefix="vigil-snapshot-", suffix=snap.suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(snap.data)
        return Path(name)
