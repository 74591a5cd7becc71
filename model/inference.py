"""What a loaded model goes through before it serves: fewer, faster matrix products.

Decoding one token of a small model is a few dozen small matrix products and one large
one, the output head (hidden state -> a logit per vocabulary entry: 16 MB of fp32 weights
for the shipped model, read once per token). Two changes, neither altering what is
computed (the same sums, in another order at most), with `--quantize int8`
(model/quantize.py) applied between them to the fused layers when asked for:

- q/k/v and gate/up become one product each (Transformer.fuse): 25 products per token
  instead of 43, each paying PyTorch's fixed per-call overhead.
- The output head is computed in whichever form of the same product measured fastest on
  this machine, once at load, for one row (greedy decoding) and for a few (beams). BLAS
  libraries differ wildly here: on a 2-core AMD EPYC, MKL's fp32 `x @ W.T` for one row
  took 2.7 ms, the same product against a transposed copy of W 0.63 ms; for 4 rows
  `(W @ x.T).T` 1.2 ms against 4.6 ms. Another CPU, bf16 or a GPU may rank them
  otherwise, which is why they are measured rather than assumed. The transposed copy
  costs the head's size in memory again; it is kept only when it wins and is at most
  TRANSPOSED_MAX_BYTES.

Training never calls this: a fused model's state dict has other keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.quantize import quantize_int8
from model.transformer import Transformer

TRANSPOSED_MAX_BYTES = 256 * 2**20
FEW_ROWS = 4            # the "several rows" case measured: beam search's width


def _linear(x: torch.Tensor, w: torch.Tensor, wt: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w)


def _weight_first(x: torch.Tensor, w: torch.Tensor, wt: torch.Tensor | None) -> torch.Tensor:
    return (w @ x.T).T.contiguous()


def _transposed(x: torch.Tensor, w: torch.Tensor, wt: torch.Tensor | None) -> torch.Tensor:
    return x @ wt


FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "linear": _linear, "weight_first": _weight_first, "transposed": _transposed}


class MeasuredHead(nn.Module):
    """The output head (no bias) as the product form that measured fastest, per row count.

    `weight` stays the model's own tensor (tied to the embeddings when they are), so
    nothing is copied unless the transposed form is chosen."""

    def __init__(self, weight: torch.Tensor, one: str, few: str,
                 transposed: torch.Tensor | None):
        super().__init__()
        self.weight = weight
        self.one, self.few = one, few
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        form = FORMS[self.one if rows.shape[0] == 1 else self.few]
        return form(rows, self.weight, self.transposed).reshape(*x.shape[:-1], -1)


def _seconds(form: Callable, x: torch.Tensor, w: torch.Tensor, wt: torch.Tensor | None,
             repeats: int = 5) -> float:
    form(x, w, wt)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        form(x, w, wt)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def measured_head(weight: torch.Tensor) -> MeasuredHead:
    """Time each form of the head's product for 1 and FEW_ROWS rows; the fastest wins,
    the transposed copy only if it wins by a fifth and is small enough to keep."""
    w = weight.detach()
    wt = w.T.contiguous() if w.numel() * w.element_size() <= TRANSPOSED_MAX_BYTES else None
    choice = {}
    for rows in (1, FEW_ROWS):
        x = torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device)
        times = {name: _seconds(form, x, w, wt) for name, form in FORMS.items()
                 if name != "transposed" or wt is not None}
        plain = min((t, n) for n, t in times.items() if n != "transposed")
        best = min((t, n) for n, t in times.items())
        choice[rows] = best[1] if best[1] != "transposed" or best[0] < 0.8 * plain[0] \
            else plain[1]
    keep = wt if "transposed" in choice.values() else None
    return MeasuredHead(weight, choice[1], choice[FEW_ROWS], keep)


def int8_by_default(device: torch.device) -> bool:
    """Whether the server decodes with int8 weights when not told (`--quantize auto`): on
    a CPU, where decoding is bound by the bytes of weights read per token. Measured on the
    shipped model (docs/models.md): decode 1.44x faster, held-out bits/byte 1.0312 ->
    1.0316, 7 of 400 suggestions through the server different and none of them changed
    from right to wrong or back. GPUs decode from fast memory and have no such kernel here."""
    return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


def prepare_for_inference(model: Transformer, int8: bool = False) -> dict[str, str]:
    """Fuse the projections, quantize them when `int8` (`--quantize int8`,
    model/quantize.py) and, on a CPU, pick the output head's product form (see the
    module's docstring); returns what was chosen, for the log."""
    model.eval()
    qkv = sum(block.self_attn.fuse() for block in model.layers)
    gate_up = sum(block.mlp.fuse() for block in model.layers)
    report = {"fused layers": f"q/k/v {qkv}, gate/up {gate_up}"}
    if int8:
        report["int8 layers"] = str(quantize_int8(model))
    head = model.lm_head
    if isinstance(head, nn.Linear) and head.bias is None \
            and head.weight.device.type == "cpu":
        model.lm_head = measured_head(head.weight)
        report["head"] = f"1 row: {model.lm_head.one}, {FEW_ROWS} rows: {model.lm_head.few}"
    return report
