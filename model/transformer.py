"""The decoder that training, evaluation and serving all share.

One small class per concept, readable top to bottom. Module attribute names follow
Hugging Face's `LlamaForCausalLM` so that its state-dict keys map by a fixed prefix
(see `hf_key`), which is what makes our `model.safetensors` loadable by `transformers`.

The same classes run the other supported families (model/config.py FAMILIES) through a
few switches of the config: biases on the projections, LayerNorm instead of RMSNorm, a
plain GELU MLP (`c_fc`, `c_proj`, as Starcoder2 and GPTBigCode name it), learned
positions instead of RoPE, and RoPE scaling (model/rope.py). model/families.py maps
their checkpoints' tensor names onto these modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import attend
from model.config import ModelConfig
from model.kv_cache import BranchCache, KVCache
from model.rope import inv_freq_and_scale


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Llama does, then cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:      # one call instead of seven (a decode step: 13 norms)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def norm(config: ModelConfig) -> nn.Module:
    """The family's normalisation: RMSNorm, or LayerNorm with a bias."""
    if config.layer_norm:
        return nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps)
    return RMSNorm(config.hidden_size, config.rms_norm_eps)


class Rotary(nn.Module):
    """Rotary position embedding tables (the non-interleaved "rotate half" layout of HF),
    with the checkpoint's RoPE scaling and its attention factor folded into cos and sin.

    HF rotates x into x * cos + cat(-x2, x1) * sin (x1, x2 its halves); the same numbers
    come from roll(x, half) * sin with the first half of sin negated, in two calls fewer,
    and the rows of a forward pass's positions are cut once for all layers, not per layer
    (a decode step is a few hundred such small calls)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, scale = inv_freq_and_scale(config.head_dim, config.rope_theta,
                                             config.rope_scaling,
                                             config.max_position_embeddings)
        t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin() * scale
        self.register_buffer("cos", emb.cos() * scale, persistent=False)
        self.register_buffer("sin", torch.cat((-sin[:, :sin.shape[1] // 2],
                                               sin[:, sin.shape[1] // 2:]), dim=-1),
                             persistent=False)      # signed: see the class docstring
        self._rows: tuple = ()                      # (key, cos rows, sin rows)

    def rows(self, start: int, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions start..start+T-1, cut once per forward pass."""
        # (inference-mode tensors cannot be saved for backward: never reused in training)
        key = (start, T, dtype, self.cos.data_ptr(), torch.is_inference_mode_enabled())
        if not self._rows or self._rows[0] != key:
            self._rows = (key, self.cos[start:start + T].to(dtype),
                          self.sin[start:start + T].to(dtype))
        return self._rows[1], self._rows[2]

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x of shape [B, H, T, D] for positions start..start+T-1."""
        cos, sin = self.rows(start, x.shape[2], x.dtype)
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V heads on scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.hd = config.head_dim
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.n_heads * self.hd, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, h, bias=config.attention_out_bias)
        self.qkv_proj: nn.Linear | None = None     # q, k and v in one product (fuse())

    def fuse(self) -> bool:
        """Replace q_proj, k_proj and v_proj by one linear layer of their stacked weights,
        for inference: one matrix product instead of three per layer and token (decoding
        a token is a few dozen products this small, each paying a fixed overhead). The
        model's state dict changes with it: a fused model is not saved or trained.
        Returns whether it fused (not when fused already, or quantized first)."""
        parts = [self.q_proj, self.k_proj, self.v_proj]
        if self.qkv_proj is not None or not all(type(p) is nn.Linear for p in parts):
            return False                # fused already, or quantized (model/quantize.py)
        self.qkv_proj = stacked(parts)
        self.q_proj = self.k_proj = self.v_proj = None
        return True

    def forward(self, x: torch.Tensor, rotary: Rotary | None, layer: int,
                cache: KVCache | BranchCache | None, start: int,
                last_only: bool = False) -> torch.Tensor:
        """With `last_only`, every position's keys and values are computed (and cached)
        but only the last position attends: the output is [B, 1, hidden]."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.hd
        if self.qkv_proj is not None:
            # q and k side by side are rotated as one tensor: the same numbers in half the
            # elementwise calls (0.7 of a 600-token prefill's 16.6 ms)
            qkv = self.qkv_proj(x)
            qk = qkv[..., :(H + Hkv) * D].view(B, T, H + Hkv, D).transpose(1, 2)
            v = qkv[..., (H + Hkv) * D:].view(B, T, Hkv, D).transpose(1, 2)
            if rotary is not None:
                qk = rotary(qk, start)
            q, k = qk.split([H, Hkv], dim=1)
        else:
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
            k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)
            v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
            if rotary is not None:
                q, k = rotary(q, start), rotary(k, start)
        if last_only:
            q, T = q[:, :, -1:], 1
        y = cache.attend(layer, q, k, v, start) if cache is not None else attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.gate_up_proj: nn.Linear | None = None    # gate and up in one product (fuse())

    def fuse(self) -> bool:
        """Replace gate_proj and up_proj by one linear layer of their stacked weights, for
        inference (as Attention.fuse; returns whether it fused)."""
        parts = [self.gate_proj, self.up_proj]
        if self.gate_up_proj is not None or not all(type(p) is nn.Linear for p in parts):
            return False
        self.gate_up_proj = stacked(parts)
        self.gate_proj = self.up_proj = None
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


