"""A Vigil program run as a child process by a test, so it can be stopped cleanly or killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ChildProcess:
    """One child process writing its output to ``log_path``, in its own session (signals reach only it)."""

    stop_timeout_s: float = 10.0
    """How long ``stop`` waits after SIGTERM before it kills."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Start ``python args...`` from the repository with the repository on ``PYTHONPATH``."""
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=full_env, start_new_session=True)

    def launch_vigil(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Start the ``vigil`` program with ``args``."""
        self.launch(["-m", "vigil.cli", *args], env)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's output ('' before it wrote any)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
