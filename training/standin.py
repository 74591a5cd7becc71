"""Build a small stand-in model from the local Python standard library, in a few minutes.

Until the trained default model ships (see docs), `scripts/demo.sh` and the tests use this
to get a real, if weak, model directory without any download: the tokenizer is trained on
stdlib sources and a ~3M-parameter Llama is trained briefly with FIM. It is a deliberately
small, self-contained loop; the full pipeline lives in `training.train`.

    python -m training.standin --out DIR [--steps 600] [--files 400]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import ModelMeta, save_model_dir
from model.config import ModelConfig
from model.device import cpu_has_fast_bf16
from model.tokenizer import PSM, Tokenizer, train_tokenizer
from model.transformer import Transformer
from training.fim import document_tokens
from training.train import NextTokenLoss

STANDIN_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2,
                      max_position_embeddings=1024)


def stdlib_texts(max_files: int = 400, seed: int = 0, min_bytes: int = 1024,
                 max_bytes: int = 100_000) -> list[str]:
    """A random sample of UTF-8 standard-library modules between min and max bytes,
    skipping the test suite."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(root.rglob("*.py"))
             if "test" not in p.relative_to(root).parts[0]
             and "site-packages" not in p.parts
             and min_bytes <= p.stat().st_size <= max_bytes]
    random.Random(seed).shuffle(paths)
    texts = []
    for p in paths:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if len(texts) >= max_files:
            break
    return texts


def token_stream(tok: Tokenizer, texts: list[str], seed: int, fim_rate: float) -> np.ndarray:
    rng = random.Random(seed)
    out: list[int] = []
    for text in texts:
        out.extend(document_tokens(tok, text, rng, fim_rate=fim_rate))
    return np.asarray(out, dtype=np.int64)


def train_small(tok: Tokenizer, texts: list[str], config: ModelConfig, steps: int,
                seq_len: int = 256, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                fim_rate: float = 0.5, log: Callable[[str], None] = print) -> Transformer:
    """Train `config` from scratch on `texts` for `steps` AdamW steps (warmup + cosine)."""
    torch.manual_seed(seed)
    data = token_stream(tok, texts, seed, fim_rate)
    if len(data) <= seq_len + 1:
        raise ValueError(f"only {len(data)} tokens of training text; need more than {seq_len}")
    model = Transformer(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    next_token_loss = NextTokenLoss(model)
    warmup = max(1, steps // 20)
    use_bf16 = cpu_has_fast_bf16()
    gen = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else \
            0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        starts = gen.integers(0, len(data) - seq_len - 1, batch_size)
        chunk = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = next_token_loss(chunk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) * batch_size * seq_len / (time.time() - t0)
            log(f"step {step + 1}/{steps} loss {loss.item():.3f} {rate:,.0f} tok/s")
    model.eval()
    return model


def build_standin(out: Path, steps: int = 600, max_files: int = 400, vocab_size: int = 4096,
                  seed: int = 0, log: Callable[[str], None] = print) -> Path:
    texts = stdlib_texts(max_files, seed)
    log(f"stand-in: {len(texts)} stdlib files, {sum(map(len, texts)):,} characters")
    tok = train_tokenizer(texts, vocab_size)
    config = ModelConfig(vocab_size=vocab_size, **STANDIN_CONFIG,
                         eos_token_id=tok.eot_id, bos_token_id=tok.eot_id)
    model = train_small(tok, texts, config, steps, seed=seed, log=log)
    meta = ModelMeta(fim_order=PSM, context_size=config.max_position_embeddings,
                     provenance={"kind": "stand-in", "data": "python stdlib sample",
                                 "files": len(texts), "steps": steps, "seed": seed})
    return save_model_dir(out, model, tok, meta, dtype=torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.time()
    build_standin(args.out, args.steps, args.files, seed=args.seed,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"stand-in model written to {args.out} in {time.time() - t:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
