"""Attention of queries over cached keys and values: the kernels the caches call.

`attend` is plain causal attention over one sequence per row (training, prefill, greedy
decoding). `attend_shared` is attention for several rows that continue one shared prefix
(beams, sampled candidates, scored continuations; model/kv_cache.BranchCache): each row's
queries see the prefix's keys, stored once, and then its own. Copying the prefix into
every row instead, as this project did first, costs a copy of the whole cache per row and
again per beam step (about 230 MB per token for a 1.5B model and a 2k prompt).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from model import native

# scaled_dot_product_attention shares K/V heads itself from torch 2.5 (enable_gqa); before,
# they are repeated to the query heads' count first (a copy per layer and step). Compared as
# numbers: "2.13.0+cpu" >= "2.5" is False as plain strings (torch's TorchVersion happens to
# compare properly, a plain str would not).
_SDPA_GQA = tuple(int(p) for p in re.findall(r"\d+", str(torch.__version__))[:2]) >= (2, 5)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, H, T, D] over k, v [B, Hkv, L, D] (L >= T): query i is position L-T+i and sees
    keys 0..L-T+i. Returns [B, H, T, D]."""
    T, L = q.shape[2], k.shape[2]
    if T == 1 and q.shape[0] == 1 and not q.requires_grad and native.attends(k) \
            and k.stride(-1) == 1 and v.stride() == k.stride():
        # one token over the cache: the native kernel, 2-4x faster than any form below
        B, H, _, D = q.shape
        out = native.decode_attention(q.reshape(k.shape[1], -1, D).float(), k[0], v[0],
                                      torch.tensor([L - 1]))
        return out.reshape(B, H, T, D).to(q.dtype)
    if q.device.type == "cpu" and q.dtype != torch.float32 \
            and (T == 1 or not q.requires_grad):
        # On CPU PyTorch's bf16/fp16 attention kernel is slower than fp32's, casts
        # included: ~3x for one query (99 against 29 us over 448 cached tokens, AVX2 AMD
        # EPYC), 1.1x for a prompt (1.79 against 1.63 ms a layer for 500 tokens, an
        # AVX-512 AMD EPYC with native bf16); fp32 is also the more exact. Training
        # (autocast, gradients) keeps bf16.
        return attend(q.float(), k.float(), v.float()).to(q.dtype)
    gqa = {}
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v, **gqa)
    if L == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
    # A chunk appended after cached positions: query i sees keys 0..L-T+i. When it is
    # most of the keys (a new prompt that shares a few tokens with the cached one), zero
    # queries for the cached positions make it square, and the causal kernel skips the
    # blocks above the diagonal, where an explicit mask pays for them (2.4 against 1.4 ms
    # a layer for 617 new of 620 tokens); the padded rows' outputs are dropped.
    if 2 * T >= L:
        square = torch.cat([q.new_zeros(*q.shape[:2], L - T, q.shape[3]), q], dim=2)
        return F.scaled_dot_product_attention(square, k, v, is_causal=True,
                                              **gqa)[:, :, L - T:]
    mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(diagonal=L - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)


def attend_shared(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, H, T, D]: B rows continuing one prefix. Every query sees all of the prefix,
    prefix_k/v [1, Hkv, P, D], then its row's own positions k, v [B, Hkv, L, D] (L >= T;
    the last T are the queries' own) causally. One softmax over both parts, in float32.

    The prefix part is one product for all rows: the rows' queries of a K/V head are
    stacked as extra query rows, so the prefix is read once per step, not once per row.

    On a CPU it computes in float32 whatever the model's dtype: these products are small
    and of a new shape at nearly every call (prompt length, rows, width), and PyTorch's
    bf16 batched product builds a oneDNN kernel per shape (3.8 against 0.5 ms a call for
    20 scored names over 600 tokens of prompt, casts included)."""
    B, H, T, D = q.shape
    if not q.requires_grad and native.attends(k) and prefix_k.dtype == k.dtype \
            and k.stride(-1) == 1 and v.stride() == k.stride() and prefix_k.shape[0] == 1 \
            and prefix_k.stride(-1) == 1 and prefix_v.stride() == prefix_k.stride():
        # the native kernel: query row (head g, position t) of a K/V head is row g * T + t,
        # and sees its own positions up to L - T + t
        Hkv, L = k.shape[1], k.shape[2]
        own = torch.arange(L - T, L)
        out = native.branch_attention(q.reshape(B, Hkv, H // Hkv * T, D).float(),
                                      prefix_k[0], prefix_v[0],
                                      torch.tensor([prefix_k.shape[2]]), k, v, own)
        return out.reshape(B, H, T, D).to(q.dtype)
    if q.device.type == "cpu" and q.dtype != torch.float32:
        return attend_shared(q.float(), prefix_k.float(), prefix_v.float(), k.float(),
                             v.float()).to(q.dtype)
    Hkv, P, L = prefix_k.shape[1], prefix_k.shape[2], k.shape[2]
    G = H // Hkv                                       # query heads per K/V head
    scale = D ** -0.5
    qg = q.reshape(B, Hkv, G, T, D)
    stacked = qg.permute(1, 0, 2, 3, 4).reshape(1, Hkv, B * G * T, D)
    s_prefix = (stacked @ prefix_k.transpose(-1, -2)).float() \
        .reshape(Hkv, B, G, T, P).permute(1, 0, 2, 3, 4)          # [B, Hkv, G, T, P]
    s_own = (qg @ k.unsqueeze(2).transpose(-1, -2)).float()        # [B, Hkv, G, T, L]
    if T > 1:
        visible = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(diagonal=L - T)
        s_own = s_own.masked_fill(~visible, float("-inf"))
    probs = torch.cat([s_prefix, s_own], dim=-1).mul_(scale).softmax(dim=-1).to(v.dtype)
    p_prefix, p_own = probs.split([P, L], dim=-1)
    out_prefix = (p_prefix.permute(1, 0, 2, 3, 4).reshape(1, Hkv, B * G * T, P) @ prefix_v) \
        .reshape(Hkv, B, G, T, D).permute(1, 0, 2, 3, 4)
    out = out_prefix + p_own @ v.unsqueeze(2)
    return out.reshape(B, H, T, D)
