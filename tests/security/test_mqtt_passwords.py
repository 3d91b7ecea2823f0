"""Finding 12 (password hashes): Mosquitto 2.0.11 accepts Vigil's strong ``$7$`` hashes for real logins.

Before the fix the password files used 101 PBKDF2 iterations (what mosquitto_passwd writes), so a
leaked file was cheap to crack.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from broker.mosquitto import PBKDF2_ITERATIONS, BrokerLayout, MosquittoProcess, free_port
from tests.security.mqtt_rig import PASSWORDS, REGISTRY


def _login(port: int, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-p", str(port), "-u", user, "-P", password, "-q", "1",
                           "-t", f"vigil/v1/elevator/{user}/telemetry", "-m", "{}"],
                          capture_output=True, text=True, timeout=30)


def _iterations(passwd: Path) -> dict[str, int]:
    return {line.split(":", 1)[0]: int(line.split("$")[2]) for line in passwd.read_text().splitlines() if line}


def test_strong_hashes_log_in_and_wrong_passwords_do_not(tmp_path: Path) -> None:
    layout = BrokerLayout(data_dir=tmp_path / "broker", port=free_port(), device_password_iterations=20_000)
    with MosquittoProcess(layout, REGISTRY) as broker:
        assert PBKDF2_ITERATIONS >= 100_000
        field = _iterations(tmp_path / "broker" / "passwd-field")
        platform = _iterations(tmp_path / "broker" / "passwd-platform")
        # Services keep the strong count; devices use the fleet setting.
        assert field == {"elev-1": 20_000, "elev-2": 20_000, "vigil-gw-elev": PBKDF2_ITERATIONS}
        assert platform == {"vigil-platform": PBKDF2_ITERATIONS}
        ok = _login(broker.port, "elev-1", PASSWORDS["elev-1"])
        assert ok.returncode == 0, ok.stderr
        assert _login(broker.port, "elev-1", "not-the-password").returncode != 0
        gw = subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-u", "vigil-gw-elev", "-P",
                             PASSWORDS["vigil-gw-elev"], "-q", "1", "-t", "vigil/v1/elevator/elev-2/status", "-m", "{}"],
                            capture_output=True, text=True, timeout=30)
        assert gw.returncode == 0, gw.stderr
        assert "$7$101$" not in (tmp_path / "broker" / "passwd-field").read_text()
