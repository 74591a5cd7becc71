#!/usr/bin/env bash
# Set everything up and show one completion from the default model, end to end over LSP.
# Until the trained default model ships in model/default/, the first run builds a small
# stand-in model from the local Python standard library (about 5-10 minutes on 2 cores)
# into ~/.cache/codecomplete/standin-model; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if ! .venv/bin/python -c "from model.paths import default_model_dir; import sys; sys.exit(default_model_dir() is None)"; then
  echo "No default model yet: building the stand-in model (one time, a few minutes)..." >&2
  .venv/bin/python -m training.standin --out "$(.venv/bin/python -c 'from model.paths import standin_model_dir; print(standin_model_dir())')"
fi
exec .venv/bin/python -m server.demo "$@"
