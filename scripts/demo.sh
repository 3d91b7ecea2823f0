#!/usr/bin/env bash
# Sets everything up and runs the demo: simulated devices raise real alerts.
# Usage: scripts/demo.sh [--for SECONDS]   (Ctrl-C ends it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vigil demo "$@"
