#!/usr/bin/env bash
# Create .venv and install codecomplete with its dev extras (skipped when already done
# for the current pyproject.toml). The CPU build of torch is installed first (pinned)
# where no torch is present, so the package's own range (torch>=2.4) never pulls a
# multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${CODECOMPLETE_TORCH:-torch==2.13.0}
STAMP=.venv/.codecomplete-installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
echo "Setting up .venv (log: .venv/setup.log)..." >&2
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install "$TORCH_PIN" >> .venv/setup.log 2>&1 \
    || { tail -20 .venv/setup.log >&2; echo "installing $TORCH_PIN failed" >&2; exit 1; }
fi
.venv/bin/pip install -e '.[dev]' >> .venv/setup.log 2>&1 \
  || { tail -20 .venv/setup.log >&2; echo "installing codecomplete failed" >&2; exit 1; }
touch "$STAMP"
