"""Registry validation, Mosquitto password hashes and the generated ACL."""

from __future__ import annotations

import pytest

from broker.mosquitto import PBKDF2_ITERATIONS, acl_file, hash_password, password_file, verify_password
from broker.registry import DeviceRegistry, RegistryError

REG = {
    "sites": [{"id": "tower-3", "unit": "市场监管局", "attributes": {"rated_speed_mps": 2.5}}],
    "devices": [
        {"id": "elev-1", "kind": "elevator", "site": "tower-3", "password": "pw1"},
        {"id": "elev-2", "kind": "elevator", "site": "tower-3", "password_env": "VIGIL_TEST_PW",
         "attributes": {"rated_speed_mps": 1.0}},
    ],
    "services": [
        {"name": "vigil-platform", "role": "platform", "password": "pp"},
        {"name": "gw-hj212", "role": "gateway", "kinds": ["emission"], "password": "gp"},
        {"name": "control-room", "role": "observer", "password": "op"},
    ],
}


def test_hash_matches_mosquitto_format_and_verifies() -> None:
    h = hash_password("secret")
    assert h.startswith(f"$7${PBKDF2_ITERATIONS}$") and PBKDF2_ITERATIONS >= 100_000
    assert verify_password("secret", h) and not verify_password("nope", h)
    # A hash written by mosquitto_passwd 2.0.11 for "secret".
    known = ("$7$101$zHPNeDFPwu/EoQ1O$qe+0rESK0GfSoJt1rocH7hRbXZeIZ1tKo9pTkBd4Iz/VmcLZKy6nwT3NDbx6eXfcyFH7gvLxe"
             "prrgfDnIOUjKA==")
    assert verify_password("secret", known)


def test_attributes_fall_back_from_device_to_site_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = DeviceRegistry.from_data(REG)
    assert reg.attribute("elev-2", "rated_speed_mps") == 1.0
    assert reg.attribute("elev-1", "rated_speed_mps") == 2.5
    assert reg.attribute("elev-1", "floors", 18) == 18
    assert reg.attribute("ghost", "floors", 7) == 7
    monkeypatch.setenv("VIGIL_TEST_PW", "from-env")
    assert reg.password_of("elev-2") == "from-env"


def test_password_file_needs_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = DeviceRegistry.from_data(REG)
    monkeypatch.delenv("VIGIL_TEST_PW", raising=False)
    with pytest.raises(RegistryError, match="VIGIL_TEST_PW"):
        password_file(reg)
    monkeypatch.setenv("VIGIL_TEST_PW", "x")
    lines = dict(line.split(":", 1) for line in password_file(reg).splitlines())
    assert set(lines) == {"elev-1", "elev-2", "vigil-platform", "gw-hj212", "control-room"}
    assert verify_password("pw1", lines["elev-1"])


def test_acl_gives_devices_only_their_own_topics() -> None:
    acl = acl_file(DeviceRegistry.from_data(REG))
    block = acl.split("user elev-1\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write vigil/v1/elevator/elev-1/telemetry",
        "topic write vigil/v1/elevator/elev-1/event",
        "topic write vigil/v1/elevator/elev-1/status",
        "topic read vigil/v1/elevator/elev-1/command",
    ]
    gw = acl.split("user gw-hj212\n")[1].split("\n\n")[0]
    assert "topic write vigil/v1/emission/+/telemetry" in gw and "vehicle" not in gw
    assert "topic read vigil/v1/#" in acl.split("user control-room\n")[1].split("\n\n")[0]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"devices": [{"id": "a", "kind": "toaster"}]}, "kind"),
        ({"devices": [{"id": "a", "kind": "elevator", "colour": "red"}]}, "colour"),
        ({"devices": [{"id": "a b", "kind": "elevator"}]}, "devices[0].id"),
        ({"devices": [{"id": "a", "kind": "elevator", "site": "nowhere"}]}, "devices[0].site"),
        ({"devices": [{"id": "a", "kind": "elevator"}, {"id": "a", "kind": "camera"}]}, "duplicate"),
        ({"services": [{"name": "s", "role": "platform", "password": "a", "password_env": "B"}]}, "only one"),
        ({"services": [{"name": "s", "role": "god"}]}, "role"),
    ],
)
def test_invalid_registries_are_refused_naming_the_key(patch: dict[str, object], message: str) -> None:
    with pytest.raises(RegistryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DeviceRegistry.from_data(patch, "registry.yaml")
