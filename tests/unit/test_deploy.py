"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code:
every Vigil command parses, every config file exists and validates, hosts and ports match."""

from __future__ import annotations

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
    assert mqtt.port == cfg.broker.port and cfg.broker.port in _published_ports(SERVICES["mosquitto"])
    assert cfg.broker.listen_host == "0.0.0.0"
    assert cfg.storage.backend == "influxdb-v2"
    influx = urllib.parse.urlsplit(cfg.storage.influxdb_v2.url)
    assert influx.hostname == "influxdb" and influx.port in _published_ports(SERVICES["influxdb"])
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
