"""What a loaded model goes through before it serves: fewer, faster matrix products.

Decoding one token of a small model is a few dozen small matrix products and one large
one, the output head (hidden state -> a logit per vocabulary entry: 16 MB of fp32 weights
for the shipped model, read once per token). Two changes, neither altering what is
computed (the same sums, in another order at most), with `--quantize int8`
(model/quantize.py) applied between them to the fused layers when asked for:

- q/k/v and gate/up become one product each (Transformer.fuse): 25 products per token
  instead of 43, each paying PyTorch's fixed per-call overhead.
- The output head, and the blocks' float layers, are computed in whichever form of the
  same product measured fastest on this machine, once at load per shape, for one row
  (greedy decoding) and for a few (beams). BLAS libraries differ wildly here: on a 2-core
  AMD EPYC, MKL's fp32 `x @ W.T` for one row took 2.7 ms, the same product against a
  transposed copy of W 0.63 ms; for 4 rows `(W @ x.T).T` 1.2 ms against 4.6 ms. On an
  Intel Xeon a bf16 row times a bf16 matrix is far faster as a matrix-vector product
  (`torch.mv`) than as `F.linear`: 44 against 61 ms for all products of a token of a
  Qwen2.5-Coder-0.5B-shaped model, where they are the whole decode step. Another CPU or a
  GPU may rank them otherwise, which is why they are measured rather than assumed. The
  transposed copy costs the weight's size in memory again; only the head may keep one,
  when it wins and is at most TRANSPOSED_MAX_BYTES. oneDNN's packed copy (`pack`) is a
  form too, for any layer where it wins by a fifth: on an AVX-512 AMD EPYC a bf16 row
  times a packed 151936 x 896 head read 49 GB/s against `F.linear`'s 30, for a second
  copy of those weights in memory; inductor cannot lower the packed tensor, so a
  compiled step multiplies by the plain weight instead. The native product
  (model/native.py's `float_gemv`, once the kernels are built) reads the plain weight in
  place as fast or faster (44-49 GB/s there), costs no copy and enters a compiled step,
  so where it is measured fastest a Qwen2.5-Coder-0.5B shape's bf16 decoding no longer
  needs the packed copy (docs/models.md has the numbers).

Training never calls this: a fused model's state dict has other keys.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model import native
from model.device import best_seconds
from model.hugepages import move_weights
from model.quantize import int8_activations_pay, quantize_int8, replace_block_linears
from model.transformer import Transformer

TRANSPOSED_MAX_BYTES = 256 * 2**20
FEW_ROWS = 4            # the "several rows" case measured: beam search's width
NATIVE_MAX_ROWS = 8     # rows the native product takes; more: F.linear. It reads each
#                         weight row once per 4 rows, so past ~8 a matrix-matrix product wins
#                         (a 151936 x 896 bf16 head: 6.4 against 11.0 ms for 8 rows, 59
#                         against 21 for 48; AVX-512 AMD EPYC)


class PackedWeight:
    """oneDNN's blocked copy of a weight, for its own product (`torch.ops.mkldnn`). The
    copy is an opaque tensor, which cannot be deep-copied: a copied layer shares it."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __deepcopy__(self, memo: dict) -> PackedWeight:
        return self


