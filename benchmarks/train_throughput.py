"""Training throughput and model FLOP utilisation (MFU) of a preset on this machine.

    python -m benchmarks.train_throughput --data data/NAME [--config cpu-default]
        [--steps 30] [--set compile=true]

MFU = achieved model FLOP/s / peak. Model FLOPs per token are counted the usual way
(PaLM appendix B): 6 x parameters (forward + backward of every matmul weight, the tied
embedding counted once as the output head) + 12 x layers x hidden x sequence for
attention scores and values. The peak is *measured in the same run*: the best bf16 (or
fp32 when autocast is off) matmul FLOP/s over a few large square sizes with all threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import torch

from benchmarks.machine import describe
from model.device import select_device
from training.config import load_config
from training.train import autocast_dtype, train


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best FLOP/s of n x n @ n x n matmuls for a few n."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def flops_per_token(model_cfg: dict, seq_len: int) -> float:
    from model.config import ModelConfig
    cfg = ModelConfig.from_hf_dict(model_cfg)
    return 6 * cfg.num_parameters() + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default="cpu-default")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--set", action="append", default=[], help="override KEY=VALUE")
    args = ap.parse_args(argv)
    runs = tempfile.mkdtemp(prefix="throughput-")
    overrides = {"data": args.data, "runs_dir": runs, "max_steps": str(args.steps),
                 "log_every": str(max(1, args.steps // 3)), "eval_every": "100000",
                 "eval_batches": "1", "checkpoint_every": "100000", "sample_every_eval": "0"}
    overrides |= dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.config, overrides)
    amp = autocast_dtype(cfg, select_device(cfg.device))
    try:
        run_dir = train(cfg, log=lambda s: None)
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        info = json.loads((run_dir / "config.json").read_text())
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m][1:]  # skip warm-up
    tps = sum(rates) / len(rates)
    fpt = flops_per_token(info["model"], cfg.seq_len)
    peak = matmul_peak(amp or torch.float32)
    achieved = tps * fpt
    print(f"machine: {describe()}")
    print(f"preset {args.config} ({', '.join(args.set) or 'as is'}): "
          f"{info['model']['num_hidden_layers']} layers x {info['model']['hidden_size']}, "
          f"seq {cfg.seq_len}, {cfg.tokens_per_step:,} tokens/step, "
          f"autocast {amp or 'off (fp32)'}")
    print(f"tokens/s            {tps:12,.0f}")
    print(f"model FLOPs/token   {fpt / 1e6:12.1f} M")
    print(f"achieved            {achieved / 1e9:12.1f} GFLOP/s")
    print(f"measured peak       {peak / 1e9:12.1f} GFLOP/s ({amp or torch.float32} matmul)")
    print(f"MFU                 {100 * achieved / peak:12.1f} %   (target >= 45%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
