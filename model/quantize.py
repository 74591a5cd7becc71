"""Weight-only int8 for CPU inference: each linear layer's weight stored as int8 with one
bf16 scale per output row, multiplied by PyTorch's int8-weight kernel.

Why: decoding one token at a time on a CPU reads every weight once per token and does
little arithmetic with it, so its speed is set by bytes read; int8 is a quarter of fp32's
bytes and half of bf16's. The kernel takes bf16 activations (with fp32 ones it is several
times slower), so a call casts its rows to bf16 and the result back. Prefill (many tokens
at once) is arithmetic-bound, and there the int8 kernel is about half as fast as a float
matmul, so each layer keeps its float weight too and uses it for calls of more than ROWS
rows: decode gets the int8 speed, prefill keeps the float speed. An fp32 model keeps its
own fp32 weight for that (shared, not copied: prefill stays on the fast fp32 path of CPUs
without native bf16); a bf16 model its bf16 weight. The output head is quantized the same
way (with tied embeddings its float weight stays the embedding table, shared);
embeddings and norms stay as they are. `benchmarks/quantize.py` measures speed and
bits/byte against the float model.

A bf16 or fp16 product of many rows goes to oneDNN, which builds a kernel for each new
shape it meets: every cold prompt has a new length, and building paid for about half of
a prefill's matrix products. So those calls are padded with zero rows to a multiple of
ROW_BUCKET (a few dozen shapes in all, each built once) and the padding is cut off the
result; rows do not mix in a matrix product, so the real rows' results are unchanged.
fp32 products (MKL) build nothing per shape and are not padded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.transformer import Transformer

ROWS = 8       # calls with more rows (tokens x batch) than this use the bf16 weight
ROW_BUCKET = 32   # ... padded to a multiple of this many rows unless fp32 (docstring)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W kept as int8 rows times a per-row scale (symmetric) for small
    calls, and as the original weight for large ones."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        """`dtype`: the kernel's activation and scale type (bf16 or fp16). The layer's own
        weight, in its own dtype, is kept (not copied) for calls of many rows."""
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127)
                             .to(torch.int8).contiguous())
        self.register_buffer("scales", scale.to(dtype))
        self.register_buffer("full", linear.weight.detach())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        n = rows.shape[0]
        if n > ROWS:
            rows = rows.to(self.full.dtype)
            pad = 0 if self.full.dtype == torch.float32 or torch.compiler.is_compiling() \
                else -n % ROW_BUCKET            # a compiled graph's shapes are fixed already
            if pad:
                rows = F.pad(rows, (0, 0, 0, pad))
            y = F.linear(rows, self.full, self.bias)[:n]
        else:
            y = torch._weight_int8pack_mm(rows.to(self.scales.dtype), self.weight, self.scales)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def quantize_int8(model: Transformer) -> int:
    """Replace the blocks' linear layers and the output head by Int8Linear in place (CPU
    only); returns how many were replaced. The model is for inference afterwards: int8
    weights cannot be trained or saved as a model directory."""
    device = model.embed_tokens.weight.device
    if device.type != "cpu":
        raise ValueError("int8 weight-only quantization is for CPU inference; the model is "
                         f"on {device}.")
    dtype = model.embed_tokens.weight.dtype
    if dtype == torch.float32:
        dtype = torch.bfloat16
    replaced = 0
    for block in model.layers:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child, dtype))
                    replaced += 1
    if isinstance(model.lm_head, nn.Linear):
        model.lm_head = Int8Linear(model.lm_head, dtype)
        replaced += 1
    return replaced


def dequantized(layer: Int8Linear) -> torch.Tensor:
    """The float weight an Int8Linear multiplies by (for tests and error reports)."""
    return layer.weight.float() * layer.scales.float()[:, None]


