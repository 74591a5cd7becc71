"""Which FIM rate (and level) to train with: equal continuations of one checkpoint.

    python -m benchmarks.fim_rate --init-from runs/default-4/checkpoints/step_0000800 \
        --data data/local-16384 [--arms context:0.5,document:0.5,context:0,context:0.9]
        [--steps 150] [--report-only]

Each arm continues the same weights at the same place in the data for the same number of
steps with the `cpu-default` recipe (a short warmup-stable-decay), changing only
`fim_level` and `fim_rate`, then `training.evaluate` scores it on the held-out packages:
left-to-right bits per byte (does FIM cost the left-to-right model anything?), FIM middle
bits per byte and FIM single-line exact match (what FIM buys). Continuations rather than
runs from scratch because a few minutes from scratch leave FIM exact match at zero for
every arm. `--report-only` prints the table from arms already run.
Results go to stdout and to `runs/fim_rate.json`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import describe
from training.data import FIM_LEVELS

RECIPE = ["--warmup-steps", "15", "--lr", "4e-4", "--muon-lr", "0.005", "--weight-decay",
          "0.02", "--decay-fraction", "0.5"]


def arm_name(level: str, rate: float) -> str:
    """fim-ctx50, fim-doc50, fim-l2r (rate 0: the level makes no difference)."""
    short = {"context": "ctx", "document": "doc"}[level]
    return "fim-l2r" if rate == 0 else f"fim-{short}{round(rate * 100)}"


def run_arm(level: str, rate: float, args: argparse.Namespace) -> None:
    name = arm_name(level, rate)
    every = str(max(1, args.steps // 2))
    subprocess.run([sys.executable, "-m", "training.train", "--config", args.config,
                    "--data", args.data, "--init-from", args.init_from, "--name", name,
                    "--max-steps", str(args.steps), *RECIPE, "--eval-every", every,
                    "--checkpoint-every", every, "--fim-level", level, "--fim-rate", str(rate),
                    "--runs-dir", args.runs_dir], check=True)
    run = Path(args.runs_dir) / name
    # The last step, not best/: best/ is chosen by left-to-right validation loss, and a short
    # re-warmed continuation can end above its starting point, leaving best/ = the start.
    subprocess.run([sys.executable, "-m", "training.export", "--run", str(run), "--out",
                    str(run / "final"), "--checkpoint", "latest", "--fp32"], check=True)
    subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(run / "final"),
                    "--data", args.data, "--out", str(run / "eval.json"),
                    *shlex.split(args.eval_args)], check=True)


def arm_result(level: str, rate: float, runs_dir: str) -> dict:
    run = Path(runs_dir) / arm_name(level, rate)
    if not (run / "eval.json").is_file():
        raise SystemExit(f"error: {run} has no eval.json: run that arm first "
                         "(without --report-only).")
    ev = json.loads((run / "eval.json").read_text())
    loop = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [m["val_bpb"] for m in loop if "val_bpb" in m]
    return {"arm": run.name, "fim_level": level, "fim_rate": rate,
            "loop_val_bpb": vals[-1], "l2r_bpb": ev["bits_per_byte"]["model"],
            "fim_bpb": ev.get("fim_bits_per_byte", {}).get("model"),
            "fim_em": ev["fim_single_line"]["exact_match"],
            "fim_es": ev["fim_single_line"]["edit_similarity"],
            "line_em": ev["line_completion"]["exact_match"],
            "line_es": ev["line_completion"]["edit_similarity"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--arms", default="context:0.5,document:0.5,context:0,context:0.9")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--config", default="cpu-default", help="training preset of every arm")
    ap.add_argument("--eval-args", default="", help="more training.evaluate flags, quoted")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    arms = []
    for spec in args.arms.split(","):
        level, _, rate = spec.partition(":")
        if level not in FIM_LEVELS or not rate:
            ap.error(f"arm {spec!r} is not LEVEL:RATE with LEVEL one of {', '.join(FIM_LEVELS)}")
        arms.append((level, float(rate)))
    if not args.report_only:
        for level, rate in arms:
            run_arm(level, rate, args)
    rows = [arm_result(level, rate, args.runs_dir) for level, rate in arms]
    print(f"machine: {describe()}")
    print(f"continuations of {args.init_from}, {args.steps} steps each")
    print("| arm | level | rate | loop val bpb | held-out bpb | FIM middle bpb | "
          "FIM line EM | FIM line ES | line EM | line ES |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fim_bpb = "-" if r["fim_bpb"] is None else f"{r['fim_bpb']:.3f}"
        print(f"| {r['arm']} | {r['fim_level']} | {r['fim_rate']} | {r['loop_val_bpb']:.4f} | "
              f"{r['l2r_bpb']:.4f} | {fim_bpb} | {r['fim_em']:.3f} | {r['fim_es']:.3f} | "
              f"{r['line_em']:.3f} | {r['line_es']:.3f} |")
    out = Path(args.runs_dir) / "fim_rate.json"
    out.write_text(json.dumps({"machine": describe(), "init_from": args.init_from,
                               "steps": args.steps, "arms": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
