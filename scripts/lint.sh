#!/usr/bin/env bash
# Style, types and layers: fast, so CI runs it before the tests (a style break fails in seconds).
#   ruff check          lint (pyflakes, pycodestyle, isort, bugbear, pyupgrade, async)
#   ruff format --check the formatter's layout
#   mypy                types; strict on the engine contract, the API protocol and the config
#   lint-imports        the layer contracts of pyproject.toml ([tool.importlinter])
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
status=0
run() { echo "lint: $*"; "$@" || status=1; }
run "$BIN/ruff" check .
run "$BIN/ruff" format --check .
run "$BIN/mypy"
run "$BIN/lint-imports" --no-cache
exit $status
