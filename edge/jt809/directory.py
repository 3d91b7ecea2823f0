"""Who may connect and which vehicles exist: lower platforms (gateway file) and plates (device registry).

Lower platforms are listed in the gateway's platforms file (``--platforms FILE``)::

    platforms:
      - access_code: 20261203        # MSG_GNSSCENTERID
        name: 省平台
        user_id: 1001
        password_env: JT809_PROVINCE_PASSWORD   # or password: "...", at most 8 bytes
        addresses: [10.1.2.3]         # main link source addresses allowed (empty: any)
        keys: {m1: 10000000, ia1: 20000000, ic1: 30000000}   # the simple cipher, if agreed
        encrypt_replies: false
        sublink: true                 # open the sub link back to the address the platform gives
        sublink_hosts: []             # besides the main link's own source address
        vehicle_scope: any            # or "labelled": only vehicles whose registry label
                                      # jt809_platforms lists this access code

Vehicles are the registry's (``broker.registry``) devices of kind ``vehicle``, found by plate and
plate colour: their ``jt808`` identity's ``plate`` / ``plate_colour``, else their
``attributes.plate`` / ``attributes.plate_colour``. A plate the registry does not list is never
turned into a device id. A vehicle's ``labels.jt809_platforms`` (comma-separated access codes)
says which lower platforms may speak for it when a platform's ``vehicle_scope`` is ``labelled``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import yaml

from broker.contracts import Kind
from edge.errors import EdgeError
from edge.jt809.codec import Jt809Keys

log = logging.getLogger("edge.jt809.gateway")


class KeysSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """M1, IA1, IC1 of the simple cipher."""

    m1: int
    ia1: int
    ic1: int


class PlatformSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One lower platform as the platforms file describes it."""

    access_code: int
    user_id: int
    password: str | None = None
    password_env: str | None = None
    name: str = ""
    addresses: list[str] = []
    keys: KeysSpec | None = None
    encrypt_replies: bool = False
    sublink: bool = True
    sublink_hosts: list[str] = []
    vehicle_scope: Literal["any", "labelled"] = "any"


class PlatformsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The platforms file's top level."""

    platforms: list[PlatformSpec] = []


