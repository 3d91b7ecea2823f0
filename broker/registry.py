"""The device registry: sites, devices, service accounts and their credentials.

One YAML file describes who may connect to the broker and as what. The broker's password
file and ACL are generated from it (``broker.mosquitto``), gateways check field devices
against it, and the rules engine reads per-device attributes (a plant's permitted limit, a
road's speed limit) from it. Secrets may be given in clear (development), as a Mosquitto
``$7$`` hash, or by naming an environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from broker.contracts import DEVICE_ID_PATTERN, Kind
from broker.errors import BrokerError

Role = Literal["platform", "gateway", "observer", "operator"]


class Secret(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A password: exactly one of ``password``, ``password_hash`` or ``password_env``."""

    password: str | None = None
    password_hash: str | None = None
    password_env: str | None = None


class Site(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A supervised place: a plant, a residential tower, a school, a depot."""

    id: str
    name: str = ""
    industry: str = ""
    unit: str = ""
    """The responsible department (alerts are dispatched to it)."""
    lat: float | None = None
    lon: float | None = None
    timezone: str = "Asia/Shanghai"
    attributes: dict[str, Any] = {}


class Jt808Terminal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A vehicle's JT/T 808 terminal as its registration (0x0100) must describe it."""

    manufacturer: str
    model: str
    terminal_id: str
    plate_colour: int
    """JT/T 415 plate colour code (1 blue, 2 yellow, ...; 0 when ``plate`` holds the VIN)."""
    plate: str


class Device(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A registered device and its broker identity (username = device id)."""

    id: str
    kind: Kind
    site: str | None = None
    name: str = ""
    password: str | None = None
    password_hash: str | None = None
    password_env: str | None = None
    labels: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    """Per-device parameters, e.g. ``so2_limit`` for a stack or ``speed_limit_kmh`` for a truck."""
    jt808: Jt808Terminal | None = None
    """Vehicles: the terminal identity the JT/T 808 gateway checks at registration (required to register)."""
    hj212_password: str | None = None
    """Emission loggers: the HJ 212 ``PW`` (sent in clear by the logger; never the MQTT password)."""
    hj212_password_env: str | None = None


class ServiceAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A broker account for a platform service, a protocol gateway or a control-room observer."""

    name: str
    role: Role
    kinds: list[Kind] = []
    """For gateways: the device kinds they may publish for (all when empty)."""
    password: str | None = None
    password_hash: str | None = None
    password_env: str | None = None


class RegistryFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The registry file's top level."""

    sites: list[Site] = []
    devices: list[Device] = []
    services: list[ServiceAccount] = []


class RegistryError(BrokerError, ValueError):
    """The registry file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class DeviceRegistry:
    """The loaded registry with lookups by id."""

    sites: dict[str, Site]
    devices: dict[str, Device]
    services: dict[str, ServiceAccount]
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> DeviceRegistry:
        """Load and validate a registry file.

        Raises:
            RegistryError: naming the file and the offending key.
        """
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RegistryError(f"{path}: {exc}") from None
        return cls.from_data(raw, str(path))

    @classmethod
    def from_data(cls, raw: Any, source: str = "<memory>") -> DeviceRegistry:
        """Build a registry from already-parsed YAML/JSON data.

        Raises:
            RegistryError: naming the source and the offending key.
        """
        try:
            parsed = msgspec.convert(raw, RegistryFile)
        except msgspec.ValidationError as exc:
            raise RegistryError(f"{source}: {exc}") from None
        return cls.build(parsed.sites, parsed.devices, parsed.services, source)

    @classmethod
    def build(cls, sites: Iterable[Site], devices: Iterable[Device], services: Iterable[ServiceAccount],
              source: str = "<memory>") -> DeviceRegistry:
        """Index and cross-check sites, devices and services.

        Raises:
            RegistryError: duplicate ids, bad ids, unknown sites or ambiguous secrets.
        """
        import re

        id_re = re.compile(DEVICE_ID_PATTERN)
        site_map: dict[str, Site] = {}
        for i, site in enumerate(sites):
            if site.id in site_map:
                raise RegistryError(f"{source}: sites[{i}].id: duplicate site {site.id!r}")
            site_map[site.id] = site
        device_map: dict[str, Device] = {}
        service_map: dict[str, ServiceAccount] = {}
        for i, svc in enumerate(services):
            where = f"{source}: services[{i}]"
            if svc.name in service_map:
                raise RegistryError(f"{where}.name: duplicate account {svc.name!r}")
            _check_secret(svc, where)
            service_map[svc.name] = svc
        for i, dev in enumerate(devices):
            where = f"{source}: devices[{i}]"
            if not id_re.match(dev.id):
                raise RegistryError(f"{where}.id: {dev.id!r} does not match {DEVICE_ID_PATTERN}")
            if dev.id in device_map or dev.id in service_map:
                raise RegistryError(f"{where}.id: duplicate id {dev.id!r}")
            if dev.site is not None and dev.site not in site_map:
                raise RegistryError(f"{where}.site: unknown site {dev.site!r}")
            if dev.jt808 is not None and dev.kind is not Kind.VEHICLE:
                raise RegistryError(f"{where}.jt808: only vehicles have a JT/T 808 terminal")
            if dev.hj212_password is not None and dev.hj212_password_env is not None:
                raise RegistryError(f"{where}: give only one of hj212_password, hj212_password_env")
            if (dev.hj212_password is not None or dev.hj212_password_env is not None) and dev.kind is not Kind.EMISSION:
                raise RegistryError(f"{where}.hj212_password: only emission devices have an HJ 212 password")
            device_map[dev.id] = dev
        return cls(site_map, device_map, service_map, source)

    def device(self, device_id: str) -> Device | None:
        """The device with this id, or None."""
        return self.devices.get(device_id)

    def site_of(self, device_id: str) -> Site | None:
        """The site a device belongs to, or None."""
        dev = self.devices.get(device_id)
        return self.sites.get(dev.site) if dev is not None and dev.site else None

    def attribute(self, device_id: str, name: str, default: Any = None) -> Any:
        """A per-device parameter, falling back to the device's site, then ``default``."""
        dev = self.devices.get(device_id)
        if dev is None:
            return default
        if name in dev.attributes:
            return dev.attributes[name]
        site = self.sites.get(dev.site) if dev.site else None
        if site is not None and name in site.attributes:
            return site.attributes[name]
        return default

    def hj212_password_of(self, device_id: str) -> str | None:
        """The HJ 212 logger password (``hj212_password`` or ``hj212_password_env``) of a device, if any."""
        dev = self.devices.get(device_id)
        if dev is None:
            return None
        if dev.hj212_password is not None:
            return dev.hj212_password
        return os.environ.get(dev.hj212_password_env) if dev.hj212_password_env is not None else None

    def password_of(self, account_id: str) -> str | None:
        """The clear-text password of a device or service, if the registry holds one."""
        acct: Device | ServiceAccount | None = self.devices.get(account_id) or self.services.get(account_id)
        if acct is None:
            return None
        return resolve_clear_password(acct)


def _check_secret(acct: Device | ServiceAccount, where: str) -> None:
    given = [k for k in ("password", "password_hash", "password_env") if getattr(acct, k) is not None]
    if len(given) > 1:
        raise RegistryError(f"{where}: give only one of password, password_hash, password_env (got {given})")
    if acct.password_hash is not None and not acct.password_hash.startswith(("$7$", "$6$")):
        raise RegistryError(f"{where}.password_hash: not a Mosquitto $7$ or $6$ hash")


def resolve_clear_password(acct: Device | ServiceAccount) -> str | None:
    """The clear password from ``password`` or ``password_env`` (None for hashes or missing env)."""
    if acct.password is not None:
        return acct.password
    if acct.password_env is not None:
        return os.environ.get(acct.password_env)
    return None
