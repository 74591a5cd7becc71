"""Decoded tokens' attention by the native kernels (model/kernels/decode_attention.cpp),
built here: against softmax attention in float64 (one token, a draft's tokens, rows over
a shared prefix), refusing what they cannot compute, and taken by the eager model and the
compiled decode steps in place of PyTorch's operations."""

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


def test_a_drafts_rows_each_see_the_positions_up_to_their_own(native_kernels):
    """A draft's check: query row r of a K/V head (query head r // W, draft position
    r % W) sees positions 0..pos[r % W]."""
    g = torch.Generator().manual_seed(3)
    heads, groups, width, dim = 4, 2, 5, 32
    k, v = torch.randn(heads, 256, dim, generator=g), torch.randn(heads, 256, dim, generator=g)
    q = torch.randn(heads, groups * width, dim, generator=g)
    positions = torch.arange(100, 100 + width)
    got = native.decode_attention(q, k, v, positions)
    for r in range(groups * width):
        want = reference(q[:, r:r + 1], k, v, 100 + r % width)
        torch.testing.assert_close(got[:, r:r + 1].double(), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("rows,heads,groups,width,dim,prefix,own", [
    (3, 4, 2, 1, 32, 449, 5),       # beams of the shipped model after a prompt
    (12, 4, 2, 4, 32, 300, 4),      # scored names, 4 tokens each
    (2, 2, 7, 1, 64, 0, 3),         # nothing shared
    (2, 2, 2, 3, 16, 40, 3),        # the test models' head size
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_over_a_shared_prefix_see_it_and_their_own_positions(native_kernels, rows, heads,
                                                                  groups, width, dim, prefix,
                                                                  own, dtype):
    """branch_attention: every query sees the whole shared prefix and its row's own
    positions up to its own (the last `width` are the queries'), one softmax over both;
    against float64, with the cache's positions past the prefix huge (never read)."""
    g = torch.Generator().manual_seed(rows * 100 + prefix)
    k = torch.randn(heads, 512, dim, generator=g).to(dtype)
    v = torch.randn(heads, 512, dim, generator=g).to(dtype)
    k[:, prefix:], v[:, prefix:] = 1e30, -1e30
    own_k = torch.randn(rows, heads, own, dim, generator=g).to(dtype)
    own_v = torch.randn(rows, heads, own, dim, generator=g).to(dtype)
    q = torch.randn(rows, heads, groups * width, dim, generator=g) * 2
    limits = torch.arange(own - width, own)
    got = native.branch_attention(q, k, v, torch.tensor([prefix]), own_k, own_v, limits)
    assert got.shape == q.shape and got.dtype == torch.float32
    for b in range(rows):
        for r in range(groups * width):
            seen = own - width + r % width + 1
            keys = torch.cat([k[:, :prefix], own_k[b, :, :seen]], 1)
            values = torch.cat([v[:, :prefix], own_v[b, :, :seen]], 1)
            want = reference(q[b, :, r:r + 1], keys, values, prefix + seen - 1)
            torch.testing.assert_close(got[b, :, r:r + 1].double(), want, rtol=1e-5, atol=2e-6)


def test_eager_scoring_and_beams_attend_with_it(native_kernels, random_model, monkeypatch):
    """attention.attend_shared (names scored, beams stepped eagerly) calls the kernel and
    computes what its PyTorch form computes."""
    from model.attention import attend_shared

    g = torch.Generator().manual_seed(5)
    q = torch.randn(6, 4, 3, 16, generator=g)
    prefix_k, prefix_v = torch.randn(1, 2, 50, 16, generator=g), torch.randn(1, 2, 50, 16,
                                                                           generator=g)
    k, v = torch.randn(6, 2, 4, 16, generator=g), torch.randn(6, 2, 4, 16, generator=g)
    calls = []
    kernel = native.branch_attention
    monkeypatch.setattr(native, "branch_attention", lambda *a: calls.append(1) or kernel(*a))
    got = attend_shared(q, prefix_k, prefix_v, k, v)
    assert calls
    monkeypatch.setattr(native, "attends", lambda k: False)
    torch.testing.assert_close(got, attend_shared(q, prefix_k, prefix_v, k, v),
                               rtol=1e-5, atol=1e-5)


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
    with pytest.raises(RuntimeError, match="positions must be int64"):
        native.decode_attention(q, k, k, torch.tensor([3.0]))
    with pytest.raises(RuntimeError, match="one per query row"):
        native.decode_attention(q, k, k, torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.branch_attention(q[None], k, k, torch.tensor([17]), k[None], k[None],
                                torch.tensor([0]))
    with pytest.raises(RuntimeError, match="disagree"):
        native.branch_attention(q[None], k, k, torch.tensor([4]), k[None].bfloat16(),
                                k[None].bfloat16(), torch.tensor([0]))
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


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_the_compiled_beam_and_draft_steps_call_them(native_kernels, tiny, monkeypatch):
    """Compiled with the kernels loaded, a beam step calls branch_attention and a draft's
    check decode_attention (seen by the profiler), and both compute the eager model's
    logits with PyTorch's attention."""
    import copy

    from model.generate import DRAFT_PASS
    from model.kv_cache import branch_room

    model = copy.deepcopy(tiny.model)
    prepare_for_inference(model)
    step = DecodeStep(model, 128, beams=3, room=branch_room(13), verify=DRAFT_PASS)
    step.compile()
    assert step._branch_fn is not None and step._verify_fn is not None, step.failed
    ids = tiny.tokenizer.encode("class Node:\n    def __init__(self, value):\n        self.")
    rows, draft = torch.tensor([[ids[3]], [ids[4]], [ids[5]]]), torch.tensor([ids[6:10]])
    base = model.new_cache(1, 128)
    with torch.inference_mode():
        model(torch.tensor([ids]), base, last_only=True)
        with torch.profiler.profile() as prof:
            beams = step(rows, base.branch(3, 13))
        assert "codecomplete_native::branch_attention" in {e.name for e in prof.events()}
        with torch.profiler.profile() as prof:
            checked = step(draft, base)
        assert "codecomplete_native::decode_attention" in {e.name for e in prof.events()}
    model.decode_step = None
    monkeypatch.setattr(native, "attends", lambda k: False)
    base = model.new_cache(1, 128)
    with torch.inference_mode():
        model(torch.tensor([ids]), base, last_only=True)
        want_beams = model(rows, base.branch(3, 13))
        want_checked = model(draft, base)
    torch.testing.assert_close(beams, want_beams, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(checked, want_checked, rtol=1e-4, atol=1e-4)
