"""A compiled one-token decode step: the per-operation overhead of eager PyTorch taken out.

Decoding one token with the shipped model is ~150 small tensor operations (norms, rotary,
casts around the int8 products, reshapes, adds), each paying a fixed dispatch cost that
dwarfs its arithmetic on a CPU: an eager step takes ~3 ms where its products take ~1.
`torch.compile` (inductor) turns the step into a few fused kernels around the products,
so it is written here for compilation:

- it works in the KV cache's own preallocated buffers (model/kv_cache.KVCache: one tensor
  per layer of the cache's full capacity), writing the new key/value at the position
  given as a tensor, and attends over the whole capacity with the positions not written
  yet masked out: every step has the same shapes, so one compiled graph serves every
  position and nothing is recompiled as the cache grows;
- only batch-1 steps of one token over a KVCache take it (greedy decoding, the common
  case); prompts, beams, drafts and anything else stay on the eager model.

Compiling costs seconds (about 20 s for the shipped model on 2 cores the first time, 4 s
once inductor's on-disk cache holds it): the server compiles in the background after its
warm-up and answers from the eager model until the compiled step is ready
(server/engine.py). A step that would need compiling again (another capacity, another
mode) is not compiled on a request's time: it falls back to the eager model.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn.functional as F

from model.kv_cache import KVCache
from model.paths import cache_dir
from model.transformer import Transformer

log = logging.getLogger("codecomplete")


def available() -> str | None:
    """Why compiled decoding cannot be used with this PyTorch, or None when it can."""
    if not hasattr(torch, "compile") or not hasattr(torch.compiler, "set_stance"):
        return f"torch {torch.__version__} has no torch.compiler.set_stance (needs 2.6+)"
    return None


def compile_by_default(device: torch.device) -> bool:
    """Whether the server compiles the decode step when not told (`--compile auto`): on a
    CPU, where it measured ~2x faster per token (docs/models.md). No GPU was at hand to
    measure it on one (there it would want a CUDA graph as well); `--compile on` tries."""
    return device.type == "cpu" and available() is None


class DecodeStep:
    """The model's one-token step for caches of `capacity` positions, compiled on
    `compile()`; called by Transformer.forward, which gets None back whenever the step
    does not apply (and then runs the eager model)."""

    def __init__(self, model: Transformer, capacity: int):
        self.model = model
        self.capacity = capacity
        self.ready = False
        self.failed: str | None = None
        self.steps = 0                             # tokens decoded by the compiled step
        self._fn = None
        p = model.embed_tokens.weight
        self._slots = torch.arange(capacity, device=p.device)

    def step(self, token: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
             vs: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """Logits [1, 1, vocab] for `token` [1, 1] at position `pos` [1]; the key and value
        of every layer are written into `ks`/`vs` [1, Hkv, capacity, D] at `pos`."""
        m, c = self.model, self.model.config
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        x = m.embed_tokens(token)
        if m.embed_positions is not None:
            x = x + m.embed_positions(pos)
        if m.rotary is not None:
            cos = m.rotary.cos.index_select(0, pos).to(x.dtype)
            sin = m.rotary.sin.index_select(0, pos).to(x.dtype)
        hidden = slots > pos                       # positions not written yet
        for i, block in enumerate(m.layers):
            a = block.self_attn
            h = block.input_layernorm(x)
            if a.qkv_proj is not None:
                q, k, v = a.qkv_proj(h).split([H * D, Hkv * D, Hkv * D], dim=-1)
            else:
                q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
            q = q.view(1, H, 1, D)
            k = k.view(1, Hkv, 1, D)
            v = v.view(1, Hkv, 1, D)
            if m.rotary is not None:               # as Rotary.forward
                q = q * cos + q.roll(D // 2, dims=-1) * sin
                k = k * cos + k.roll(D // 2, dims=-1) * sin
            ks[i].index_copy_(2, pos, k)
            vs[i].index_copy_(2, pos, v)
            # the query heads of one K/V head as rows of one product, in float32 as the
            # eager attention computes one query on a CPU (model/attention.py)
            qg = q.reshape(1, Hkv, H // Hkv, D).float()
            s = (qg @ ks[i].float().transpose(-1, -2)) * (D ** -0.5)
            s = s.masked_fill(hidden, float("-inf"))
            y = (F.softmax(s, dim=-1) @ vs[i].float()).to(x.dtype).reshape(1, 1, H * D)
            x = x + a.o_proj(y)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return m.lm_head(m.norm(x))

    def compile(self) -> float:
        """Compile the step by running it on a scratch cache; returns the seconds it took.
        On failure (no C++ compiler, an unsupported layer) the step stays off and
        `failed` says why, in one sentence."""
        t0 = time.perf_counter()
        why = available()
        if why is not None:
            self.failed = why
            return 0.0
        # Inductor's cache of compiled kernels: in ours (model/paths.py) rather than its
        # default in /tmp, which a reboot empties; a folder the user chose is kept.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
        try:
            fn = torch.compile(self.step, fullgraph=True, dynamic=False)
            cache = self.model.new_cache(1, self.capacity)
            with torch.inference_mode():           # the token as generate()'s are
                token = torch.zeros(1, 1, dtype=torch.long, device=self._slots.device)
                fn(token, torch.tensor([0], device=token.device), cache.k, cache.v,
                   self._slots)
                with torch.compiler.set_stance("fail_on_recompile"):   # the next position
                    fn(token, torch.tensor([1], device=token.device), cache.k, cache.v,
                       self._slots)                                 # reuses the graph
        except Exception as e:  # any failure: stay eager
            self.failed = f"compiling the decode step failed ({type(e).__name__}: " \
                          f"{str(e).splitlines()[0] if str(e) else 'no message'})"
            return time.perf_counter() - t0
        self._fn = fn
        self.ready = True
        return time.perf_counter() - t0

    def __call__(self, input_ids: torch.Tensor, cache: object) -> torch.Tensor | None:
        """The logits of the compiled step, or None where it does not apply: not ready,
        not one token of batch 1 over a KVCache of this capacity, or outside inference
        mode (where the compiled graph, built without autograd, would recompile)."""
        if not self.ready or type(cache) is not KVCache or input_ids.shape != (1, 1) \
                or cache.capacity != self.capacity or cache.length >= self.capacity \
                or not torch.is_inference_mode_enabled():
            return None
        if not input_ids.is_inference():           # as generate()'s (the graph's guards
            input_ids = input_ids.clone()          # tell the two kinds apart)
        pos = torch.tensor([cache.length], device=input_ids.device)
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                logits = self._fn(input_ids, pos, cache.k, cache.v, self._slots)
        except Exception as e:  # a recompile, or worse
            self.ready = False
            self.failed = f"the compiled decode step stopped ({type(e).__name__}: {e}); " \
                          "decoding eagerly"
            log.warning(self.failed)
            return None
        cache.advance(input_ids[0].tolist())
        self.steps += 1
        return logits


def compile_decoding(model: Transformer, capacity: int) -> DecodeStep:
    """Compile `model`'s one-token step for caches of `capacity` positions and make the
    model use it (Transformer.decode_step) once it works; `failed` says why not."""
    step = DecodeStep(model, capacity)
    step.compile()
    if step.ready:
        model.decode_step = step
    return step
