"""Optimisers and learning-rate schedules.

- `lr_scale(step)`: linear warmup, then cosine to `min_lr_ratio`, or warmup-stable-decay
  (flat, then a linear decay over the last `decay_fraction` of steps; WSD lets a run be
  extended without restarting the schedule).
- `Muon`: momentum followed by Newton-Schulz orthogonalisation of each 2-D update, for the
  hidden weight matrices; embeddings, norms and the head stay on AdamW.
"""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def lr_scale(step: int, cfg: TrainConfig, wall_s: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based). With a
    time budget, `wall_s` (the run's wall-clock so far) also moves the schedule on: the
    run is as far along as the larger of its step and time fractions, so a run that will
    not reach max_steps in its budget still decays and ends at the floor."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    total = max(cfg.max_steps, cfg.warmup_steps + 1)
    timed = wall_s / (cfg.time_budget_min * 60) if cfg.time_budget_min > 0 else 0.0
    if cfg.schedule == "wsd":
        decay_start = total - int(cfg.decay_fraction * total)
        frac = (step - decay_start) / max(1, total - decay_start)
        if cfg.decay_fraction > 0:
            frac = max(frac, (timed - (1 - cfg.decay_fraction)) / cfg.decay_fraction)
        if frac < 0:
            return 1.0
        return 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, frac)
    if cfg.schedule == "cosine":
        frac = min(1.0, max(timed, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; expected cosine or wsd.")


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with g's row/column spaces (quintic iteration)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose 2-D updates are orthogonalised."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                update = newton_schulz(p.grad.add(buf, alpha=group["momentum"]))
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig,
                     extra: torch.nn.Module | None = None) -> list[torch.optim.Optimizer]:
    """AdamW over everything (weight decay on matrices only), or Muon for the hidden 2-D
    weights plus AdamW for the rest. Each group remembers its base lr as `base_lr`.
    `extra` is a training-only module outside the model (the horizon head): AdamW, no
    weight decay, in a group of its own."""
    matrices, others, hidden = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cfg.optimizer == "muon" and p.ndim == 2 and "layers." in name:
            hidden.append(p)
        elif p.ndim >= 2:
            matrices.append(p)
        else:
            others.append(p)
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    adamw = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
         {"params": others, "weight_decay": 0.0, "base_lr": cfg.lr},
         *([{"params": list(extra.parameters()), "weight_decay": 0.0, "base_lr": cfg.lr}]
           if extra is not None else [])],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
    if cfg.optimizer == "adamw":
        return [adamw]
    if cfg.optimizer == "muon":
        muon = Muon([{"params": hidden, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr,
                    weight_decay=cfg.weight_decay)
        return [adamw, muon]
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adamw or muon.")


def set_lr(optimizers: list[torch.optim.Optimizer], scale: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
