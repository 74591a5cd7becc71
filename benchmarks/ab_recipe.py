"""A/B of recipe changes against `cpu-default`, at equal wall-clock, one arm at a time.

    python -m benchmarks.ab_recipe --data data/local-16384 [--data-8k data/local-8192]
        [--arms base,seed,softcap,...] [--minutes 10] [--out runs/ab_recipe.json]
        [--config cpu-default]

Every arm trains from scratch for the same measured seconds with the same loop as
`benchmarks/ab_gpt2.py` (the training script's optimizers, schedule on the clock, model
and loss compiled together, bf16 autocast) and is scored by bits per byte on the same
validation windows of the held-out packages. Arms (see ARMS):

- base: the preset as shipped (6 x 256 Llama, SwiGLU 704, GQA 8/4, tied head, vocab 16k);
- seed: base with another seed (data order and initialisation): the noise floor;
- softcap: logits soft-capped at 15 (15 tanh(z / 15)), as modded-nanogpt does;
- relu2: an ungated ReLU^2 MLP (c_proj(relu(c_fc(x))^2)) at the same parameter count (1056);
- relu2_gated: SwiGLU with ReLU^2 in place of SiLU (down(relu(gate(x))^2 * up(x))): the
  form a `transformers` Llama loads (`hidden_act = "relu2"`);
- unet: U-net skips: the output of layer i (first half) added, with a learned weight, to
  the input of layer n-1-i (second half);
- value_embed: a second embedding table of the K/V width added to the values of the first
  and the last layer (modded-nanogpt's value embeddings, one table shared by both);
- untied: a separate output head (+4.2M parameters at vocab 16k);
- deep: 12 x 192 (SwiGLU 576, 6 heads / 3 KV) at about the same parameters (8.5M);
- vocab8k: base on the same corpus tokenized with an 8,192-token vocabulary (`--data-8k`;
  bits per byte compare across tokenizers).

softcap, relu2, unet and value_embed change the architecture: a model trained with one
of them is no longer a plain Llama that `transformers` loads, which the shipped model must
be; they are measured here to know what that constraint costs. Results are merged into
`--out` arm by arm, so arms can run in separate sittings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.ab_gpt2 import run
from benchmarks.machine import describe
from model.config import ModelConfig
from model.transformer import Transformer
from training.config import TrainConfig, load_config
from training.data import load_dataset
from training.train import model_config


class ReLU2MLP(nn.Module):
    """Ungated feed-forward with a squared ReLU: c_proj(relu(c_fc(x))^2)."""

    def __init__(self, hidden: int, inner: int, out_std: float):
        super().__init__()
        self.c_fc = nn.Linear(hidden, inner, bias=False)
        self.c_proj = nn.Linear(inner, hidden, bias=False)
        nn.init.normal_(self.c_fc.weight, std=0.02)
        nn.init.normal_(self.c_proj.weight, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class GatedReLU2MLP(nn.Module):
    """Llama's gated MLP with a squared ReLU: down(relu(gate(x))^2 * up(x))."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.gate_proj(x)).square() * self.up_proj(x))


