"""The JT/T 809 gateway's options, directory files, and its fit to the runtime's TCP server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edge.jt809.cli import DEFAULT_PORT, build_parser, limits_from_args
from edge.jt809.codec import Jt809Keys
from edge.jt809.directory import DirectoryError, FilePlatforms, RegistryVehicles, load_platforms
from edge.jt809.session import Jt809Platform, Jt809Session
from edge.runtime import server as server_module
from simulators.jt809_platform import LowerPlatformSim, drive
from simulators.jt809_platform import main as sim_main


def test_runtime_server_uses_only_what_the_809_platform_and_session_have() -> None:
    """``GatewayServer`` runs JT/T 809 sessions (typed by its Protocols): fail loudly when it starts using more."""
    source = Path(server_module.__file__).read_text(encoding="utf-8")
    platform = Jt809Platform(FilePlatforms("/nonexistent"), RegistryVehicles("/nonexistent"))
    session = platform.new_session("1.2.3.4:5")
    for name in sorted(set(re.findall(r"\bplatform\.(\w+)", source))):
        assert hasattr(platform, name), f"GatewayServer uses platform.{name}; add it to Jt809Platform"
    for name in sorted(set(re.findall(r"\bsession\.(\w+)", source))):
        assert hasattr(session, name), f"GatewayServer uses session.{name}; add it to Jt809Session"
    assert isinstance(session, Jt809Session)
    for name in sorted(set(re.findall(r"\bplatform\.counters\.(\w+)", source))):
        assert hasattr(platform.counters, name), f"GatewayServer uses platform.counters.{name}"


def test_options() -> None:
    args = build_parser().parse_args(["--platforms", "p.yaml", "--registry", "r.yaml"])
    assert args.listen == ("0.0.0.0", DEFAULT_PORT) and args.telemetry_qos == 1 and args.data_dir is None
    limits = limits_from_args(args)
    assert limits.max_connections == 256 and limits.max_preauth_per_address == 8 and limits.auth_timeout_s == 30
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--registry", "r.yaml"])  # --platforms is required


def test_platforms_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.yaml"
    monkeypatch.setenv("JT809_PW", "envpw")
    path.write_text(yaml.safe_dump({"platforms": [
        {"access_code": 1, "user_id": 2, "password": "pw", "keys": {"m1": 1, "ia1": 2, "ic1": 3},
         "encrypt_replies": True, "addresses": ["10.0.0.1"]},
        {"access_code": 2, "user_id": 3, "password_env": "JT809_PW", "sublink": False,
         "vehicle_scope": "labelled"}]}), encoding="utf-8")
    platforms = load_platforms(path)
    assert platforms[1].keys == Jt809Keys(1, 2, 3) and platforms[1].addresses == frozenset({"10.0.0.1"})
    assert platforms[2].password == "envpw" and not platforms[2].sublink and platforms[2].labelled_vehicles_only
    assert not platforms[1].labelled_vehicles_only
    assert "envpw" not in repr(platforms[2]) and "pw" not in repr(platforms[1]).replace("password", "")
    assert FilePlatforms(str(path)).platform(2) == platforms[2]
    for bad, key in (({"platforms": [{"access_code": 1, "user_id": 1}]}, "exactly one of password"),
                     ({"platforms": [{"access_code": 1, "user_id": 1, "password": "123456789"}]}, "8 bytes"),
                     ({"platforms": [{"access_code": 1, "user_id": 1, "password": "密码"}]}, "single-byte"),
                     ({"platforms": [{"access_code": 1, "user_id": 1, "password": "p", "encrypt_replies": True}]},
                      "needs keys"),
                     ({"platforms": [{"access_code": 1, "user_id": 1, "password": "p", "colour": 1}]}, "colour"),
                     ({"platforms": [{"access_code": 1, "user_id": 1, "password": "p"},
                                     {"access_code": 1, "user_id": 2, "password": "q"}]}, "duplicate")):
        path.write_text(yaml.safe_dump(bad), encoding="utf-8")
        with pytest.raises(DirectoryError, match=key):
            load_platforms(path)


def test_registry_vehicles_by_plate(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"devices": [
        {"id": "veh-a", "kind": "vehicle", "attributes": {"plate": "浙A 12345", "plate_colour": 2},
         "labels": {"jt809_platforms": "20261203, 555,junk"}},
        {"id": "veh-b", "kind": "vehicle", "jt808": {"manufacturer": "V", "model": "M", "terminal_id": "T",
                                                      "plate_colour": 1, "plate": "浙b00001"}},
        {"id": "veh-c", "kind": "vehicle"},
        {"id": "lift-1", "kind": "elevator", "attributes": {"plate": "浙A99999", "plate_colour": 2}},
    ]}, allow_unicode=True), encoding="utf-8")
    vehicles = RegistryVehicles(str(path))
    assert vehicles.vehicle("浙A12345", 2) == "veh-a" and vehicles.vehicle("浙a12345\x00\x00", 2) == "veh-a"
    assert vehicles.vehicle("浙B00001", 1) == "veh-b"
    assert vehicles.vehicle("浙A12345", 1) is None and vehicles.vehicle("浙A99999", 2) is None
    assert vehicles.vehicle("veh-a", 2) is None  # an id is not a plate
    assert vehicles.platforms_of("veh-a") == frozenset({20261203, 555}) and vehicles.platforms_of("veh-b") == set()


def test_simulator_is_deterministic_and_prints_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    spec = LowerPlatformSim(vehicles=3, duration_s=1200, seed=3)
    assert drive(spec) == drive(spec) and drive(spec) != drive(LowerPlatformSim(vehicles=3, duration_s=1200, seed=4))
    plan = drive(spec)
    assert any(not r.live for r in plan.reports) and any(r.gnss.alarm & 1 for r in plan.reports if r.vehicle == 0)
    assert [w.info.warn_type for w in plan.warns] == [3, 1]
    assert sim_main(["--vehicles", "2", "--print-registry"]) == 0
    devices = yaml.safe_load(capsys.readouterr().out)["devices"]
    assert [d["attributes"]["plate"] for d in devices] == ["浙A80000", "浙A80001"]
    assert sim_main(["--print-platforms", "--keys", "1,2,3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["platforms"][0]["keys"] == {"m1": 1, "ia1": 2, "ic1": 3}
