"""The JT/T 808 gateway's options and registry lookup (no sockets)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from broker.registry import DeviceRegistry, RegistryError
from edge.jt808.cli import build_parser, parse_listen, platform_from_args
from edge.jt808.registrations import MemoryRegistrations, SqliteRegistrations, TerminalIdentity
from edge.jt808.registry import RegistryTerminals


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:7808", ("0.0.0.0", 7808)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("9000", ("0.0.0.0", 9000)),
    ("[::1]:7808", ("::1", 7808)),
])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("bad", ["host:port", "1.2.3.4:70000"])
def test_bad_listen_addresses(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(bad)


def test_options_and_defaults() -> None:
    args = build_parser().parse_args(["--listen", "127.0.0.1:7900", "--mqtt", "mqtt://b:1883",
                                      "--accept-unknown-devices", "--telemetry-qos", "0"])
    assert args.listen == ("127.0.0.1", 7900) and args.accept_unknown_devices and args.telemetry_qos == 0
    assert build_parser().parse_args([]).listen == ("0.0.0.0", 7808)


REGISTRY = """
devices:
  - {id: "13800138000", kind: vehicle}
  - {id: "lift-1", kind: elevator}
"""


def test_registry_lookup_knows_vehicles_only_and_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    terminals = RegistryTerminals(str(path))
    assert terminals.lookup("13800138000") and not terminals.lookup("lift-1") and not terminals.lookup("1")
    path.write_text(REGISTRY + '  - {id: "13900000001", kind: vehicle}\n')
    os.utime(path, (1, 2_000_000_000))
    assert terminals.lookup("13900000001")


def test_registry_identity_must_match_and_is_required_to_register(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY + """  - id: "13900000002"
    kind: vehicle
    jt808: {manufacturer: VIGIL, model: SIM-808, terminal_id: T000002, plate_colour: 2, plate: 浙A00002}
""", encoding="utf-8")
    terminals = RegistryTerminals(str(path))
    good = TerminalIdentity("vigil", "SIM-808", "T000002\x00", 2, "浙A00002")
    assert terminals.check("13900000002", good) == []
    assert terminals.check("13900000002", TerminalIdentity("VIGIL", "SIM-808", "T999999", 1, "浙A00002")) == \
        ["terminal_id", "plate_colour"]
    # A vehicle without a jt808 identity on file cannot register at all.
    assert terminals.lookup("13800138000") and terminals.check("13800138000", good)


def test_only_vehicles_have_a_jt808_identity(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="jt808"):
        DeviceRegistry.from_data({"devices": [{"id": "lift-1", "kind": "elevator", "jt808": {
            "manufacturer": "A", "model": "B", "terminal_id": "C", "plate_colour": 1, "plate": "D"}}]})


def test_registrations_in_memory_with_a_warning_or_in_a_file(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        memory = platform_from_args(build_parser().parse_args(["--accept-unknown-devices"]))
    assert isinstance(memory.registrations, MemoryRegistrations) and "in memory only" in caplog.text
    on_disk = platform_from_args(build_parser().parse_args(["--data-dir", str(tmp_path)]))
    assert isinstance(on_disk.registrations, SqliteRegistrations)
    assert on_disk.registrations.path == tmp_path / "jt808-registrations.sqlite3"
