"""Line completion as an editor user gets it, and the share of the server's identifier
re-ranking in it.

    python -m benchmarks.line_completion --data data/NAME [--model DIR] [--cases 300]

The cases are `training.evaluate`'s (random cut points inside held-out lines; the lines
below are the suffix; the target is the rest of the line) with the same seed. Both rows
put them through `server.engine.CompletionEngine` with the server's default settings
(greedy, the rest of a line by beam search): the first with identifier re-ranking off,
the second as the server runs, which repeats `training.evaluate`'s line-completion
numbers. Both use one loaded model (fp32 on CPU).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from benchmarks.machine import describe
from model.checkpoint import ModelDirError, load_model_dir
from model.paths import default_model_dir
from training.data import DataError
from training.evaluate import (
    EvalConfig,
    line_cases,
    run_line_completion,
    settings_for,
    validation_texts,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cases", type=int, default=EvalConfig.line_cases)
    ap.add_argument("--seed", type=int, default=EvalConfig.seed)
    args = ap.parse_args(argv)
    cfg = EvalConfig(line_cases=args.cases, seed=args.seed)
    try:
        lm = load_model_dir(args.model or default_model_dir(), device="cpu", dtype="fp32")
        texts = validation_texts(args.data)
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cases = line_cases(texts, cfg.line_cases, random.Random(cfg.seed + 1))   # as evaluate
    print(f"machine: {describe()}")
    for name, settings in (("re-ranking off", settings_for(cfg, rerank=False)),
                           ("server engine (evaluate)", settings_for(cfg))):
        t0 = time.time()
        r = run_line_completion(lm, cases, cfg, settings)
        print(f"{name:<26} exact match {r['exact_match']:.3f}  edit similarity "
              f"{r['edit_similarity']:.3f}  ({r['cases']} cases, {time.time() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
