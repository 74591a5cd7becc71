#!/usr/bin/env bash
# Reproduce the shipped default model (model/default/) from this machine's own Python
# sources, offline, with one command. See docs/default-model.md for what it produces.
#
#   scripts/train_default.sh            # corpus -> data -> train (resumable) -> export -> evaluate
#   RESUME=1 scripts/train_default.sh   # continue an interrupted run
#   DATA_ONLY=1 scripts/train_default.sh   # only the corpus and data/local-16384 (minutes),
#                                          # e.g. for the benchmarks' held-out packages
#
# The corpus is the Python standard library (without its test suite) plus the
# site-packages of .venv (the project and its dependencies, PyTorch included), each
# package its own "repository", so whole packages are held out for validation.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh train     # + matplotlib for the loss curve at the end
PY=.venv/bin/python
VOCAB=${VOCAB:-16384}
NAME=${NAME:-default}
STDLIB=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p data
$PY -m scraper local "$STDLIB" --each-subdir --exclude test --exclude idlelib --db data/corpus.sqlite
$PY -m scraper local "$SITE" --each-subdir --db data/corpus.sqlite
$PY -m scraper dedup --db data/corpus.sqlite
$PY -m scraper stats --db data/corpus.sqlite
$PY -m training.prepare --db data/corpus.sqlite --out "data/local-$VOCAB" --vocab-size "$VOCAB"
if [ -n "${DATA_ONLY:-}" ]; then
    echo "data/local-$VOCAB is ready (DATA_ONLY: no training)"
    exit 0
fi
# Eight sittings, as the shipped model was trained. The first three used AdamW (the preset
# now uses Muon, so they say --optimizer adamw): 850 steps (13.9M tokens), then a second
# warmup-stable-decay cycle of 1000 steps (16.4M tokens) from its last checkpoint, which
# also continues its place in the data (--init-from), then a third of 800 steps (13.1M
# tokens, re-warmed to 1e-3, the last 30% decaying). The fourth switches to the preset's
# Muon for the blocks' matrices (at half its lr) and decays over its last 40%. All four
# made FIM examples from whole documents (--fim-level document); the preset now makes them
# inside each training window (see docs/default-model.md, "FIM"), as the fifth does.
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME" \
    --fim-level document --optimizer adamw --max-steps 850 --warmup-steps 50 \
    --eval-every 100 --checkpoint-every 50 ${RESUME:+--resume} "$@"
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-2" \
    --fim-level document --optimizer adamw --init-from "runs/$NAME/checkpoints/step_0000850" \
    --max-steps 1000 \
    --warmup-steps 50 --lr 2e-3 --eval-every 100 --checkpoint-every 50 ${RESUME:+--resume} "$@"
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-3" \
    --fim-level document --optimizer adamw --init-from "runs/$NAME-2/checkpoints/step_0001000" \
    --max-steps 800 \
    --warmup-steps 30 --lr 1e-3 --decay-fraction 0.3 --eval-every 100 --checkpoint-every 50 \
    ${RESUME:+--resume} "$@"
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-4" \
    --fim-level document --init-from "runs/$NAME-3/checkpoints/step_0000800" --max-steps 800 \
    --warmup-steps 30 \
    --lr 7e-4 --muon-lr 0.01 --weight-decay 0.02 --decay-fraction 0.4 --eval-every 100 \
    --checkpoint-every 50 \
    ${RESUME:+--resume} "$@"
# The fifth makes FIM examples inside each window, as the preset now does (400 steps,
# 6.6M tokens, re-warmed to 2.5e-4 / Muon 0.003, the last half decaying); the fifth and
# sixth were trained before every example got its end (--fim-ends false).
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-5" \
    --init-from "runs/$NAME-4/checkpoints/step_0000800" --fim-ends false --max-steps 400 \
    --warmup-steps 20 \
    --lr 2.5e-4 --muon-lr 0.003 --weight-decay 0.02 --decay-fraction 0.5 --eval-every 100 \
    --checkpoint-every 50 ${RESUME:+--resume} "$@"
$PY -m training.export --run "runs/$NAME-5" --out "runs/$NAME-5/export" --checkpoint latest
# The sixth continues the fifth's exported weights at a 1024-token context with each
# repository's files packed together (batch 8 x 2 accumulation steps: the same 16,384
# tokens a step). It ran on a 66-minute time budget, which ended it at step 659 with the
# last half decaying; --max-steps 659 gives the same schedule on any machine.
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-6" \
    --init-from "runs/$NAME-5/export" --seq-len 1024 --batch-size 8 --grad-accum 2 \
    --repo-packing true --fim-ends false --max-steps 659 --warmup-steps 20 --lr 2.5e-4 \
    --muon-lr 0.003 \
    --weight-decay 0.02 --decay-fraction 0.5 --eval-every 100 --checkpoint-every 100 \
    ${RESUME:+--resume} "$@"
# The seventh continues the sixth's last checkpoint and its place in the data for 180
# steps (2.9M tokens) with every FIM example ending inside its window (the preset's
# default since; see docs/default-model.md, "Where a middle ends").
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-7" \
    --init-from "runs/$NAME-6/checkpoints/step_0000659" --seq-len 1024 --batch-size 8 \
    --grad-accum 2 --repo-packing true --fim-ends true --max-steps 180 --warmup-steps 20 \
    --lr 2.5e-4 --muon-lr 0.003 --weight-decay 0.02 --decay-fraction 0.5 --eval-every 60 \
    --checkpoint-every 60 ${RESUME:+--resume} "$@"
$PY -m training.export --run "runs/$NAME-7" --out "runs/$NAME-7/export" --checkpoint latest
# The eighth (run `sitting-11`, 2026-12-03) continues the seventh's exported weights, each
# batch row reading its own repository (lanes), on an 85-minute budget that ended it at
# step 1824 (29.9M tokens) with the last half decaying; --max-steps 1824 gives the same
# schedule on any machine.
$PY -m training.train --config cpu-default --data "data/local-$VOCAB" --name "$NAME-8" \
    --init-from "runs/$NAME-7/export" --seq-len 1024 --batch-size 8 --grad-accum 2 \
    --repo-packing true --fim-ends true --max-steps 1824 --warmup-steps 20 --lr 2.5e-4 \
    --muon-lr 0.003 --weight-decay 0.02 --decay-fraction 0.5 --eval-every 100 \
    --checkpoint-every 100 ${RESUME:+--resume} "$@"
$PY -m training.export --run "runs/$NAME-8" --out model/default --checkpoint latest
$PY -m training.evaluate --model model/default --data "data/local-$VOCAB" \
    --out "runs/$NAME-8/eval.json"
$PY -m training.plot "runs/$NAME" "runs/$NAME-2" "runs/$NAME-3" "runs/$NAME-4" "runs/$NAME-5" \
    "runs/$NAME-6" "runs/$NAME-7" "runs/$NAME-8" --out docs/img/default-loss.png
