#!/usr/bin/env bash
# Set up, then run the whole test suite (unit, API, k8s, end-to-end with the real engine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
