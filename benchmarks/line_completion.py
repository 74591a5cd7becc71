"""Line completion as an editor user gets it: the shared completion path vs the server's
engine.

    python -m benchmarks.line_completion --data data/NAME [--model DIR] [--cases 300]

The cases are `training.evaluate`'s (random cut points inside held-out lines; the lines
below are the suffix; the target is the rest of the line) with the same seed, so the first
row repeats its line-completion numbers: completion/pipeline.py's prompt, generation and
filters, greedy (the rest of a line by beam search). The second row puts the same cases
through `server.engine.CompletionEngine` at temperature 0, which adds identifier
re-ranking after a partly typed name. Both rows use
one loaded model (fp32 on CPU) and the same settings otherwise.
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
from server.engine import CompletionEngine
from training.data import DataError
from training.evaluate import (
    EvalConfig,
    edit_similarity,
    line_cases,
    run_line_completion,
    settings_for,
    validation_texts,
)


def run_engine(engine: CompletionEngine, cases: list[tuple[str, str, str]]
               ) -> dict[str, float]:
    """Exact match and edit similarity of the engine's first completion's first line."""
    em = es = 0.0
    for prefix, target, suffix in cases:
        out = engine.complete(prefix, suffix)
        pred = out[0].text.split("\n")[0] if out else ""
        em += pred.strip() == target.strip()
        es += edit_similarity(pred.strip(), target.strip())
    n = max(1, len(cases))
    return {"exact_match": em / n, "edit_similarity": es / n, "cases": len(cases)}


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
    engine = CompletionEngine(lm, settings_for(cfg, rerank=True))
    print(f"machine: {describe()}")
    for name, fn in (("shared path (evaluate)", lambda: run_line_completion(lm, cases, cfg)),
                     ("server engine", lambda: run_engine(engine, cases))):
        t0 = time.time()
        r = fn()
        print(f"{name:<26} exact match {r['exact_match']:.3f}  edit similarity "
              f"{r['edit_similarity']:.3f}  ({r['cases']} cases, {time.time() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
