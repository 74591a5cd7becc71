"""A/B: our recipe vs a GPT-2-style baseline, same shards, same wall-clock, same loop.

    python -m benchmarks.ab_gpt2 --data data/NAME [--minutes 10]

A (ours): the Llama decoder from `model/` (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings)
with the `cpu-default` recipe (Muon at lr 0.02 for the blocks' matrices, AdamW at 3e-3 for
embeddings and norms, warmup then warmup-stable-decay).
B (baseline): GPT-2 style — learned absolute positions, LayerNorm with biases, GELU MLP
(4x), full multi-head attention — with AdamW at lr 6e-4 and warmup + cosine, the classic
nanoGPT settings. Both have about the same parameter count, see the same packed batches
(FIM on the fly), use bf16 autocast where the CPU supports it, and are trained for the
same measured wall-clock; validation bits per byte on the same held-out windows decide.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.machine import describe
from model.device import select_device
from model.transformer import Transformer
from training.config import TrainConfig, load_config
from training.data import PackedLoader, load_dataset, validation_batches
from training.optim import build_optimizers, lr_scale, set_lr
from training.train import (
    NextTokenLoss,
    autocast_dtype,
    compiled,
    evaluate_loss,
    model_config,
    token_byte_lengths,
)


class GPT2Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT2(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(GPT2Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def run(name: str, model: nn.Module, cfg: TrainConfig, data: str, minutes: float) -> dict:
    device = select_device(cfg.device)
    amp = autocast_dtype(cfg, device)
    tok, _, splits = load_dataset(data)
    loader = PackedLoader(splits["train"], tok, cfg.seq_len, cfg.batch_size, cfg.seed,
                          cfg.fim_rate, cfg.spm_rate)
    val = validation_batches(splits["val"], tok, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    byte_len = token_byte_lengths(tok, model_config(cfg, tok).vocab_size)
    torch.manual_seed(cfg.seed)
    # The training script's own optimizer builder and schedule, so the A/B measures the
    # recipe that `training.train` runs (AdamW here, or Muon when a preset asks for it);
    # both arms are compiled (model and loss together, as training does) when the preset
    # compiles; compile time falls in the untimed first steps.
    optimizers = build_optimizers(model, cfg)
    net = compiled(NextTokenLoss(model), cfg, device)

    def step(i: int) -> float:
        set_lr(optimizers, lr_scale(i, cfg))
        batch = torch.from_numpy(loader.next_batch())
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = net(batch)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            opt.step()
        return loss.item()

    model.train()
    for i in range(3):                      # the first steps pay one-time costs: not timed
        step(i)
    t0 = time.time()
    for i in range(3, 8):                   # calibrate seconds per step
        step(i)
    budget = minutes * 60
    nominal = max(20, int(budget / ((time.time() - t0) / 5)))
    cfg = replace(cfg, max_steps=nominal, warmup_steps=max(10, nominal // 20))
    # The schedule runs on the clock: each step takes the learning rate of the share of the
    # budget already spent, and training stops when the budget is. Both arms get the same
    # seconds and finish their decay however their seconds per step drift (a step count
    # fixed from a short calibration gave one arm 12% more time than the other).
    losses, steps = [], 8
    while (spent := time.time() - t0) < budget:
        losses.append(step(min(nominal - 1, int(spent / budget * nominal))))
        steps += 1
    train_seconds = time.time() - t0
    loss, bpb = evaluate_loss(model, val, byte_len, device, amp)
    params = sum(p.numel() for p in model.parameters())
    return {"name": name, "params": params, "steps": steps, "compiled": cfg.compile,
            "optimizer": cfg.optimizer,
            "tokens": steps * cfg.batch_size * cfg.seq_len,
            "train_seconds": train_seconds,
            "train_loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "val_loss": loss, "val_bpb": bpb}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("runs/ab_gpt2.json"))
    args = ap.parse_args(argv)
    base = load_config("cpu-default", {"data": args.data, "grad_accum": "1",
                                       "eval_batches": "16"})
    tok, _, _ = load_dataset(args.data)
    ours_cfg = replace(base, schedule="wsd")
    ours = Transformer(model_config(ours_cfg, tok))
    # Same width and depth; GPT-2's 4x GELU MLP and full attention make it slightly larger.
    gpt2_cfg = replace(base, optimizer="adamw", lr=6e-4, schedule="cosine", min_lr_ratio=0.1)
    gpt2 = GPT2(model_config(base, tok).vocab_size, base.hidden_size, base.num_hidden_layers,
                base.num_attention_heads, base.seq_len)
    print(f"machine: {describe()}")
    results = []
    for name, model, cfg in ((f"ours (Llama, {ours_cfg.optimizer} + WSD)", ours, ours_cfg),
                             ("GPT-2 baseline (AdamW + cosine, lr 6e-4)", gpt2, gpt2_cfg)):
        r = run(name, model, cfg, args.data, args.minutes)
        results.append(r)
        print(f"{name:<42} {r['params'] / 1e6:5.2f}M params {r['steps']:5d} steps "
              f"{r['tokens'] / 1e6:6.2f}M tokens {r['train_seconds']:6.0f}s  "
              f"val loss {r['val_loss']:.4f}  val bpb {r['val_bpb']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": describe(), "minutes": args.minutes,
                                    "results": results}, indent=2) + "\n")
    better = results[0]["val_bpb"] < results[1]["val_bpb"]
    print(f"ours {'beats' if better else 'does NOT beat'} the baseline: "
          f"{results[0]['val_bpb']:.4f} vs {results[1]['val_bpb']:.4f} bits/byte")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
