#!/usr/bin/env bash
# One command on a machine with one large GPU: the data that travels with the repository
# (a training.pack folder) -> the gpu-small preset trained for a fixed wall-clock budget
# -> an exported model directory -> its evaluation, all inside BUDGET_MIN minutes.
#
#   scripts/train_gpu.sh                 # on the GPU machine (python3 with torch there)
#   CHECK=1 scripts/train_gpu.sh         # the same script on CPU: a few small steps, so
#                                        # that no GPU minute is spent debugging it
#
# Make the pack here first (it is ~18 MB; data/ is not in git, so carry it along):
#   .venv/bin/python -m training.pack pack data/local-16384 data/local-16384.pack
#
# Environment: PACK (data/local-16384.pack), BUDGET_MIN (9: the whole script, under a
# 10-minute command limit), RESERVE_MIN (2: kept for export and evaluation), OUT (where the
# model directory and results go; runs/gpu-small-export), RUNS (runs), NAME (gpu-small),
# DATA (where the pack is unpacked), PY (.venv/bin/python, else python3), CHECK (1: CPU check), BUNDLE_MIB (15 on
# a lent GPU machine: the results as one tar cut into parts of this size). Other arguments go
# to training.train (for example --max-steps 2000 --fim-spans mix).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
if [ -z "${PY:-}" ]; then   # the project's environment where there is one (setup.sh), else python3
    PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
PACK=${PACK:-data/local-16384.pack}
BUDGET_MIN=${BUDGET_MIN:-9}
RESERVE_MIN=${RESERVE_MIN:-2}
OUT=${OUT:-runs/gpu-small-export}
NAME=${NAME:-gpu-small}
RUNS=${RUNS:-runs}
DATA=${DATA:-${TMPDIR:-/tmp}/codecomplete-$(basename "$PACK" .pack)}
export PYTHONUNBUFFERED=1

EVAL=()
if [ "${CHECK:-0}" = 1 ]; then
    # Same preset and steps of the same code, sized for a CPU: the model is the real one.
    EXTRA=(--device cpu --compile false --max-steps 3 --batch-size 2 --eval-batches 1
           --eval-every 2 --checkpoint-every 2 --warmup-steps 1)
    EVAL=(--line-cases 4 --fim-cases 4 --fim-bpb-cases 4 --parse-cases 2 --max-files 20
          --memory-files 2)
else
    EXTRA=()
    "$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device: this script is for a GPU machine (CHECK=1 runs it on CPU)")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
fi

"$PY" -m training.pack unpack "$PACK" "$DATA"
left=$(( BUDGET_MIN * 60 - ($(date +%s) - START) - RESERVE_MIN * 60 ))
if [ "$left" -lt 60 ]; then
    echo "error: only ${left}s of BUDGET_MIN=${BUDGET_MIN} would be left to train" >&2
    exit 2
fi
echo "training for at most $(( left / 60 ))m$(( left % 60 ))s"
"$PY" -m training.train --config gpu-small --data "$DATA" --name "$NAME" --runs-dir "$RUNS" \
    --time-budget-min "$(awk "BEGIN { print $left / 60 }")" "${EXTRA[@]}" "$@"
mkdir -p "$OUT"
"$PY" -m training.export --run "$RUNS/$NAME" --out "$OUT/model" --checkpoint best
cp "$RUNS/$NAME/metrics.jsonl" "$OUT/"
echo "exported $OUT/model after $(( $(date +%s) - START ))s"
if [ -n "${BUNDLE_MIB:-}" ]; then
    # A lent GPU machine returns at most 8 files of at most 16 MiB: one tar of the model
    # and its training metrics, cut into parts, made before the evaluation so that an
    # evaluation cut short by the budget loses no weights. Here:
    #   cat "$OUT"/bundle.tar.* | tar -xf - -C DIR
    tar -C "$OUT" -cf - model metrics.jsonl | split -b "${BUNDLE_MIB}m" -d - "$OUT/bundle.tar."
fi
# The evaluation gets what is left of the budget (at least a minute) and no more.
left=$(( BUDGET_MIN * 60 - ($(date +%s) - START) ))
timeout "$(( left > 60 ? left : 60 ))" "$PY" -m training.evaluate --model "$OUT/model" \
    --data "$DATA" "${EVAL[@]}" --out "$OUT/eval.json" | tee "$OUT/eval.txt" \
    || echo "the evaluation did not finish inside BUDGET_MIN=${BUDGET_MIN} (the model is kept)"
if [ -n "${BUNDLE_MIB:-}" ]; then
    rm -r "$OUT/model" "$OUT/metrics.jsonl" "$OUT/eval.txt"
    ls -l "$OUT"
fi
echo "done in $(( $(date +%s) - START ))s"
