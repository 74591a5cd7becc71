import torch

from model.config import ModelConfig
from model.generate import GenerationConfig, generate


def test_kv_cache_logits_equal_full_forward(random_model):
    ids = torch.randint(0, 1024, (2, 70), generator=torch.Generator().manual_seed(1))
    full = random_model(ids)
    cache = random_model.new_cache(batch=2)
    parts = [random_model(ids[:, a:b], cache) for a, b in [(0, 30), (30, 31), (31, 64), (64, 70)]]
    assert cache.length == 70
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_token_by_token_decoding_matches_full_forward(random_model):
    ids = torch.randint(0, 1024, (1, 40), generator=torch.Generator().manual_seed(2))
    full = random_model(ids)
    cache = random_model.new_cache()
    steps = [random_model(ids[:, i:i + 1], cache) for i in range(40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_prefix_reuse_equals_recomputation(random_model, tokenizer):
    first = tokenizer.encode("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n")
    second = first + tokenizer.encode("    return a - b\n")
    cfg = GenerationConfig(max_new_tokens=12)
    cache = random_model.new_cache()
    generate(random_model, tokenizer, first, cfg, cache=cache)
    reused = generate(random_model, tokenizer, second, cfg, cache=cache)
    fresh = generate(random_model, tokenizer, second, cfg)
    assert reused.reused_tokens >= len(first) - 1
    assert fresh.reused_tokens == 0
    assert reused.candidates[0].token_ids == fresh.candidates[0].token_ids
    # and the cached keys are the recomputed ones
    c2 = random_model.new_cache()
    random_model(torch.tensor([second]), c2)
    n = len(second)
    torch.testing.assert_close(cache.k[0][:, :, :n], c2.k[0][:, :, :n], atol=1e-5, rtol=1e-4)


def test_reuse_keeps_only_the_shared_prefix(random_model):
    cache = random_model.new_cache()
    random_model(torch.tensor([[1, 2, 3, 4, 5]]), cache)
    assert cache.reuse([1, 2, 9, 9]) == 2
    assert cache.tokens == [1, 2] and cache.length == 2
    assert cache.reuse([1, 2]) == 1  # always leaves at least one token to compute


def test_gqa_and_untied_configs_run():
    cfg = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                      max_position_embeddings=64)
    from model.transformer import Transformer

    m = Transformer(cfg)
    assert m(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 128)
    assert cfg.num_parameters() == sum(p.numel() for p in m.parameters())


def test_context_overflow_is_a_clear_error(random_model, tokenizer):
    import pytest

    with pytest.raises(ValueError, match="does not fit the context"):
        generate(random_model, tokenizer, [5] * 1024)


def test_sdpa_gqa_path_is_chosen_by_version_number():
    from torch.torch_version import TorchVersion

    from model import transformer
    assert (TorchVersion(str(torch.__version__)) >= (2, 5)) == transformer._SDPA_GQA
    assert "2.13.0+cpu" < "2.5"                # why plain string comparison was wrong


def test_bf16_decoding_attends_in_fp32_on_cpu(random_model):
    """A bf16 model on CPU decodes one token at a time with its attention in fp32 (the
    bf16 kernel is ~3x slower there), and each step's logits are those of the fp32 model
    up to bf16 weight rounding."""
    import copy

    import torch.nn.functional as F

    ids = torch.randint(0, 1024, (1, 48), generator=torch.Generator().manual_seed(3))
    fp32 = random_model(ids)
    bf16 = copy.deepcopy(random_model).to(torch.bfloat16)
    cache = bf16.new_cache()
    steps = torch.cat([bf16(ids[:, i:i + 1], cache) for i in range(48)], dim=1).float()
    err = (steps - fp32).abs().max()
    assert err < 0.1
    real = F.scaled_dot_product_attention
    calls = []

    def spy(q, k, v, **kw):
        calls.append(q.dtype)
        return real(q, k, v, **kw)

    F.scaled_dot_product_attention = spy
    try:
        cache = bf16.new_cache()
        bf16(ids[:, :1], cache)
    finally:
        F.scaled_dot_product_attention = real
    assert calls and set(calls) == {torch.float32}


def test_int8_weight_only_layers_compute_with_their_rounded_weights(random_model):
    """model/quantize.py: each int8 layer is its dequantized weight, each weight within
    half a step of its bf16 original, and the quantized model's logits stay close."""
    import copy

    import torch.nn.functional as F

    from model.quantize import Int8Linear, dequantized, quantize_int8

    bf16 = copy.deepcopy(random_model).to(torch.bfloat16)
    q = copy.deepcopy(bf16)
    n = quantize_int8(q)
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert n == len(layers) == 7 * len(q.layers)
    original = bf16.layers[0].mlp.up_proj.weight.float()
    layer = q.layers[0].mlp.up_proj
    step = layer.scales.float()[:, None]
    assert ((dequantized(layer) - original).abs() <= step * 0.51 + 1e-3).all()
    x = torch.randn(1, 5, layer.in_features, dtype=torch.bfloat16)     # 5 rows: int8
    torch.testing.assert_close(layer(x).float(), F.linear(x.float(), dequantized(layer)),
                               atol=0.05, rtol=0.02)
    ids = torch.randint(0, 1024, (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = bf16(ids).float(), q(ids).float()
    assert (a - b).abs().max() < 0.25 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
