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

`--quantize int8-dynamic` quantizes the activations too, per call (one scale for the
rows of a call, symmetric, 8 bits), and multiplies int8 by int8 with oneDNN's kernel, as
llama.cpp's q8_0 does per block of 32: the kernel that converts each int8 weight to bf16
reads weights at about half the speed. For a model whose decoding is the reading of
its weights (a Qwen2.5-Coder-0.5B shape on 2 Intel cores: all the products of a token 43
ms with bf16 activations, 21-28 ms with int8 ones) that is the difference; the activations'
rounding costs some accuracy (docs/models.md has both measured). The oneDNN call is a
custom operator (`codecomplete::int8_linear`) holding its packed weight by key, so the
compiled decode step calls it as it is rather than lowering it.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model import native
from model.device import best_seconds
from model.transformer import Transformer

# Calls with more rows (tokens x batch) than this use the float weight. Decoding's widest
# call, a draft's check (9 tokens), stays on int8: on a 2-core AMD EPYC all the products
# of a token of the shipped model took 4.0 ms in int8 against 6.7 in fp32 for 9 rows,
# 6.1 against 7.3 for 16, and fp32 won from about 32.
ROWS = 16
ROW_BUCKET = 32   # ... padded to a multiple of this many rows unless fp32 (docstring)


# oneDNN's packed int8 weights by key: an opaque tensor that a compiled graph must not
# trace, so the operator below gets the key (an Int8Linear's) and looks it up.
_PACKED: dict[int, torch.Tensor] = {}
_KEYS = itertools.count()
_ZERO_POINT = torch.tensor(128, dtype=torch.int32)     # uint8 activations around 128


@torch.library.custom_op("codecomplete::int8_linear", mutates_args=())
def int8_linear(xq: torch.Tensor, x_scale: torch.Tensor, key: int, w_scales: torch.Tensor,
                w_zeros: torch.Tensor) -> torch.Tensor:
    """bf16 rows of (xq - 128) * x_scale times the packed int8 weight `key` (scaled per
    output row), by oneDNN's int8 kernel."""
    return torch.ops.onednn.qlinear_pointwise.tensor(
        xq, x_scale, _ZERO_POINT, _PACKED[key], w_scales, w_zeros, None, 1.0, 0,
        torch.bfloat16, "none", [], "")


@int8_linear.register_fake
def _(xq: torch.Tensor, x_scale: torch.Tensor, key: int, w_scales: torch.Tensor,
      w_zeros: torch.Tensor) -> torch.Tensor:
    return xq.new_empty(xq.shape[0], w_scales.shape[0], dtype=torch.bfloat16)


def int8_activations_available() -> str | None:
    """Why `--quantize int8-dynamic` cannot run here (no oneDNN int8 kernel in this
    PyTorch or for this CPU), or None when it can."""
    try:
        layer = Int8Linear(nn.Linear(32, 8, bias=False), activations_int8=True)
        layer(torch.randn(1, 32))
    except Exception as e:                 # any failure: the weight-only kernel instead
        return f"oneDNN's int8 kernel failed here ({type(e).__name__})"
    return None


