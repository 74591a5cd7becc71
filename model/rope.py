"""Rotary position embedding frequencies, with the context-extension variants that
published checkpoints use (`rope_scaling` / `rope_parameters` in their config.json).

Each variant is computed as Hugging Face transformers defines it, so that a checkpoint
gives the same logits here as there (tests compare them):
- default:  inv_freq = 1 / theta^(2i/d)
- linear:   inv_freq / factor (positions interpolated)
- dynamic:  NTK-aware scaling that only changes the frequencies for sequences longer than
            `max_position_embeddings`; this server never runs past that, so it is default
- llama3:   low frequencies divided by `factor`, high ones kept, a smooth ramp between
- yarn:     a per-dimension blend of interpolation and extrapolation, and an attention
            factor that scales cos and sin
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_type(scaling: dict[str, Any] | None) -> str:
    if not scaling:
        return "default"
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def check_scaling(scaling: dict[str, Any] | None) -> None:
    """ValueError naming the problem when a rope_scaling dict cannot be honoured."""
    kind = rope_type(scaling)
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: "
                         f"{', '.join(ROPE_TYPES)})")
    needs = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",)}.get(kind, ())
    missing = [k for k in needs if (scaling or {}).get(k) is None]
    if missing:
        raise ValueError(f"rope_scaling type {kind!r} needs {missing}")


def inv_freq_and_scale(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                       max_positions: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2], factor applied to cos and sin)."""
    dim = head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (theta ** exponents)
    kind = rope_type(scaling)
    s = scaling or {}
    if kind in ("default", "dynamic"):
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / s["factor"], 1.0
    if kind == "llama3":
        return _llama3(inv_freq, s), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, s, max_positions)
    raise ValueError(f"rope_scaling type {kind!r} is not supported")


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(dim: int, theta: float, s: dict[str, Any], max_positions: int
          ) -> tuple[torch.Tensor, float]:
    original = s["original_max_position_embeddings"]
    factor = s.get("factor") or max_positions / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos)) * (1 - extrapolation) + (1.0 / pos) * extrapolation
    return inv_freq, float(attention)
