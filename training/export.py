"""Export a run's best model (or a given checkpoint) as a model directory for the server.

    python -m training.export --run runs/NAME --out DIR [--checkpoint latest|STEP] [--fp32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from model.checkpoint import ModelDirError, load_model_dir, save_model_dir
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from training.checkpoints import CheckpointError, apply_weights, latest_checkpoint, load_checkpoint
from training.config import TrainConfig
from training.prepare import TOKENIZER
from training.train import export_best, run_meta


def export_checkpoint(run_dir: Path, which: str, out: Path, dtype: torch.dtype) -> Path:
    """A specific checkpoint (`latest` or a step number) rather than the best one."""
    info = json.loads((run_dir / "config.json").read_text())
    ckpts = run_dir / "checkpoints"
    path = latest_checkpoint(ckpts) if which == "latest" else ckpts / f"step_{int(which):07d}"
    if path is None or not path.exists():
        raise CheckpointError(f"{run_dir} has no checkpoint {which!r}.")
    model = Transformer(ModelConfig.from_hf_dict(info["model"]))
    ck = load_checkpoint(path)
    apply_weights(model, ck)
    cfg = TrainConfig(**info["train"])
    tok = Tokenizer.from_file(Path(cfg.data) / TOKENIZER)
    return save_model_dir(out, model, tok, run_meta(cfg, ck.step), dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="runs/NAME")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", default="best", help="best (default), latest, or a step")
    ap.add_argument("--fp32", action="store_true", help="keep fp32 weights (default bf16)")
    args = ap.parse_args(argv)
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    try:
        if args.checkpoint == "best":
            out = export_best(args.run, args.out, dtype)
        else:
            out = export_checkpoint(args.run, args.checkpoint, args.out, dtype)
        load_model_dir(out, device="cpu")  # refuse to leave behind a directory that won't load
    except (CheckpointError, ModelDirError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run} ({args.checkpoint}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
