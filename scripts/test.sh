#!/usr/bin/env bash
# Sets everything up and runs the tests against real Mosquitto, InfluxDB, VictoriaMetrics and Chromium.
# Every server a test needs is started by the test itself on a free port in a temporary folder.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
mkdir -p test-artifacts
exec .venv/bin/python -m pytest "$@"
