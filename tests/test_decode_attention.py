"""One decoded token's attention by the native kernel (model/kernels/decode_attention.cpp),
built here: against softmax attention in float64, refusing what it cannot compute, and
taken by the eager model and the compiled decode step in place of PyTorch's operations."""

from __future__ import annotations

import pytest
import torch

from model import native
from model.decode_step import DecodeStep, available
from model.inference import prepare_for_inference


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over positions 0..pos, in float64."""
    keys, values = k[:, :pos + 1].double(), v[:, :pos + 1].double()
    scores = q.double() @ keys.transpose(1, 2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, -1) @ values


@pytest.mark.parametrize("heads,rows,dim,pos,capacity", [
    (4, 2, 32, 0, 64),          # the first token sees itself alone
    (4, 2, 32, 6, 64),          # fewer positions than the 8 scored together
    (4, 2, 32, 8, 64),          # one past a multiple of 8
    (4, 2, 32, 449, 1024),      # the shipped model's shape, split over threads
    (2, 7, 64, 300, 512),       # Qwen2.5-Coder-0.5B's
    (1, 1, 128, 63, 64),        # the cache's last position
    (2, 4, 16, 10, 32),         # the test models' head size
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_it_computes_softmax_attention_over_the_written_positions(native_kernels, heads, rows,
                                                                    dim, pos, capacity, dtype):
    """The float64 result within float32 rounding, for a float32 or a bfloat16 cache; the
    positions after `pos` (not written yet: here huge) change nothing."""
    g = torch.Generator().manual_seed(pos * 10 + dim)
    k = torch.randn(heads, capacity, dim, generator=g).to(dtype)
    v = torch.randn(heads, capacity, dim, generator=g).to(dtype)
    k[:, pos + 1:], v[:, pos + 1:] = 1e30, -1e30
    q = torch.randn(heads, rows, dim, generator=g) * 3
    got = native.decode_attention(q, k, v, torch.tensor([pos]))
    assert got.shape == (heads, rows, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(q, k, v, pos), rtol=1e-5, atol=2e-6)


def test_it_reads_a_cache_buffer_in_place(native_kernels):
    """A layer's cache buffer [1, Hkv, capacity, D] passed as a view of its batch row, and
    a view of fewer positions than the buffer holds: the same as contiguous copies."""
    buf_k, buf_v = torch.randn(1, 2, 128, 32), torch.randn(1, 2, 128, 32)
    q = torch.randn(2, 3, 32)
    pos = torch.tensor([40])
    want = native.decode_attention(q, buf_k[0].clone(), buf_v[0].clone(), pos)
    torch.testing.assert_close(native.decode_attention(q, buf_k[0], buf_v[0], pos), want)
    short = native.decode_attention(q, buf_k[0, :, :41], buf_v[0, :, :41], pos)
    torch.testing.assert_close(short, want)


def test_it_refuses_what_it_cannot_compute(native_kernels):
    """One-line errors naming the problem, not a crash or a wrong answer."""
    q, k = torch.randn(2, 2, 32), torch.randn(2, 16, 32)
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.decode_attention(q, k, k, torch.tensor([16]))
    with pytest.raises(RuntimeError, match="multiple of 8"):
        native.decode_attention(torch.randn(2, 2, 12), torch.randn(2, 16, 12),
                                torch.randn(2, 16, 12), torch.tensor([3]))
    with pytest.raises(RuntimeError, match="float32"):
        native.decode_attention(q, k.half(), k.half(), torch.tensor([3]))
    with pytest.raises(RuntimeError, match="disagree"):
        native.decode_attention(torch.randn(3, 2, 32), k, k, torch.tensor([3]))
    with pytest.raises(RuntimeError, match="one int64 position"):
        native.decode_attention(q, k, k, torch.tensor([3.0]))
    assert not native.attends(torch.randn(2, 16, 12))       # such caches keep PyTorch's


def decode(model, ids: list[int], follow: list[int]) -> torch.Tensor:
    """Logits of `follow` fed one token at a time after the prompt `ids`."""
    cache = model.new_cache(1, 128)
    with torch.inference_mode():
        model(torch.tensor([ids]), cache, last_only=True)
        return torch.cat([model(torch.tensor([[t]]), cache) for t in follow], 1)


def test_eager_decoding_attends_with_it(native_kernels, random_model, monkeypatch):
    """A one-token step of the eager model calls the kernel, once per layer, and computes
    what PyTorch's attention computes (the test models' head size, 16)."""
    calls = []
    kernel = native.decode_attention
    monkeypatch.setattr(native, "decode_attention",
                        lambda *a: calls.append(1) or kernel(*a))
    ids, follow = list(range(5, 45)), [7, 300, 12, 9]
    got = decode(random_model, ids, follow)
    # and once in the prompt's pass: its last layer attends from the last position alone
    assert len(calls) == len(follow) * len(random_model.layers) + 1
    monkeypatch.setattr(native, "attends", lambda k: False)        # PyTorch's attention
    torch.testing.assert_close(got, decode(random_model, ids, follow), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_the_compiled_step_calls_it(native_kernels, tiny, monkeypatch):
    """Compiled with the kernels loaded, the decode step's graph calls the kernel (seen by
    PyTorch's profiler) and computes the eager model's logits with PyTorch's attention."""
    import copy

    model = copy.deepcopy(tiny.model)
    prepare_for_inference(model)
    step = DecodeStep(model, 128)
    step.compile()
    assert step.ready or step.compiled, step.failed
    ids = tiny.tokenizer.encode("class Node:\n    def __init__(self, value):\n        self.")
    cache = model.new_cache(1, 128)
    with torch.inference_mode():
        model(torch.tensor([ids]), cache, last_only=True)
        with torch.profiler.profile() as prof:
            got = step(torch.tensor([[ids[-1]]]), cache)
    assert got is not None
    names = {e.name for e in prof.events()}
    assert "codecomplete_native::decode_attention" in names, sorted(names)[:40]
    model.decode_step = None
    monkeypatch.setattr(native, "attends", lambda k: False)
    want = decode(model, ids, [ids[-1]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
