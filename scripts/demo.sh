#!/usr/bin/env bash
# Set up what running needs (not the test tools) and show one completion from the shipped
# default model (model/default/), end to end over LSP. Only where that directory is
# missing (a checkout without it) is a small stand-in model built first from the local
# Python standard library (5-10 minutes on 2 cores) into ~/.cache/codecomplete.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if ! .venv/bin/python -c "from model.paths import default_model_dir; import sys; sys.exit(default_model_dir() is None)"; then
  echo "No default model yet: building the stand-in model (one time, a few minutes)..." >&2
  .venv/bin/python -m training.standin --out "$(.venv/bin/python -c 'from model.paths import standin_model_dir; print(standin_model_dir())')"
fi
exec .venv/bin/python -m server.demo "$@"