class PlusValue(nn.Module):
    """A value projection that adds the value embedding its model set for this pass."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj
        self.extra: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.proj(x)
        return v if self.extra is None else v + self.extra


class Variant(Transformer):
    """Our Llama with modded-nanogpt's architectural switches (training only: no cache)."""

    def __init__(self, config: ModelConfig, softcap: float = 0.0, relu2: int = 0,
                 relu2_gated: bool = False, unet: bool = False, value_embed: bool = False):
        super().__init__(config)
        n = config.num_hidden_layers
        self.softcap = softcap
        if relu2:
            std = config.initializer_range / (2 * n) ** 0.5
            for block in self.layers:
                block.mlp = ReLU2MLP(config.hidden_size, relu2, std)
        if relu2_gated:
            for block in self.layers:
                block.mlp = GatedReLU2MLP(block.mlp)
        self.skip_weights = nn.Parameter(torch.ones(n // 2)) if unet else None
        self.value_layers = (0, n - 1) if value_embed else ()
        self.value_embed = nn.Embedding(
            config.vocab_size, config.num_key_value_heads * config.head_dim) \
            if value_embed else None
        if self.value_embed is not None:
            nn.init.normal_(self.value_embed.weight, std=config.initializer_range)
            for i in self.value_layers:
                attn = self.layers[i].self_attn
                attn.v_proj = PlusValue(attn.v_proj)

    def forward(self, input_ids: torch.Tensor, cache=None, last_only: bool = False):
        if cache is not None or last_only:
            raise ValueError("the A/B variants are for training only")
        x = self.embed_tokens(input_ids)
        ve = self.value_embed(input_ids) if self.value_embed is not None else None
        n, skips = len(self.layers), []
        for i, block in enumerate(self.layers):
            if self.skip_weights is not None and i >= n - n // 2:
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            if i in self.value_layers:
                block.self_attn.v_proj.extra = ve
            x = block(x, self.rotary, i, None, 0)
            if self.skip_weights is not None and i < n // 2:
                skips.append(x)
        logits = self.lm_head(self.norm(x))
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


# name -> (description, config overrides, variant switches, which data)
ARMS: dict[str, tuple[str, dict[str, str], dict, str]] = {
    "base": ("cpu-default as shipped (6x256, SwiGLU, tied, 16k)", {}, {}, "16k"),
    "seed": ("base, seed 1 (noise floor)", {"seed": "1"}, {}, "16k"),
    "softcap": ("logit soft-cap 15", {}, {"softcap": 15.0}, "16k"),
    "relu2": ("ungated ReLU^2 MLP, 1056 wide (same params)", {}, {"relu2": 1056}, "16k"),
    "relu2_gated": ("gated ReLU^2 (SwiGLU's shape, relu^2 for silu)", {},
                    {"relu2_gated": True}, "16k"),
    "unet": ("U-net skips, learned weights", {}, {"unet": True}, "16k"),
    "value_embed": ("value embedding, layers 0 and 5", {}, {"value_embed": True}, "16k"),
    "untied": ("untied output head", {"tie_word_embeddings": "false"}, {}, "16k"),
    "deep": ("12x192, SwiGLU 576, 6/3 heads (same params)",
             {"hidden_size": "192", "intermediate_size": "576", "num_hidden_layers": "12",
              "num_attention_heads": "6", "num_key_value_heads": "3"}, {}, "16k"),
    "vocab8k": ("base on an 8,192-token vocabulary", {}, {}, "8k"),
}


def build(arm: str, data: str, preset: str = "cpu-default") -> tuple[nn.Module, TrainConfig]:
    """The arm's model, freshly initialised from its seed, and its training config."""
    _, overrides, switches, _ = ARMS[arm]
    cfg = load_config(preset, {"data": data, "grad_accum": "1", "eval_batches": "16",
                                      "schedule": "wsd"} | overrides)
    tok, _, _ = load_dataset(data)
    torch.manual_seed(cfg.seed)
    mc = model_config(cfg, tok)
    model = Variant(mc, **switches) if switches else Transformer(mc)
    return model, cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the data folder of the 16k arms")
    ap.add_argument("--data-8k", help="the same corpus prepared with --vocab-size 8192")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--config", default="cpu-default", help="the preset every arm changes")
    ap.add_argument("--out", type=Path, default=Path("runs/ab_recipe.json"))
    args = ap.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(unknown)}; expected some of {', '.join(ARMS)}")
    if any(ARMS[a][3] == "8k" for a in arms) and not args.data_8k:
        ap.error("the vocab8k arm needs --data-8k (the corpus prepared with --vocab-size 8192)")
    print(f"machine: {describe()}")
    saved = json.loads(args.out.read_text()) if args.out.exists() else {"results": {}}
    for arm in arms:
        desc, _, _, which = ARMS[arm]
        data = args.data_8k if which == "8k" else args.data
        model, cfg = build(arm, data, args.config)
        r = run(arm, model, cfg, data, args.minutes) | {
            "description": desc, "minutes": args.minutes, "machine": describe(), "data": data}
        saved["results"][arm] = r
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(saved, indent=2) + "\n")
        print(f"{arm:<12} {r['params'] / 1e6:5.2f}M params {r['steps']:5d} steps "
              f"{r['tokens'] / 1e6:6.2f}M tokens {r['train_seconds']:5.0f}s  "
              f"val bpb {r['val_bpb']:.4f}   {desc}", flush=True)
    base = saved["results"].get("base")
    if base:
        print("\narm          val bpb   vs base")
        for arm, r in sorted(saved["results"].items(), key=lambda kv: kv[1]["val_bpb"]):
            print(f"{arm:<12} {r['val_bpb']:.4f}  {r['val_bpb'] - base['val_bpb']:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
