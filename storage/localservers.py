"""Local InfluxDB 1.x and VictoriaMetrics servers run as child processes (tests, demo, benchmarks).

Each keeps all its files in one folder, listens on loopback ports chosen when it is created,
and can be stopped and started again on the same ports with its data kept (outage tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from broker.mosquitto import free_port


class LocalServer:
    """A server binary run as a child process with its log in its data folder."""

    binary_name = ""
    log_name = "server.log"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base HTTP URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def binary(self) -> str:
        """Path of the server executable.

        Raises:
            FileNotFoundError: it is not installed.
        """
        found = shutil.which(self.binary_name) or (
            f"/usr/bin/{self.binary_name}" if os.path.exists(f"/usr/bin/{self.binary_name}") else None)
        if found is None:
            raise FileNotFoundError(f"{self.binary_name} is not installed")
        return found

    def command(self) -> list[str]:
        """The command line (after writing any configuration)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers its health check."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Environment variables the server runs with, beside this process's own."""
        return {}

    def start(self, timeout: float = 30.0) -> None:
        """Start the server; returns once it answers its health check.

        Raises:
            FileNotFoundError: the binary is not installed.
            RuntimeError: it exited or did not become ready (the log tail is in the message).
        """
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log = open(self.data_dir / self.log_name, "ab")  # noqa: SIM115 - kept open for the child's life
        extra = self.environment()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **extra} if extra else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self._close_log()
                self.proc = None
                raise RuntimeError(f"{self.binary_name} exited during start-up: {tail}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary_name} not ready after {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        self._close_log()

    def kill(self) -> None:
        """Kill the server without letting it shut down cleanly (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        path = self.data_dir / self.log_name
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=1.0) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InfluxdProcess(LocalServer):
    """Debian's ``influxd`` 1.6 with a generated configuration (no reporting, loopback ports only)."""

    binary_name = "influxd"
    log_name = "influxd.log"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 rpc_port: int | None = None) -> None:
        super().__init__(data_dir, port, host)
        self.rpc_port = rpc_port or free_port()

    def config_text(self) -> str:
        """``influxdb.conf``: meta, data and WAL in the data folder; HTTP and RPC on loopback."""
        d = self.data_dir
        return "\n".join([
            "# Generated by Vigil.",
            "reporting-disabled = true",
            f'bind-address = "{self.host}:{self.rpc_port}"',
            "[meta]",
            f'  dir = "{d}/meta"',
            "  logging-enabled = false",
            "[data]",
            f'  dir = "{d}/data"',
            f'  wal-dir = "{d}/wal"',
            "  query-log-enabled = false",
            "[http]",
            "  enabled = true",
            f'  bind-address = "{self.host}:{self.port}"',
            "  log-enabled = false",
            "  pprof-enabled = false",
            "[monitor]",
            "  store-enabled = false",
            "[subscriber]",
            "  enabled = false",
            "[continuous_queries]",
            "  enabled = false",
            "[logging]",
            '  level = "warn"',
            "  suppress-logo = true",
            "",
        ])

    GOGC = "200"
    """Go's garbage collector target for influxd: collect when the heap grew 200% (Go's default is 100%).
    Writes allocate per point, and at 20,000 points/s on this 2-core box halving the collections cut
    influxd's CPU per point by about a fifth (docs/benchmarks.md, issue 15) for a larger heap between
    collections (live heap x 3 instead of x 2). An environment ``GOGC`` set by the caller wins."""

    def environment(self) -> dict[str, str]:
        """``GOGC`` (see the attribute), unless the caller's environment sets it."""
        return {} if "GOGC" in os.environ else {"GOGC": self.GOGC}

    def command(self) -> list[str]:
        """Write ``influxdb.conf`` and return the command."""
        conf = self.data_dir / "influxdb.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        return [self.binary(), "-config", str(conf)]

    def ready(self) -> bool:
        """``/ping`` answers 204."""
        return self._get_status("/ping") == 204

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (idempotent).

        Raises:
            RuntimeError: the server refused.
        """
        body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/query", data=body, timeout=10) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"CREATE DATABASE {name}: HTTP {exc.code}: {exc.read()[:300]!r}") from None


class VictoriaMetricsProcess(LocalServer):
    """Debian's ``victoria-metrics`` single node: takes line protocol on ``/write`` and ``/api/v2/write``."""

    binary_name = "victoria-metrics"
    log_name = "victoria-metrics.log"

    def command(self) -> list[str]:
        """The command line (no config file)."""
        return [
            self.binary(), f"-storageDataPath={self.data_dir / 'data'}", f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y", "-loggerLevel=WARN", "-search.latencyOffset=0s",
        ]

    def ready(self) -> bool:
        """``/health`` answers 200."""
        return self._get_status("/health") == 200

    def force_flush(self) -> None:
        """Make recently written samples searchable now."""
        with contextlib.suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as resp:
            resp.read()
