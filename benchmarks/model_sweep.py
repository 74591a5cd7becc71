"""Pick the default model's size and tokenizer by measurement, at equal wall-clock compute.

    python -m benchmarks.model_sweep --data data/stdlib-8k [--data data/stdlib-16k ...]
        [--minutes 4] [--sizes S,M,L]

For each (dataset, size) it measures training throughput on a short calibration run,
sets max_steps so the run lasts about `--minutes` of uncontended compute, trains with the
`cpu-default` recipe (cosine schedule so every run finishes its decay), and reports the
best validation bits per byte. Bits per byte are comparable across tokenizers.
Results go to stdout as a table and to `runs/sweep/results.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks.machine import describe
from training.config import load_config
from training.train import train

SIZES = {
    "S": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
              num_attention_heads=6, num_key_value_heads=2),
    "M": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6,
              num_attention_heads=8, num_key_value_heads=4),
    "L": dict(hidden_size=320, intermediate_size=864, num_hidden_layers=8,
              num_attention_heads=10, num_key_value_heads=5),
}


def run(data: str, size: str, minutes: float, runs_dir: str, extra: dict[str, str]) -> dict:
    base = {k: str(v) for k, v in SIZES[size].items()} | extra
    tag = f"{Path(data).name}-{size}"
    calib = load_config("cpu-default", base | {
        "name": f"calib-{tag}", "data": data, "runs_dir": runs_dir, "max_steps": "12",
        "log_every": "6", "eval_every": "1000", "eval_batches": "1",
        "checkpoint_every": "1000", "sample_every_eval": "0"})
    shutil.rmtree(Path(runs_dir) / calib.name, ignore_errors=True)
    calib_dir = train(calib, log=lambda s: None)
    rates = [m["tokens_per_s"] for m in map(json.loads, (calib_dir / "metrics.jsonl")
                                            .read_text().splitlines()) if "tokens_per_s" in m]
    per_step = calib.tokens_per_step / rates[-1]   # steady state: the second log window
    steps = max(20, int(minutes * 60 / per_step))
    cfg = load_config("cpu-default", base | {
        "name": f"sweep-{tag}", "data": data, "runs_dir": runs_dir, "max_steps": str(steps),
        "schedule": "cosine", "warmup_steps": str(max(10, steps // 20)),
        "eval_every": str(max(1, steps // 4)), "checkpoint_every": str(steps),
        "sample_every_eval": "0"})
    shutil.rmtree(Path(runs_dir) / cfg.name, ignore_errors=True)
    run_dir = train(cfg, log=lambda s: None)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = min((e for e in evals if "val_bpb" in e), key=lambda e: e["val_bpb"])
    from model.config import ModelConfig
    meta = json.loads((run_dir / "config.json").read_text())["model"]
    params = ModelConfig.from_hf_dict(meta).num_parameters()
    return {"data": data, "size": size, "params": params, "steps": steps,
            "tokens": steps * cfg.tokens_per_step, "sec_per_step": per_step,
            "best_val_bpb": best["val_bpb"], "best_val_loss": best["val_loss"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--sizes", default="S,M,L")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--runs-dir", default="runs/sweep")
    ap.add_argument("--set", action="append", default=[], help="extra override KEY=VALUE")
    args = ap.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.set)
    print(f"machine: {describe()}")
    results = []
    for data in args.data:
        for size in args.sizes.split(","):
            r = run(data, size, args.minutes, args.runs_dir, extra)
            results.append(r)
            print(f"{Path(data).name:>16} {size} {r['params'] / 1e6:5.1f}M params "
                  f"{r['steps']:5d} steps {r['tokens'] / 1e6:6.2f}M tokens "
                  f"val bpb {r['best_val_bpb']:.4f}", flush=True)
    out = Path(args.runs_dir) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": describe(), "minutes": args.minutes,
                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