def stacked(layers: list[nn.Linear]) -> nn.Linear:
    """One linear layer computing `layers` side by side (outputs concatenated in order)."""
    first = layers[0]
    bias = first.bias is not None
    out = nn.Linear(first.in_features, sum(layer.out_features for layer in layers), bias=bias,
                    device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if bias:
            out.bias.copy_(torch.cat([layer.bias for layer in layers]))
    out.requires_grad_(False)
    return out


class PlainMLP(nn.Module):
    """GPT-style feed-forward (Starcoder2, GPTBigCode): c_proj(act(c_fc(x)))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.c_fc = nn.Linear(h, i, bias=bias)
        self.c_proj = nn.Linear(i, h, bias=bias)
        self.act = config.hidden_act

    def fuse(self) -> bool:
        """Nothing to fuse: c_fc is already one product (the interface of MLP.fuse)."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(activation(self.act, self.c_fc(x)))


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    return F.gelu(x, approximate="tanh")       # gelu_pytorch_tanh, gelu_new


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = norm(config)
        self.mlp = MLP(config) if config.gated_mlp else PlainMLP(config)

    def forward(self, x, rotary, layer, cache, start, last_only=False):
        """`last_only`: the output at the last position alone, [B, 1, hidden] (the
        attention's keys and values still cover every position)."""
        y = self.self_attn(self.input_layernorm(x), rotary, layer, cache, start, last_only)
        x = (x[:, -1:] if last_only else x) + y
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Token ids in, next-token logits out; optionally reading and extending a KVCache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings,
                                            config.hidden_size) \
            if config.learned_positions else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = norm(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = None if config.learned_positions else Rotary(config)
        # A compiled one-token step (model/decode_step.py), set for serving.
        self.decode_step: Callable[[torch.Tensor, object], torch.Tensor | None] | None = None
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if self.embed_tokens.weight.device.type == "meta":
            return                      # weights come from a checkpoint (see empty())
        self.apply(self._init_weights)
        # GPT-2 style: shrink the residual projections so depth does not blow up activations
        std = config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
        for block in self.layers:
            nn.init.normal_(block.self_attn.o_proj.weight, std=std)
            mlp = block.mlp
            nn.init.normal_(mlp.down_proj.weight if config.gated_mlp else mlp.c_proj.weight,
                            std=std)

    @classmethod
    def empty(cls, config: ModelConfig, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Transformer:
        """A model whose weights are allocated but not initialised, for loading a
        checkpoint into (no time spent on random initialisation, no second copy)."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to(dtype).to_empty(device=device)     # no fp32 copy on the way
        if model.rotary is not None:
            model.rotary = Rotary(config).to(device=device, dtype=dtype)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | BranchCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids [B, T] → logits [B, T, vocab] (or [B, 1, vocab] with last_only).

        With a cache, the ids are positions cache.length.. and their keys/values are
        appended to it. A step over a KV cache goes through `decode_step` where one is
        set and it applies (one token, a draft's few, beam rows).
        """
        if self.decode_step is not None and cache is not None:
            logits = self.decode_step(input_ids, cache)
            if logits is not None:
                return logits[:, -1:] if last_only else logits
        return self.lm_head(self.features(input_ids, cache, last_only))

    def features(self, input_ids: torch.Tensor, cache: KVCache | BranchCache | None = None,
                 last_only: bool = False) -> torch.Tensor:
        """The final normed hidden states [B, T, hidden] that `forward` turns into logits:
        what a training-only head (training/horizon.py) reads as well."""
        start = cache.length if cache is not None else 0
        if start + input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {start + input_ids.shape[1]} tokens exceeds the model's "
                f"context of {self.config.max_position_embeddings}"
            )
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            positions = torch.arange(start, start + input_ids.shape[1], device=x.device)
            x = x + self.embed_positions(positions)
        # With `last_only` the last layer attends and computes its MLP for the last
        # position alone: the other positions' outputs of the last layer feed nothing
        # (a prefill's last layer is a sixth of the shipped model's work).
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, self.rotary, i, cache, start, last_only and i == last)
        if cache is not None:
            cache.advance(input_ids[0].tolist())
        if last_only:
            x = x[:, -1:]              # (a model without layers)
        return self.norm(x)

    def new_cache(self, batch: int = 1, capacity: int | None = None) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.config, batch, capacity, device=p.device, dtype=p.dtype)

    @staticmethod
    def hf_key(name: str) -> str:
        """Our state-dict key → the Hugging Face LlamaForCausalLM key (the only mapping)."""
        return name if name.startswith("lm_head.") else "model." + name

    @staticmethod
    def from_hf_key(name: str) -> str:
        return name[len("model."):] if name.startswith("model.") else name