def pack(weight: torch.Tensor) -> PackedWeight | None:
    """`weight` packed by oneDNN for products of one row (any number of rows works), or
    None where this PyTorch or device cannot."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return PackedWeight(torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1))
    except (RuntimeError, AttributeError):
        return None


Copy = torch.Tensor | PackedWeight | None     # the form's own copy of the weight, if any


def _linear(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return F.linear(x, w)


def _weight_first(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return (w @ x.T).T.contiguous()


def _transposed(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return x @ copy                         # W transposed, contiguous


def _vector(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return torch.mv(w, x[0])[None]          # one row only


def _packed(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, copy.tensor, None, "none", [], "")


def _native(x: torch.Tensor, w: torch.Tensor, copy: Copy) -> torch.Tensor:
    return native.float_gemv(x, w)          # model/kernels/float_gemv.cpp


Form = Callable[[torch.Tensor, torch.Tensor, Copy], torch.Tensor]
FORMS: dict[str, Form] = {"linear": _linear, "weight_first": _weight_first,
                          "transposed": _transposed, "vector": _vector, "packed": _packed,
                          "native": _native}
ONE_ROW_ONLY = ("vector",)
COPIED = ("transposed", "packed")     # forms that keep a copy of the weight: chosen only
#                                       when they win by a fifth


class MeasuredLinear(nn.Module):
    """A linear layer as the product form that measured fastest, for one row and for up
    to `few_max` rows (more rows: `F.linear`, the matrix-matrix product prefill is).

    `weight` stays the model's own tensor (the head's tied to the embeddings when they
    are), so nothing is copied unless a form with a copy (COPIED: the transposed or
    oneDNN's packed weight) is chosen; a compiled graph multiplies by `weight` instead of
    the packed copy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, one: str, few: str,
                 transposed: torch.Tensor | None, few_max: int,
                 packed: PackedWeight | None = None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.one, self.few, self.few_max = one, few, few_max
        self.transposed = transposed
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        name = self.one if n == 1 else self.few if n <= self.few_max else "linear"
        if name == "native" and n > NATIVE_MAX_ROWS:
            name = "linear"
        if name == "packed" and (self.packed is None or torch.compiler.is_compiling()):
            name = "linear"                 # inductor cannot lower oneDNN's packed tensor
        copy = self.transposed if name == "transposed" else \
            self.packed if name == "packed" else None
        y = FORMS[name](rows, self.weight, copy)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)


@torch.inference_mode()
def fastest_forms(weight: torch.Tensor, transposed_ok: bool
                  ) -> tuple[str, str, torch.Tensor | None, PackedWeight | None]:
    """Time each form of a product with `weight` for 1 and FEW_ROWS rows: the fastest of
    each, and the copies the chosen forms use: the transposed one (allowed with
    `transposed_ok` for a weight small enough to keep) and oneDNN's packed one (where it
    can be made). A form with a copy is chosen only if it wins by a fifth."""
    w = weight.detach()
    copies: dict[str, Copy] = {
        "transposed": w.T.contiguous() if transposed_ok
        and w.numel() * w.element_size() <= TRANSPOSED_MAX_BYTES else None,
        "packed": pack(w)}
    choice = {}
    for rows in (1, FEW_ROWS):
        x = torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device)
        times = {name: best_seconds(lambda f=form, x=x, n=name: f(x, w, copies.get(n)),
                                    device=w.device)
                 for name, form in FORMS.items()
                 if (name not in COPIED or copies[name] is not None)
                 and (rows == 1 or name not in ONE_ROW_ONLY)
                 and (name != "native" or native.multiplies(w))}
        plain = min((t, n) for n, t in times.items() if n not in COPIED)
        best = min((t, n) for n, t in times.items())
        choice[rows] = best[1] if best[1] not in COPIED or best[0] < 0.8 * plain[0] \
            else plain[1]
    kept = {name: copies[name] if name in choice.values() else None for name in COPIED}
    return choice[1], choice[FEW_ROWS], kept["transposed"], kept["packed"]


def measured_head(weight: torch.Tensor) -> MeasuredLinear:
    """The output head (no bias) in its fastest forms, the few-rows one for any number of
    rows above one (scoring's dozens of rows included)."""
    one, few, transposed, packed = fastest_forms(weight, transposed_ok=True)
    return MeasuredLinear(weight, None, one, few, transposed, few_max=sys.maxsize,
                          packed=packed)


