#!/usr/bin/env bash
# Create .venv and install codecomplete with the extras a command needs:
#   scripts/setup.sh          what running needs (the server, the demo, scraping, training)
#   scripts/setup.sh dev      + the test tools (pytest, transformers, Neovim, jedi, ruff...)
#   scripts/setup.sh train    + TensorBoard and matplotlib (the loss-curve picture)
# Each is skipped when already done for the current pyproject.toml.
#
# torch: where no torch is installed yet, the CPU build is installed first, pinned, so the
# package's own range (torch>=2.4) is already met and pip pulls no other build:
# - On Linux, PyPI's plain `torch` wheel is the CUDA build (several GB of CUDA libraries).
#   The CPU build is the `+cpu` version; it is taken from the configured indexes or
#   wheel folders when one has it, else from PyTorch's CPU index
#   (https://download.pytorch.org/whl/cpu). If neither can be reached, setup stops and
#   says so rather than fall back to the CUDA build.
# - On macOS and Windows, PyPI's `torch` is the CPU (and MPS) build: it is used as is.
# Set CODECOMPLETE_TORCH to install another build yourself (for example
# CODECOMPLETE_TORCH="torch==2.13.0" on a CUDA machine, with PyPI's CUDA wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
STAMP=.venv/.codecomplete-installed${EXTRAS:+-$EXTRAS}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
echo "Setting up .venv${EXTRAS:+ with the $EXTRAS extras} (log: .venv/setup.log)..." >&2

pip_install() {
  .venv/bin/pip install "$@" >> .venv/setup.log 2>&1
}

install_torch() {
  if [ -n "${CODECOMPLETE_TORCH:-}" ]; then
    pip_install "$CODECOMPLETE_TORCH" && return 0
    echo "installing $CODECOMPLETE_TORCH failed (see .venv/setup.log)" >&2
    return 1
  fi
  if [ "$(uname -s)" != Linux ]; then
    pip_install "torch==$TORCH_VERSION" && return 0
    echo "installing torch==$TORCH_VERSION failed (see .venv/setup.log)" >&2
    return 1
  fi
  pip_install "torch==$TORCH_VERSION+cpu" && return 0
  echo "torch==$TORCH_VERSION+cpu is not on the configured indexes; trying $TORCH_CPU_INDEX" >&2
  pip_install "torch==$TORCH_VERSION+cpu" --index-url "$TORCH_CPU_INDEX" && return 0
  echo "the CPU build torch==$TORCH_VERSION+cpu could not be installed from the configured" \
       "indexes or $TORCH_CPU_INDEX; set CODECOMPLETE_TORCH (for example" \
       "CODECOMPLETE_TORCH=torch==$TORCH_VERSION for PyPI's CUDA build) and rerun." >&2
  return 1
}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  install_torch || { tail -20 .venv/setup.log >&2; exit 1; }
fi
pip_install -e ".${EXTRAS:+[$EXTRAS]}" \
  || { tail -20 .venv/setup.log >&2; echo "installing codecomplete failed" >&2; exit 1; }
# The server builds its native kernels (model/native.py, ~25 s) and compiles its decode step
# (model/decode_step.py, ~25-75 s) in the background at start-up the first time on 2 cores,
# and takes a few seconds once they are in ~/.cache/codecomplete. Doing both once here
# fills that cache, so the first server start is as quick as the rest.
# CODECOMPLETE_PRECOMPILE=0 skips it.
if [ "${CODECOMPLETE_PRECOMPILE:-1}" != 0 ]; then
  echo "Building the native kernels and compiling the decode step for this machine (once; one" \
       "to two minutes on 2 cores)..." >&2
  .venv/bin/python -m server --precompile --log-level WARNING >> .venv/setup.log 2>&1 \
    || echo "note: the decode step was not precompiled (.venv/setup.log says why); the" \
            "server compiles it in the background instead." >&2
fi
touch "$STAMP"
