"""Float products by the native kernel (model/kernels/float_gemv.cpp), built here:
against float64 for bf16 and fp32 weights and activations, any row count and inner size
(the vector loops' tails included), refusing what it cannot compute, and taken by a
measured layer, eagerly and in a compiled graph, for up to NATIVE_MAX_ROWS rows."""

from __future__ import annotations

import pytest
import torch

from model import native
from model.inference import NATIVE_MAX_ROWS, MeasuredLinear, measure_again, measure_layers


def expected(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.double() @ w.double().T


@pytest.mark.parametrize("rows,out,inner", [
    (1, 896, 896),        # Qwen2.5-Coder-0.5B's attention output, one decoded token
    (4, 301, 4864),       # a beam's rows, its down projection; rows not a multiple of 4
    (3, 7, 100),          # an inner size with a tail past the vector loops
    (9, 64, 48),          # more rows than one pass takes (4), fewer weights than 64
    (2, 5000, 256),       # enough rows of weights to split over threads
])
@pytest.mark.parametrize("wtype,xtype", [(torch.bfloat16, torch.bfloat16),
                                         (torch.bfloat16, torch.float32),
                                         (torch.float32, torch.float32),
                                         (torch.float32, torch.bfloat16)])
def test_it_is_the_product_summed_in_float(native_kernels, rows, out, inner, wtype, xtype):
    """Within float32 sums of exact products (bf16 times bf16 is exact in float), then the
    one rounding to the activations' dtype."""
    g = torch.Generator().manual_seed(rows * 1000 + inner)
    w = (torch.randn(out, inner, generator=g) * 0.05).to(wtype)
    x = torch.randn(rows, inner, generator=g).to(xtype)
    got = native.float_gemv(x, w)
    assert got.shape == (rows, out) and got.dtype == xtype
    want = expected(x, w)
    scale = (x.double().abs() @ w.double().abs().T)          # the sums' magnitude
    err = (got.double() - want).abs()
    rounding = 2 ** -8 if xtype == torch.bfloat16 else 0.0
    assert bool((err <= scale * 1e-5 + want.abs() * rounding + 1e-7).all()), err.max()


def test_it_reads_strided_rows_and_empty_shapes(native_kernels):
    w = torch.randn(40, 64).bfloat16()
    x = torch.randn(3, 128).bfloat16()[:, ::2]              # not contiguous
    torch.testing.assert_close(native.float_gemv(x, w).double(), expected(x, w),
                               atol=0.05, rtol=0.02)
    assert native.float_gemv(torch.empty(0, 64), w.float()).shape == (0, 40)
    assert native.float_gemv(torch.empty(2, 0), torch.empty(5, 0)).eq(0).all()


def test_it_refuses_what_it_cannot_compute(native_kernels):
    with pytest.raises(RuntimeError, match="x \\[M, K\\] and w \\[N, K\\]"):
        native.float_gemv(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(RuntimeError, match="x \\[M, K\\] and w \\[N, K\\]"):
        native.float_gemv(torch.randn(8), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        native.float_gemv(torch.randn(2, 8).half(), torch.randn(4, 8).half())
    assert not native.multiplies(torch.randn(4, 8).half())
    assert native.multiplies(torch.randn(4, 8).bfloat16())


def test_a_native_layer_takes_a_few_rows_eagerly_and_compiled(native_kernels, monkeypatch):
    """A MeasuredLinear whose forms are the native product: the kernel for 1 and up to
    NATIVE_MAX_ROWS rows, F.linear above (where it measured slower); the same inside a
    compiled graph, which it can enter (oneDNN's packed copy cannot)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, 64, generator=g).bfloat16()
    b = torch.randn(96, generator=g).bfloat16()
    layer = MeasuredLinear(w, b, "native", "native", None, few_max=100)
    calls = []
    kernel = native.float_gemv
    monkeypatch.setattr(native, "float_gemv", lambda x, w: calls.append(len(x)) or kernel(x, w))
    for rows in (1, 4, NATIVE_MAX_ROWS, NATIVE_MAX_ROWS + 1, 40):
        x = torch.randn(rows, 64, generator=g).bfloat16()
        torch.testing.assert_close(layer(x).float(), F.linear(x.float(), w.float(), b.float()),
                                   atol=5e-2, rtol=2e-2)
    assert calls == [1, 4, NATIVE_MAX_ROWS]
    monkeypatch.undo()
    x = torch.randn(1, 64, generator=g).bfloat16()
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x))


def test_layers_measured_before_the_kernels_loaded_are_measured_again(native_kernels,
                                                                      random_model,
                                                                      monkeypatch):
    """A server's first start builds the kernels after preparing the model: measure_again
    puts the native product among the forms of the layers and the head, whose products
    stay the model's."""
    import copy

    from model.inference import measured_head

    plain = copy.deepcopy(random_model).bfloat16()
    model = copy.deepcopy(plain)
    monkeypatch.setattr(native, "multiplies", lambda w: False)       # not loaded yet
    measure_layers(model)
    model.lm_head = measured_head(model.lm_head.weight)
    layers = [m for m in model.modules() if isinstance(m, MeasuredLinear)]
    assert not any("native" in (m.one, m.few) for m in layers)
    monkeypatch.undo()
    offered = []
    real = native.multiplies
    monkeypatch.setattr(native, "multiplies", lambda w: offered.append(w) or real(w))
    assert measure_again(model) == len(layers)
    again = [m for m in model.modules() if isinstance(m, MeasuredLinear)]
    assert len(again) == len(layers) and len(offered) >= 2    # a block shape and the head
    assert all(a.weight is b.weight and a is not b for a, b in zip(again, layers, strict=True))
    ids = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).float(), plain(ids).float(),
                                   atol=0.1, rtol=0.05)
