"""Gateway configuration: file + command line, errors name the file and the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge.hj212.cli import ConfigError, Hj212GatewayConfig, add_arguments, config_from_args, load_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_and_command_line() -> None:
    assert config_from_args(parse([])) == Hj212GatewayConfig()
    config = config_from_args(parse(["--listen", "127.0.0.1:7000", "--mqtt", "mqtt://b:1883",
                                     "--accept-unknown-devices", "--no-dead-letter", "--max-data-length", "4096"]))
    assert config.listen_address() == ("127.0.0.1", 7000)
    assert config.accept_unknown_devices and not config.dead_letter and config.max_data_length == 4096
    assert config.publish_status


def test_file_then_command_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "hj212.yaml"
    path.write_text("hj212:\n  listen: 0.0.0.0:6100\n  idle_timeout_s: 30\n  timezone: Asia/Urumqi\n")
    config = config_from_args(parse(["--config", str(path), "--listen", "127.0.0.1:6200"]))
    assert config.listen == "127.0.0.1:6200" and config.idle_timeout_s == 30 and config.timezone == "Asia/Urumqi"


@pytest.mark.parametrize(("text", "key"), [
    ("listen: 0.0.0.0:6000\nlisten_port: 5\n", "listen_port"),
    ("idle_timeout_s: soon\n", "idle_timeout_s"),
    ("listen: nowhere\n", "listen"),
    ("timezone: Mars/Olympus\n", "Mars/Olympus"),
    ("max_data_length: 0\n", "max_data_length"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(path) in str(info.value) and key in str(info.value)
