"""The deployment config: validation errors name the file and the key; secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import ConfigError, load_config, parse_config, substitute_env


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vigil.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "registry: registry.yaml\nstate_dir: var\n"))
    assert cfg.services == ["rules", "alerting", "storage"]
    assert cfg.registry == str(tmp_path / "registry.yaml")
    assert cfg.state_dir == str(tmp_path / "var")
    assert cfg.storage.backend == "sqlite"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("mqtt:\n  url: 5\n", "$.mqtt.url"),
        ("storage:\n  backend: mongodb\n", "$.storage.backend"),
        ("storage:\n  writer:\n    batch_points: lots\n", "$.storage.writer.batch_points"),
        ("services: [rules, printer]\n", "$.services"),
        ("colour: red\n", "colour"),
        ("rules:\n  tick_interval_s: [1]\n", "$.rules.tick_interval_s"),
        ("alerting:\n  route:\n    receivers: 3\n", "$.alerting.route.receivers"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("mqtt: {url: 'mqtt://u:${VIGIL_TEST_UNSET_PW}@h:1883'}\n", "VIGIL_TEST_UNSET_PW"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and fragment in message


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TEST_PW", "s3cret")
    cfg = parse_config({"mqtt": {"url": "mqtt://vigil:${VIGIL_TEST_PW}@broker:1883"},
                        "storage": {"influxdb_v2": {"token": "${VIGIL_TEST_TOKEN:-fallback}"}}})
    assert cfg.mqtt.url == "mqtt://vigil:s3cret@broker:1883"
    assert cfg.storage.influxdb_v2.token == "fallback"
    assert "s3cret" not in repr(cfg.storage) and "fallback" not in repr(cfg.storage.influxdb_v2)


def test_substitution_walks_lists_and_leaves_other_values() -> None:
    assert substitute_env({"a": ["${X}", 3, True]}, env={"X": "y"}) == {"a": ["y", 3, True]}


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
