"""Draw a run's loss curves from its `metrics.jsonl` into a PNG (needs matplotlib).

    python -m training.plot runs/NAME [runs/OTHER ...] --out docs/img/loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    """Records of a run; after a resume, later lines for a step replace earlier ones."""
    by_key: dict[tuple[int, str], dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        kind = "val" if "val_loss" in rec else "train" if "train_loss" in rec else "event"
        by_key[(rec["step"], kind)] = rec
    return [by_key[k] for k in sorted(by_key)]


def tokens_before(run_dir: Path) -> int:
    """Tokens the run's starting weights had already seen: a run started with --init-from
    a training checkpoint continues that run's curve instead of starting again at 0."""
    try:
        init = json.loads((run_dir / "config.json").read_text())["train"].get("init_from")
    except (OSError, ValueError, KeyError):
        return 0
    ckpt = Path(init) if init else None
    if ckpt is None or not (ckpt / "state.pt").is_file():
        return 0
    parent = ckpt.parent.parent
    step = int(ckpt.name.removeprefix("step_")) if ckpt.name.startswith("step_") else -1
    before = tokens_before(parent) if parent != run_dir else 0
    for rec in read_metrics(parent) if (parent / "metrics.jsonl").exists() else []:
        if rec["step"] == step and "tokens" in rec:
            return before + rec["tokens"]
    return before


def plot(runs: list[Path], out: Path) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        recs = read_metrics(run)
        offset = tokens_before(run)
        train = [((offset + r["tokens"]) / 1e6, r["train_loss"]) for r in recs
                 if "train_loss" in r]
        val = [((offset + r.get("tokens", 0)) / 1e6, r["val_bpb"]) for r in recs
               if "val_bpb" in r]
        if train:
            ax1.plot(*zip(*train, strict=True), label=run.name, linewidth=0.8)
        if val:
            ax2.plot(*zip(*val, strict=True), marker="o", markersize=3, label=run.name)
    ax1.set(xlabel="training tokens (M)", ylabel="train loss (nats/token)",
            title="training loss")
    ax2.set(xlabel="training tokens (M)", ylabel="bits per byte",
            title="validation bits/byte (held-out packages)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    for r in args.runs:
        if not (r / "metrics.jsonl").exists():
            print(f"error: {r} has no metrics.jsonl.", file=sys.stderr)
            return 2
    print(f"wrote {plot(args.runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
