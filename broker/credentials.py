"""Broker passwords kept out of process arguments.

Every local user can read a process's command line (``ps``, ``/proc/PID/cmdline``), so an
agent started with ``--mqtt mqtt://user:password@host`` publishes its password. Programs take
``--mqtt mqtt://user@host`` instead and the password from ``VIGIL_MQTT_PASSWORD`` or from a
file (``--mqtt-password-file FILE`` or ``VIGIL_MQTT_PASSWORD_FILE``); ``BrokerAddress.parse``
fills it in when the URL names a user without a password. A password still given in the URL
on the command line works but earns a warning on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

MQTT_PASSWORD_ENV = "VIGIL_MQTT_PASSWORD"
"""Environment variable holding the broker password of a URL that names only the user."""
MQTT_PASSWORD_FILE_ENV = "VIGIL_MQTT_PASSWORD_FILE"
"""Environment variable naming a file whose first line is the broker password."""

ARGV_PASSWORD_WARNING = (
    "warning: the MQTT password is on the command line, where `ps` shows it to every local user; "
    f"give mqtt://user@host and the password in {MQTT_PASSWORD_ENV} or --mqtt-password-file"
)


def password_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password from ``VIGIL_MQTT_PASSWORD`` or the file ``VIGIL_MQTT_PASSWORD_FILE`` names.

    Raises:
        ValueError: the named file cannot be read (the message names the file, never a secret).
    """
    env = os.environ if environ is None else environ
    if MQTT_PASSWORD_ENV in env:
        return env[MQTT_PASSWORD_ENV]
    path = env.get(MQTT_PASSWORD_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except OSError as exc:
        raise ValueError(f"cannot read the MQTT password file {path}: {exc.strerror}") from None
    return first.rstrip("\r\n")


def url_has_password(url: str) -> bool:
    """Whether an MQTT URL carries a password."""
    try:
        return urllib.parse.urlsplit(url).password is not None
    except ValueError:
        return False


def command_line_mqtt_url(value: str) -> str:
    """argparse ``type`` of ``--mqtt``: the URL unchanged, with a warning when it carries a password."""
    if url_has_password(value):
        print(f"{os.path.basename(sys.argv[0]) or 'vigil'}: {ARGV_PASSWORD_WARNING}", file=sys.stderr)
    return value


class _PasswordFileAction(argparse.Action):
    """``--mqtt-password-file FILE``: names the file for every client of this process (and its children)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        path = str(values)
        if not os.access(path, os.R_OK):
            parser.error(f"{option_string}: cannot read {path}")
        # The path is not a secret; the environment is how BrokerAddress.parse finds it, wherever
        # the URL is parsed, so every agent gets the option without changing how it connects.
        os.environ[MQTT_PASSWORD_FILE_ENV] = path
        setattr(namespace, self.dest, path)


def add_mqtt_arguments(parser: argparse.ArgumentParser, *, default: str | None = None,
                       help: str = "broker URL (mqtt:// or mqtts://)") -> None:
    """Define ``--mqtt URL`` and ``--mqtt-password-file FILE`` on an agent's parser."""
    parser.add_argument("--mqtt", default=default, type=command_line_mqtt_url, metavar="URL",
                        help=f"{help}; name the user only (mqtt://user@host:port) and give the password in "
                             f"{MQTT_PASSWORD_ENV} or --mqtt-password-file")
    parser.add_argument("--mqtt-password-file", action=_PasswordFileAction, metavar="FILE", default=None,
                        help=f"file whose first line is the broker password (or set {MQTT_PASSWORD_FILE_ENV})")