@functools.lru_cache(maxsize=1)
def int8_activations_pay() -> str | None:
    """Why `--quantize int8-dynamic` would not help here, or None when it does: its kernel
    must run and beat the weight-only one on a product of a 0.5B model's size. Measured,
    not assumed: on a 2-core AMD EPYC (AVX2, no native bf16) oneDNN's int8 kernel with bf16
    output took 170 ms where the weight-only one took 0.3."""
    why = int8_activations_available()
    if why is not None:
        return why
    linear = nn.Linear(896, 4864, bias=False)
    x = torch.randn(1, 896, dtype=torch.bfloat16)
    best = {}
    with torch.inference_mode():
        for dynamic in (False, True):
            layer = Int8Linear(linear, activations_int8=dynamic)
            best[dynamic] = best_seconds(lambda layer=layer: layer(x))
    if best[True] >= best[False]:
        return (f"oneDNN's int8 kernel measured slower here than weight-only int8 "
                f"({best[True] * 1e3:.2f} against {best[False] * 1e3:.2f} ms for a "
                f"4864 x 896 product)")
    return None


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W kept as int8 rows times a per-row scale (symmetric) for small
    calls, and as the original weight for large ones."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16,
                 activations_int8: bool = False):
        """`dtype`: the kernel's activation and scale type (bf16 or fp16). The layer's own
        weight, in its own dtype, is kept (not copied) for calls of many rows. With
        `activations_int8` small calls quantize their rows too (the module docstring)."""
        super().__init__()
        scale, weight = _rounded(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("full", linear.weight.detach())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.key: int | None = None
        if activations_int8:
            # only oneDNN's packed copy is multiplied by: no second int8 copy is kept (for
            # a 0.5B model that was ~0.5 GB), `dequantized` rounds `full` again instead
            self.register_buffer("weight", None)
            self.register_buffer("scales", None)
            self.key = next(_KEYS)
            _PACKED[self.key] = torch.ops.onednn.qlinear_prepack(weight, None)
            weakref.finalize(self, _PACKED.pop, self.key, None)
            self.register_buffer("w_scales", scale)
            self.register_buffer("w_zeros", torch.zeros(self.out_features, dtype=torch.long))
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("scales", scale.to(dtype))
            self.register_buffer("row_scales", scale)       # fp32, for the native kernel
        # model/native.py's int8 x int8 kernel for small calls (set by use_native)
        self.q8 = False

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
        elif self.q8:
            y = native.q8_gemv(rows.float(), self.weight, self.row_scales)
            if self.bias is not None:
                y = y + self.bias
        elif self.key is not None:
            xf = rows.float()
            x_scale = xf.abs().amax().clamp(min=1e-12) / 127
            xq = torch.round(xf / x_scale).add(128).to(torch.uint8)
            y = int8_linear(xq, x_scale, self.key, self.w_scales, self.w_zeros)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch._weight_int8pack_mm(rows.to(self.scales.dtype), self.weight, self.scales)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def use_native(model: Transformer, on: bool = True) -> int:
    """Let the model's weight-only Int8Linear layers multiply small calls with the native
    kernel (model/native.py, which must be loaded), or with PyTorch's again when not `on`
    (benchmarks compare the two); returns how many layers changed kernel."""
    if on and not native.loaded():
        return 0
    switched = 0
    for layer in model.modules():
        if isinstance(layer, Int8Linear) and layer.key is None \
                and layer.in_features % native.BLOCK == 0 and layer.q8 != on:
            layer.q8 = on
            switched += 1
    return switched


def int8_kernel(model: Transformer) -> str | None:
    """Which kernel multiplies the model's int8 weights in decoding (None: no int8)."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return None
    if any(m.key is not None for m in layers):
        return "oneDNN int8 x int8 (int8-dynamic)"
    if any(m.q8 for m in layers):
        return "native int8 x int8 (model/native.py)"
    return f"PyTorch int8 weight-only ({native.why_not() or 'the native kernel is turned off'})"


def replace_block_linears(model: Transformer, make: Callable[[nn.Module], nn.Module],
                          kind: type[nn.Module] = nn.Linear) -> int:
    """Replace every `kind` of layer (nn.Linear unless told) inside the model's blocks by
    `make(layer)`, in place; returns how many (the output head is not in a block)."""
    replaced = 0
    for block in model.layers:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, kind):
                    setattr(parent, name, make(child))
                    replaced += 1
    return replaced


def quantize_int8(model: Transformer, activations_int8: bool = False) -> int:
    """Replace the blocks' linear layers and the output head by Int8Linear in place (CPU
    only), quantizing small calls' activations too with `activations_int8`; returns how
    many were replaced. The model is for inference afterwards: int8 weights cannot be
    trained or saved as a model directory."""
    device = model.embed_tokens.weight.device
    if device.type != "cpu":
        raise ValueError("int8 weight-only quantization is for CPU inference; the model is "
                         f"on {device}.")
    dtype = model.embed_tokens.weight.dtype
    if dtype == torch.float32:
        dtype = torch.bfloat16
    replaced = replace_block_linears(
        model, lambda linear: Int8Linear(linear, dtype, activations_int8))
    if isinstance(model.lm_head, nn.Linear):
        model.lm_head = Int8Linear(model.lm_head, dtype, activations_int8)
        replaced += 1
    if not activations_int8 and native.load() is None:    # built already: used at once
        use_native(model)
    return replaced


def _rounded(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight's per-row scales (fp32) and its int8 rows: symmetric, 127 steps a side."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return scale, torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()


def dequantized(layer: Int8Linear) -> torch.Tensor:
    """The float weight an Int8Linear multiplies by (for tests and error reports)."""
    if layer.key is not None:                  # int8-dynamic keeps no int8 copy of its own
        scale, weight = _rounded(layer.full)
        return weight.float() * scale[:, None]
    return layer.weight.float() * layer.scales.float()[:, None]


