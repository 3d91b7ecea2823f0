"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code:
every Vigil command parses, every config file exists and validates, hosts and ports match."""

from __future__ import annotations

import dataclasses
import re
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.registry import DeviceRegistry
from vigil.cli import build_parser
from vigil.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
VIGIL_SERVICES = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "vigil:latest"}


def _container_to_host(svc: dict[str, Any], container_path: str) -> Path:
    for vol in svc.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith("./") and container_path.startswith(dst.rstrip("/") + "/"):
            return ROOT / src[2:] / container_path[len(dst.rstrip("/")) + 1:]
    raise AssertionError(f"{container_path} is not mounted from the repository")


def _published_ports(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in svc.get("ports", [])}


@pytest.fixture
def compose_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {key: f"test-{key.lower()}" for key in VIGIL_SERVICES["platform"]["environment"]}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_vigil_services_exist_and_image_is_built_here() -> None:
    assert {"mosquitto", "platform", "influxdb"} <= set(SERVICES)
    assert (ROOT / "Dockerfile").exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pkg in ("vigil", "broker", "edge", "rules", "alerting", "storage"):
        assert f"COPY {pkg} ./{pkg}" in dockerfile
    assert 'ENTRYPOINT ["vigil"]' in dockerfile


@pytest.mark.parametrize("name", sorted(VIGIL_SERVICES))
def test_every_vigil_command_parses_and_its_config_validates(name: str, compose_env: dict[str, str]) -> None:
    svc = VIGIL_SERVICES[name]
    args = build_parser().parse_args(svc["command"])
    config = getattr(args, "config", None)
    if config is None:
        return
    host_path = _container_to_host(svc, config)
    assert host_path.exists(), host_path
    cfg = load_config(host_path)
    assert cfg.registry is not None
    registry = DeviceRegistry.load(cfg.registry)
    for acct in [*registry.devices.values(), *registry.services.values()]:
        if acct.password_env:
            assert acct.password_env in compose_env, f"{acct.password_env} is not passed to the containers"


def test_hosts_and_ports_agree(compose_env: dict[str, str]) -> None:
    cfg = load_config(_container_to_host(VIGIL_SERVICES["platform"], "/etc/vigil/vigil.yaml"))
    mqtt = urllib.parse.urlsplit(cfg.mqtt.url)
    assert mqtt.hostname in SERVICES and mqtt.hostname == "mosquitto"
    # The platform uses its own listener, which stays on the compose network.
    assert mqtt.port == cfg.broker.platform_port
    assert cfg.broker.platform_port not in _published_ports(SERVICES["mosquitto"])
    assert cfg.broker.listen_host == "0.0.0.0"
    assert cfg.storage.backend == "influxdb-v2"
    influx = urllib.parse.urlsplit(cfg.storage.influxdb_v2.url)
    assert influx.hostname == "influxdb" and influx.port == 8086
    init = SERVICES["influxdb"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_ORG"] == cfg.storage.influxdb_v2.org
    assert init["DOCKER_INFLUXDB_INIT_BUCKET"] == cfg.storage.influxdb_v2.bucket
    assert cfg.storage.influxdb_v2.token == compose_env["VIGIL_INFLUXDB_TOKEN"]
    # The broker keeps its persistence on a named volume.
    mounts = [v.split(":")[1] for v in SERVICES["mosquitto"]["volumes"]]
    assert cfg.broker.data_dir in mounts


def test_gateway_ports_match_their_listen_addresses() -> None:
    for name, svc in VIGIL_SERVICES.items():
        cmd = svc["command"]
        if "--listen" in cmd:
            port = int(cmd[cmd.index("--listen") + 1].rsplit(":", 1)[1])
            assert port in _published_ports(svc), f"{name} listens on {port} but does not publish it"


def test_every_env_reference_is_declared() -> None:
    text = (ROOT / "deploy" / "vigil.yaml").read_text() + (ROOT / "deploy" / "registry.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text)) | set(re.findall(r"password_env: (\w+)", text))
    declared = set(VIGIL_SERVICES["platform"]["environment"])
    assert used <= declared, used - declared
    assert shlex.split("vigil run --config x")[0] == "vigil"


# --- security properties of the deployment (docs/security.md, finding 12) -----------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _deploy_config(compose_env: dict[str, str]) -> Any:
    return load_config(_container_to_host(VIGIL_SERVICES["platform"], "/etc/vigil/vigil.yaml"))


def test_image_runs_as_an_unprivileged_user_and_contains_every_package() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users, "the image must switch to an unprivileged USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    # The named volumes are initialised from the image: their folders must belong to that user.
    assert "chown -R vigil:vigil /var/lib/vigil" in DOCKERFILE
    packages = re.findall(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text())[0]
    for pkg in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {pkg} ./{pkg}" in DOCKERFILE, f"{pkg} is a package but not copied into the image"
    assert "-c constraints.txt" in DOCKERFILE and "COPY pyproject.toml README.md constraints.txt" in DOCKERFILE
    for name, svc in SERVICES.items():
        assert str(svc.get("user", "")).split(":")[0] not in ("root", "0"), f"{name} runs as root"
        assert not svc.get("privileged"), name


def test_no_plaintext_device_listener_beside_tls_and_internal_ports_unpublished(
        compose_env: dict[str, str], tmp_path: Path) -> None:
    from broker.mosquitto import mosquitto_conf
    from vigil.cli import broker_layout

    cfg = _deploy_config(compose_env)
    b = cfg.broker
    assert b.tls_port is not None, "the deployment must serve devices over TLS"
    published = _published_ports(SERVICES["mosquitto"])
    assert published == {b.tls_port, b.observer_port}
    assert b.port not in published and 1883 not in published
    assert "ports" not in SERVICES["influxdb"], "InfluxDB must not be published"
    layout = broker_layout(cfg, _container_to_host(VIGIL_SERVICES["platform"], "/etc/vigil/vigil.yaml"))
    conf = mosquitto_conf(dataclasses.replace(layout, data_dir=tmp_path), secured=True)
    listeners = re.findall(r"^listener (\d+)", conf, re.MULTILINE)
    assert sorted(map(int, listeners)) == sorted([b.tls_port, b.observer_port, b.platform_port])
    assert f"listener {b.port} " not in conf
    # The field and observer listeners bind client ids to accounts; observers get QoS 0.
    field, observer, platform = conf.split("\n# ")[1:4]
    assert field.startswith("field") and "certfile" in field and "use_username_as_clientid true" in field
    assert observer.startswith("observer") and "certfile" in observer and "max_qos 0" in observer
    assert platform.startswith("platform") and "use_username_as_clientid" not in platform


def test_no_secret_on_a_command_line_and_strong_password_hashes(compose_env: dict[str, str]) -> None:
    from broker.mosquitto import PBKDF2_ITERATIONS, password_file

    for name, svc in SERVICES.items():
        for part in (svc.get("command", []), (svc.get("healthcheck") or {}).get("test", [])):
            text = " ".join(map(str, part))
            assert "PASSWORD" not in text and "TOKEN" not in text and " -P " not in f" {text} ", name
    cfg = _deploy_config(compose_env)
    assert cfg.broker.password_iterations >= 100_000 and PBKDF2_ITERATIONS >= 100_000
    registry = DeviceRegistry.load(cfg.registry or "")
    hashes = [line.split(":", 1)[1] for line in password_file(registry).splitlines() if line]
    assert hashes and all(h.startswith("$7$") and int(h.split("$")[2]) >= 100_000 for h in hashes)


def test_dependencies_have_upper_bounds_and_a_constraints_file() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for spec in specs:
        name = re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]
        if name == "tzdata":  # time-zone data: newer is always better
            continue
        assert "<" in spec, f"{spec} has no upper bound"
    pins = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert "vigil" not in pins
    for spec in specs:
        name = re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()


def test_a_console_on_the_network_needs_secure_cookies(tmp_path: Path) -> None:
    from vigil.config import ConfigError

    path = tmp_path / "vigil.yaml"
    path.write_text("services: [alerting, console]\nconsole:\n  listen: 0.0.0.0:8080\n")
    with pytest.raises(ConfigError, match="secure_cookies"):
        load_config(path)
    path.write_text("services: [alerting, console]\nconsole:\n  listen: 0.0.0.0:8080\n  secure_cookies: true\n")
    assert load_config(path).console.secure_cookies
    path.write_text("services: [alerting, console]\nconsole:\n  listen: 127.0.0.1:8080\n")
    assert not load_config(path).console.secure_cookies
