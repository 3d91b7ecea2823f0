#!/usr/bin/env bash
# Sets everything up and runs the tests against real Mosquitto, InfluxDB, VictoriaMetrics and Chromium.
# Every server a test needs is started by the test itself on a free port in a temporary folder.
# Without arguments (as CI runs it) the static checks run first: ruff and mypy --strict on the
# package code, which the code already meets; a regression fails the run.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
mkdir -p test-artifacts
if [ "$#" -eq 0 ]; then
  echo "test: ruff check"
  .venv/bin/ruff check .
  echo "test: mypy --strict (package code and the tests' shared support)"
  .venv/bin/mypy --strict vigil broker edge rules alerting storage simulators console scenario tests/support
fi
exec .venv/bin/python -m pytest "$@"
