#!/usr/bin/env bash
# Create .venv and install codecomplete with its dev extras.
# The CPU build of torch is installed first (pinned) where no torch is present, so the
# package's own range (torch>=2.4) never pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${CODECOMPLETE_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "$TORCH_PIN"
fi
.venv/bin/pip install -q -e '.[dev]'