class DirectoryError(EdgeError, ValueError):
    """The platforms file is invalid; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class LowerPlatform:
    """A lower platform allowed to log in."""

    access_code: int
    user_id: int
    password: str = field(repr=False)
    name: str = ""
    addresses: frozenset[str] = frozenset()
    keys: Jt809Keys | None = None
    encrypt_replies: bool = False
    sublink: bool = True
    sublink_hosts: frozenset[str] = frozenset()
    labelled_vehicles_only: bool = False
    """Only vehicles whose registry label ``jt809_platforms`` names this platform."""

    @property
    def label(self) -> str:
        """Name for logs and statuses."""
        return self.name or str(self.access_code)


def load_platforms(path: str | Path) -> dict[int, LowerPlatform]:
    """Read and validate a platforms file.

    Raises:
        DirectoryError: naming the file and the key.
    """
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        parsed = msgspec.convert(raw, PlatformsFile)
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise DirectoryError(f"{path}: {exc}") from None
    out: dict[int, LowerPlatform] = {}
    for i, spec in enumerate(parsed.platforms):
        where = f"{path}: platforms[{i}]"
        if spec.access_code in out:
            raise DirectoryError(f"{where}.access_code: duplicate {spec.access_code}")
        if (spec.password is None) == (spec.password_env is None):
            raise DirectoryError(f"{where}: give exactly one of password, password_env")
        password = spec.password if spec.password is not None else os.environ.get(spec.password_env or "")
        if password is None:
            raise DirectoryError(f"{where}.password_env: environment variable {spec.password_env} is not set")
        try:
            raw_password = password.encode("latin-1")
        except UnicodeEncodeError:
            raise DirectoryError(f"{where}.password: only single-byte characters fit the 8-byte field") from None
        if len(raw_password) > 8:
            raise DirectoryError(f"{where}.password: longer than the 8 bytes JT/T 809 carries")
        for name, value in (("access_code", spec.access_code), ("user_id", spec.user_id)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise DirectoryError(f"{where}.{name}: {value} is not a uint32")
        keys = Jt809Keys(spec.keys.m1, spec.keys.ia1, spec.keys.ic1) if spec.keys is not None else None
        if spec.encrypt_replies and keys is None:
            raise DirectoryError(f"{where}.encrypt_replies: needs keys")
        out[spec.access_code] = LowerPlatform(spec.access_code, spec.user_id, password, spec.name,
                                              frozenset(spec.addresses), keys, spec.encrypt_replies, spec.sublink,
                                              frozenset(spec.sublink_hosts), spec.vehicle_scope == "labelled")
    return out


class PlatformDirectory(Protocol):
    """Lower platforms by access code."""

    def platform(self, access_code: int) -> LowerPlatform | None:
        """The platform with this access code, or None."""
        ...


class VehicleDirectory(Protocol):
    """Registry vehicles by (plate, colour)."""

    def vehicle(self, plate: str, colour: int) -> str | None:
        """The device id of the vehicle with this plate and colour, or None."""
        ...

    def platforms_of(self, device_id: str) -> frozenset[int]:
        """Access codes the registry lets speak for this vehicle (its ``jt809_platforms`` label)."""
        ...


def plate_key(plate: str, colour: int) -> tuple[str, int]:
    """How plates are compared: blanks, NUL padding and letter case ignored."""
    return "".join(plate.replace("\x00", "").split()).upper(), colour


@dataclass(frozen=True, slots=True)
class StaticPlatforms:
    """A fixed set of lower platforms (tests, embedding)."""

    platforms: Mapping[int, LowerPlatform]

    def platform(self, access_code: int) -> LowerPlatform | None:
        """The platform with this access code, or None."""
        return self.platforms.get(access_code)


@dataclass(frozen=True, slots=True)
class StaticVehicles:
    """A fixed plate -> device id map (tests, embedding); keys as ``plate_key`` makes them."""

    vehicles: Mapping[tuple[str, int], str]
    scopes: Mapping[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Mapping[tuple[str, int], str],
           scopes: Mapping[str, frozenset[int]] | None = None) -> StaticVehicles:
        """Build from (plate, colour) -> id, normalising the plates."""
        return cls({plate_key(p, c): v for (p, c), v in entries.items()}, scopes or {})

    def vehicle(self, plate: str, colour: int) -> str | None:
        """The device id, or None."""
        return self.vehicles.get(plate_key(plate, colour))

    def platforms_of(self, device_id: str) -> frozenset[int]:
        """Access codes allowed for the vehicle."""
        return self.scopes.get(device_id, frozenset())


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@dataclass(slots=True)
class FilePlatforms:
    """Lower platforms from the platforms file, re-read when it changes (a broken edit keeps the last good list)."""

    path: str
    _cache: tuple[float, dict[int, LowerPlatform]] = (-1.0, {})

    def platform(self, access_code: int) -> LowerPlatform | None:
        """The platform with this access code, or None."""
        mtime = _mtime(self.path)
        if mtime != self._cache[0]:
            try:
                self._cache = (mtime, load_platforms(self.path))
            except DirectoryError as exc:
                log.error("jt809: cannot load platforms: %s; keeping the previous list", exc)
                self._cache = (mtime, self._cache[1])
        return self._cache[1].get(access_code)


@dataclass(slots=True)
class RegistryVehicles:
    """Vehicles of the device registry file by plate, re-read when the file changes."""

    path: str
    _cache: tuple[float, dict[tuple[str, int], str], dict[str, frozenset[int]]] = (-1.0, {}, {})

    def _fresh(self) -> tuple[float, dict[tuple[str, int], str], dict[str, frozenset[int]]]:
        mtime = _mtime(self.path)
        if mtime != self._cache[0]:
            self._cache = (mtime, *self._load(self._cache[1], self._cache[2]))
        return self._cache

    def vehicle(self, plate: str, colour: int) -> str | None:
        """The device id of the registry vehicle with this plate and colour, or None."""
        return self._fresh()[1].get(plate_key(plate, colour))

    def platforms_of(self, device_id: str) -> frozenset[int]:
        """Access codes in the vehicle's ``jt809_platforms`` label."""
        return self._fresh()[2].get(device_id, frozenset())

    def _load(self, previous: dict[tuple[str, int], str], scopes: dict[str, frozenset[int]]
              ) -> tuple[dict[tuple[str, int], str], dict[str, frozenset[int]]]:
        from broker.registry import DeviceRegistry, RegistryError

        try:
            reg = DeviceRegistry.load(self.path)
        except RegistryError as exc:
            log.error("jt809: cannot load registry: %s; keeping the previous vehicle list", exc)
            return previous, scopes
        out: dict[tuple[str, int], str] = {}
        allowed: dict[str, frozenset[int]] = {}
        for dev in reg.devices.values():
            if dev.kind is not Kind.VEHICLE:
                continue
            plate: object
            colour: object
            if dev.jt808 is not None:
                plate, colour = dev.jt808.plate, dev.jt808.plate_colour
            else:
                plate, colour = dev.attributes.get("plate"), dev.attributes.get("plate_colour")
            if not isinstance(plate, str) or not isinstance(colour, int) or isinstance(colour, bool):
                continue
            key = plate_key(plate, colour)
            if key in out:
                log.error("jt809: registry vehicles %s and %s share plate %s colour %d; %s is ignored",
                          out[key], dev.id, plate, colour, dev.id)
                continue
            out[key] = dev.id
            codes = [c.strip() for c in dev.labels.get("jt809_platforms", "").split(",") if c.strip()]
            allowed[dev.id] = frozenset(int(c) for c in codes if c.isdigit())
        return out, allowed
