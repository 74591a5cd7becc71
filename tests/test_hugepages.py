"""model/hugepages.py: a prepared model's large weights copied into 2 MB-aligned mappings
advised to use huge pages: the same values, ties kept, the model's output unchanged, and
nothing moved where the system cannot be asked."""

from __future__ import annotations

import copy

import pytest
import torch

from model import hugepages


def anon_huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages"))


def test_large_weights_move_into_aligned_mappings_with_the_same_values(random_model,
                                                                        monkeypatch):
    model = copy.deepcopy(random_model)
    model.lm_head.weight = model.embed_tokens.weight          # tied, as many models are
    ids = torch.randint(0, 1024, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    small = model.layers[0].input_layernorm.weight
    limit = 64 * 1024                     # the test model's weights are small: a low bar
    tensors = [*model.parameters(), *model.buffers()]     # rotary tables too
    big = [t for t in tensors if t.numel() * t.element_size() >= limit]
    assert big
    if not hugepages.available():
        assert hugepages.move_weights(model, limit) == 0
        return
    moved = hugepages.move_weights(model, limit)
    assert moved == sum(t.numel() * t.element_size() for t in
                        {t.data_ptr(): t for t in big}.values())   # each tensor once
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name
        if t.numel() * t.element_size() >= limit:
            assert t.data_ptr() % hugepages.HUGE_PAGE == 0, name
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.layers[0].input_layernorm.weight is small        # below the bar: stays
    with torch.no_grad():
        assert torch.equal(model(ids), want)


def test_a_weight_of_megabytes_is_backed_by_huge_pages_where_linux_grants_them():
    """The advice is taken (AnonHugePages grows by most of the copy) where THP is on; a
    system with it off moves nothing, which `available` says."""
    if not hugepages.available():
        pytest.skip("transparent huge pages are off on this system: nothing to measure")
    weight = torch.randn(8 * 2**20 // 4)                            # 8 MB of fp32
    before = anon_huge_kb()
    copy_ = hugepages.huge_copy(weight)
    assert copy_ is not None and torch.equal(copy_, weight)
    assert copy_.data_ptr() % hugepages.HUGE_PAGE == 0
    assert anon_huge_kb() - before >= 4 * 1024


def test_nothing_moves_where_huge_pages_are_off(random_model, monkeypatch):
    model = copy.deepcopy(random_model)
    monkeypatch.setattr(hugepages, "available", lambda: False)
    pointers = [t.data_ptr() for t in model.state_dict().values()]
    assert hugepages.move_weights(model, 0) == 0
    assert [t.data_ptr() for t in model.state_dict().values()] == pointers
