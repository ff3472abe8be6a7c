#!/usr/bin/env bash
# Set up, then serve a config (default configs/dev.yaml) on http://localhost:8000/v1.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/dev.yaml}"
bash scripts/setup.sh
.venv/bin/python -m serving check "$CONFIG"
exec .venv/bin/serve run "$CONFIG"