def measure_layers(model: Transformer, kind: type[nn.Module] = nn.Linear) -> int:
    """Replace the blocks' plain linear layers (or layers of another `kind` with a weight
    and a bias) by MeasuredLinear, the forms measured once per weight shape and dtype
    (layers alike share the choice; each packs its own weight when the packed form is
    chosen); returns how many."""
    chosen: dict[tuple, tuple[str, str]] = {}

    def measured(linear: nn.Module) -> MeasuredLinear:
        w = linear.weight
        key = (tuple(w.shape), w.dtype, w.device)
        packed = None
        if key not in chosen:
            one, few, _, packed = fastest_forms(w, transposed_ok=False)
            chosen[key] = (one, few)
        elif "packed" in chosen[key]:
            packed = pack(w)
        return MeasuredLinear(w, linear.bias, *chosen[key], None, FEW_ROWS, packed=packed)
    return replace_block_linears(model, measured, kind)


def measure_again(model: Transformer) -> int:
    """Measure the float layers' forms anew (MeasuredLinear again), for when the native
    product (model/native.py) was loaded after they were first measured: a server's
    first start on a machine builds the kernels after loading the model. Returns how many
    layers, the head included."""
    n = measure_layers(model, MeasuredLinear)
    if isinstance(model.lm_head, MeasuredLinear):
        model.lm_head = measured_head(model.lm_head.weight)
        n += 1
    return n


def product_forms(model: Transformer) -> str | None:
    """Which forms the float layers multiply with, counted, for one row and for a few
    (the status request's `float_products`); None where no layer was measured (int8, a
    GPU)."""
    layers = [m for m in model.modules() if isinstance(m, MeasuredLinear)]
    if not layers:
        return None

    def counted(rows: str) -> str:
        return ", ".join(f"{name} {n}" for name, n in
                         Counter(getattr(m, rows) for m in layers).most_common())
    return f"1 row: {counted('one')}; {FEW_ROWS} rows: {counted('few')}"


def int8_by_default(device: torch.device) -> bool:
    """Whether the server decodes with int8 weights when not told (`--quantize auto`): on
    a CPU, where decoding is bound by the bytes of weights read per token. Measured on the
    shipped model (docs/models.md): decode 1.44x faster, held-out bits/byte 1.0312 ->
    1.0316, 7 of 400 suggestions through the server different and none of them changed
    from right to wrong or back. GPUs decode from fast memory and have no such kernel here."""
    return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


def prepare_for_inference(model: Transformer, int8: bool = False,
                          int8_activations: bool = False) -> dict[str, str]:
    """Fuse the projections, quantize them when `int8` (`--quantize int8`,
    model/quantize.py; with `int8_activations`, `--quantize int8-dynamic`, their small
    calls' activations too where oneDNN's kernel runs and measured faster) and, on a CPU,
    pick the float products' forms (see the module's docstring) and move the large
    weights into huge pages (model/hugepages.py); returns what was chosen, for the log."""
    model.eval()
    qkv = sum(block.self_attn.fuse() for block in model.layers)
    gate_up = sum(block.mlp.fuse() for block in model.layers)
    report = {"fused layers": f"q/k/v {qkv}, gate/up {gate_up}"}
    if int8 and int8_activations:
        why = int8_activations_pay()
        report["int8 activations"] = why or "yes"
        int8_activations = why is None
    if int8:
        report["int8 layers"] = str(quantize_int8(model, int8_activations))
    elif model.embed_tokens.weight.device.type == "cpu":
        native.load()                  # the native product is a form, when built already
        report["measured layers"] = str(measure_layers(model))
    head = model.lm_head
    if isinstance(head, nn.Linear) and head.bias is None \
            and head.weight.device.type == "cpu":
        model.lm_head = measured_head(head.weight)
        report["head"] = f"1 row: {model.lm_head.one}, {FEW_ROWS} rows: {model.lm_head.few}"
    if model.embed_tokens.weight.device.type == "cpu":
        report["weights in huge pages"] = f"{move_weights(model) / 2**20:.0f} MB"
    return report
