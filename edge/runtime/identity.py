"""Who an edge agent is on the broker: client id, credentials and where its status lives."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from broker.contracts import DEVICE_ID_PATTERN, TOPIC_ROOT, Channel, Kind, device_topic
from edge.errors import EdgeError

_ID_RE = re.compile(DEVICE_ID_PATTERN)


class IdentityError(EdgeError, ValueError):
    """An identity or credential setting is invalid (the message never contains a secret)."""


def gateway_status_topic(name: str) -> str:
    """Retained status topic of a gateway that hosts many devices: ``vigil/v1/gateways/{name}/status``."""
    return f"{TOPIC_ROOT}/gateways/{name}/status"


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    """An edge agent's broker identity: its client id, user, password and status topic."""

    client_id: str
    status_topic: str
    agent: str
    """Software name reported in ``DeviceStatus.agent``, e.g. ``vigil-edge-elevator``."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def for_device(cls, kind: Kind | str, device_id: str, *, agent: str, username: str | None = None,
                   password: str | None = None) -> EdgeIdentity:
        """Identity of an agent speaking for one device (the broker user defaults to the device id).

        Raises:
            IdentityError: the device id does not match the contract's pattern.
        """
        _check_id(device_id, "device id")
        kind = Kind(kind)
        return cls(
            client_id=f"vigil-edge-{kind}-{device_id}",
            status_topic=device_topic(kind, device_id, Channel.STATUS),
            agent=agent, username=username if username is not None else device_id, password=password,
        )

    @classmethod
    def for_gateway(cls, name: str, *, agent: str, username: str | None = None,
                    password: str | None = None) -> EdgeIdentity:
        """Identity of a gateway hosting many devices (broker user defaults to the gateway name).

        Raises:
            IdentityError: the name does not match the device id pattern.
        """
        _check_id(name, "gateway name")
        return cls(client_id=f"vigil-gw-{name}", status_topic=gateway_status_topic(name), agent=agent,
                   username=username if username is not None else name, password=password)

    def broker_url(self, url: str) -> str:
        """``url`` with this identity's credentials, unless the URL already carries a user.

        Anonymous brokers (tests, the demo) ignore the user name, so it is only added when a
        password is known.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.username or self.password is None or self.username is None:
            return url
        user = urllib.parse.quote(self.username, safe="")
        secret = urllib.parse.quote(self.password, safe="")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:{secret}@{host}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_id(value: str, what: str) -> None:
    if not _ID_RE.match(value):
        raise IdentityError(f"invalid {what} {value[:64]!r}: must match {DEVICE_ID_PATTERN}")


def read_password(*, password_env: str | None = None, password_file: Path | None = None) -> str | None:
    """The agent's broker password from an environment variable or a file (first line), or None.

    Raises:
        IdentityError: the variable is unset or the file cannot be read.
    """
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise IdentityError(f"environment variable {password_env} is not set")
        return value
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise IdentityError(f"cannot read password file {password_file}: {exc.strerror}") from None
        lines = text.splitlines()
        return lines[0].strip() if lines else ""
    return None
