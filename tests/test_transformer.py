import pytest
import torch

from model import native
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

    from model import attention
    assert (TorchVersion(str(torch.__version__)) >= (2, 5)) == attention._SDPA_GQA
    assert "2.13.0+cpu" < "2.5"                # why plain string comparison was wrong


def test_bf16_decoding_attends_in_fp32_on_cpu(random_model):
    """A bf16 model on CPU decodes one token at a time with its attention in fp32 (the
    bf16 kernel is ~3x slower there), and each step's logits are those of the fp32 model
    up to bf16 weight rounding. A prompt's attention is in fp32 too (1.1x faster on an
    AVX-512 CPU with native bf16), and so is a step of two rows, which PyTorch's kernel
    attends (the native kernel, where it is built, takes one row's step)."""
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
        with torch.no_grad():                      # as the server runs it
            two = ids[:, :9].repeat(2, 1)
            cache = bf16.new_cache(2)
            bf16(two[:, :8], cache)                # a prompt
            bf16(two[:, 8:], cache)                # a step of two rows
    finally:
        F.scaled_dot_product_attention = real
    assert calls == [torch.float32] * (2 * len(bf16.layers))


def test_int8_weight_only_layers_compute_with_their_rounded_weights(random_model):
    """model/quantize.py: each int8 layer is its dequantized weight, each weight within
    half a step of its bf16 original, and the quantized model's logits stay close."""
    import copy

    import torch.nn.functional as F

    from model.inference import prepare_for_inference
    from model.quantize import Int8Linear, dequantized, quantize_int8

    bf16 = copy.deepcopy(random_model).to(torch.bfloat16)
    q = copy.deepcopy(bf16)
    fused = copy.deepcopy(bf16)
    report = prepare_for_inference(fused, int8=True)      # as the server does
    assert report["int8 layers"] == str(4 * len(fused.layers) + 1)     # + the output head
    assert sum(isinstance(m, Int8Linear) for m in fused.modules()) == 4 * len(fused.layers) + 1
    n = quantize_int8(q)
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert n == len(layers) == 7 * len(q.layers) + 1
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
        c = fused(ids).float()
    for out in (b, c):
        assert (a - out).abs().max() < 0.25 * a.abs().max()
        assert (a.argmax(-1) == out.argmax(-1)).float().mean() > 0.8


def test_int8_keeps_an_fp32_models_own_weights_for_prefill(random_model):
    """An fp32 model quantized for decoding keeps its fp32 weights, shared and not copied,
    for calls of many rows (prefill stays on the fp32 path, which CPUs without native
    bf16 run several times faster), and the output head, tied to the embeddings, is
    quantized too while its float weight stays the embedding table itself."""
    import copy

    import torch.nn.functional as F

    from model import quantize
    from model.quantize import Int8Linear, dequantized

    q = copy.deepcopy(random_model).float()
    up = q.layers[0].mlp.up_proj.weight
    quantize.quantize_int8(q)
    layer = q.layers[0].mlp.up_proj
    assert layer.full.dtype == torch.float32 and layer.full.data_ptr() == up.data_ptr()
    head = q.lm_head
    assert isinstance(head, Int8Linear)
    assert head.full.data_ptr() == q.embed_tokens.weight.data_ptr()
    many = torch.randn(quantize.ROWS + 1, layer.in_features)
    torch.testing.assert_close(layer(many), F.linear(many, up), atol=0, rtol=0)
    one = torch.randn(1, head.in_features)
    assert head(one).dtype == torch.float32
    torch.testing.assert_close(head(one), F.linear(one, dequantized(head)),
                               atol=0.05, rtol=0.02)
    # a draft's check (DRAFT_PASS tokens in one pass) is a decode call: int8, not fp32
    from model.generate import DRAFT_PASS
    check = torch.randn(DRAFT_PASS, layer.in_features)
    assert not torch.equal(layer(check), F.linear(check, up))
    torch.testing.assert_close(layer(check), F.linear(check, dequantized(layer)),
                               atol=0.05, rtol=0.02)


def test_the_served_model_computes_what_the_trained_one_does(random_model, tiny):
    """model/inference.py: fused q/k/v and gate/up and the measured output head give the
    trained model's logits, at prefill and token by token, and its greedy tokens."""
    import copy

    from model.inference import prepare_for_inference

    served = copy.deepcopy(random_model)
    report = prepare_for_inference(served)
    attn, mlp = served.layers[0].self_attn, served.layers[0].mlp
    assert attn.q_proj is None and attn.qkv_proj is not None
    assert mlp.up_proj is None and mlp.gate_up_proj is not None
    assert "head" in report
    n = len(served.layers)
    assert report["fused layers"] == f"q/k/v {n}, gate/up {n}"
    assert prepare_for_inference(served)["fused layers"] == "q/k/v 0, gate/up 0"   # once only
    ids = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(served(ids), random_model(ids), atol=1e-5, rtol=1e-4)
        rotations = []
        hook = served.rotary.register_forward_hook(lambda *a: rotations.append(1))
        served(ids)
        hook.remove()
        assert len(rotations) == n               # q and k rotated as one tensor per layer
        cache = served.new_cache(batch=2)
        steps = torch.cat([served(ids[:, i:i + 1], cache) for i in range(40)], dim=1)
    torch.testing.assert_close(steps, random_model(ids), atol=1e-5, rtol=1e-4)
    model = copy.deepcopy(tiny.model)
    prepare_for_inference(model)
    text = "def area(width, height):\n    return width * height\n\n\ndef "
    for cut in range(20, len(text), 3):
        ids = tiny.tokenizer.encode(text[:cut])
        for beams in (1, 4):
            cfg = GenerationConfig(max_new_tokens=10, beams=beams)
            want = generate(tiny.model, tiny.tokenizer, ids, cfg).candidates[0].token_ids
            got = generate(model, tiny.tokenizer, ids, cfg).candidates[0].token_ids
            assert got == want, (text[:cut], beams)


def test_every_form_of_the_output_head_is_the_same_product():
    import torch.nn.functional as F

    from model.inference import FORMS, ONE_ROW_ONLY, measured_head, pack

    w = torch.randn(300, 48, generator=torch.Generator().manual_seed(6))
    copies = {"transposed": w.T.contiguous(), "packed": pack(w)}
    # oneDNN's packing is there wherever PyTorch was built with oneDNN (x86-64 Linux here)
    assert copies["packed"] is not None or not torch.backends.mkldnn.is_available()
    for rows in (1, 4, 7):
        x = torch.randn(rows, 48)
        for name, form in FORMS.items():
            if (rows > 1 and name in ONE_ROW_ONLY) or (name in copies and copies[name] is None) \
                    or (name == "native" and not native.multiplies(w)):   # not built here
                continue
            torch.testing.assert_close(form(x, w, copies.get(name)), F.linear(x, w),
                                       atol=1e-5, rtol=1e-5, msg=name)
    head = measured_head(w)
    assert head.one in FORMS and head.few in FORMS
    assert (head.transposed is None) == ("transposed" not in (head.one, head.few))
    assert (head.packed is None) == ("packed" not in (head.one, head.few))
    for rows in (1, 3, 20):
        x = torch.randn(2, rows, 48)
        torch.testing.assert_close(head(x), F.linear(x, w), atol=1e-5, rtol=1e-5)


def test_a_packed_layer_is_the_plain_product_copied_and_compiled():
    """model/inference.py's oneDNN-packed form (a second copy of the weight, chosen where it
    wins by a fifth: a 0.5B model's bf16 decoding about twice as fast on an AVX-512 AMD
    EPYC): its product is F.linear's for one row and a few (more take the plain weight),
    a deep copy of the layer shares the packed copy (an opaque tensor, which cannot be
    copied), and a compiled graph multiplies by the plain weight, which inductor can."""
    import copy

    import torch.nn.functional as F

    from model.inference import MeasuredLinear, pack

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN to pack weights with")
    g = torch.Generator().manual_seed(9)
    w = torch.randn(256, 64, generator=g).bfloat16()
    b = torch.randn(256, generator=g).bfloat16()
    packed = pack(w)
    assert packed is not None
    layer = MeasuredLinear(w, b, "packed", "packed", None, 4, packed=packed)
    for rows in (1, 4, 20):
        x = torch.randn(rows, 64, generator=g).bfloat16()
        torch.testing.assert_close(layer(x).float(), F.linear(x.float(), w.float(), b.float()),
                                   atol=2e-2, rtol=2e-2)
    twin = copy.deepcopy(torch.nn.Sequential(layer))[0]
    assert twin.packed is layer.packed and twin.weight is not layer.weight
    x = torch.randn(1, 64, generator=g).bfloat16()
    torch.testing.assert_close(twin(x), layer(x))
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(x).float(), F.linear(x, w, b).float(),
                                   atol=2e-2, rtol=2e-2)


def test_measured_layers_are_the_blocks_own_products(random_model):
    """model/inference.py measure_layers: every plain linear layer of the blocks becomes a
    MeasuredLinear on the same weight and bias (not copied), giving F.linear's product for
    one row, a few rows and a prefill's many, with each form chosen once per shape."""
    import copy

    import torch.nn.functional as F

    from model.inference import FORMS, ONE_ROW_ONLY, MeasuredLinear, measure_layers

    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(random_model).to(dtype)
        model.layers[0].self_attn.fuse()
        qkv = model.layers[0].self_attn.qkv_proj
        qkv.bias = torch.nn.Parameter(torch.randn(qkv.out_features, dtype=dtype))
        weight = qkv.weight
        n = measure_layers(model)
        assert n == 5 + 7 * (len(model.layers) - 1)       # layer 0: q/k/v fused into 1
        assert not any(type(m) is torch.nn.Linear for m in model.layers.modules())
        layer = model.layers[0].self_attn.qkv_proj
        assert isinstance(layer, MeasuredLinear) and layer.weight is weight
        assert layer.one in FORMS and layer.few in FORMS and layer.few not in ONE_ROW_ONLY
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for rows in (1, 4, 20):
            x = torch.randn(rows, layer.weight.shape[1], dtype=dtype)
            want = F.linear(x.float(), weight.float(), layer.bias.float())
            torch.testing.assert_close(layer(x).float(), want, atol=tol, rtol=tol)
    ids = torch.randint(0, 1024, (1, 24), generator=torch.Generator().manual_seed(8))
    model = copy.deepcopy(random_model)
    measure_layers(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), random_model(ids), atol=1e-5, rtol=1e-4)


def test_int8_dynamic_layers_multiply_rounded_rows_by_rounded_weights(random_model):
    """`--quantize int8-dynamic`: a small call's rows are rounded to 8 bits (one scale per
    call) and multiplied by the int8 weight in oneDNN's kernel: the product of the two
    rounded operands, whose logits stay close to bf16's; many rows keep the float weight."""
    import copy

    import torch.nn.functional as F

    from model import quantize
    from model.quantize import Int8Linear, dequantized

    if quantize.int8_activations_available() is not None:
        pytest.skip(quantize.int8_activations_available())
    bf16 = copy.deepcopy(random_model).to(torch.bfloat16)
    q = copy.deepcopy(bf16)
    quantize.quantize_int8(q, activations_int8=True)
    layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.key in quantize._PACKED for m in layers)
    # no int8 copy beside oneDNN's packed one (the float weight stays for prefill)
    assert all(m.weight is None and m.scales is None for m in layers)
    layer = q.layers[0].mlp.down_proj
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    step = x.float().abs().max() / 127
    rounded = torch.round(x.float() / step) * step
    want = F.linear(rounded, dequantized(layer))
    got = layer(x).float()
    torch.testing.assert_close(got, want, atol=0.02 * want.abs().max().item(), rtol=0.02)
    weight_only = F.linear(x.float(), dequantized(layer))
    assert (got - want).abs().mean() < (got - weight_only).abs().mean()   # rows were rounded
    many = torch.randn(quantize.ROWS + 1, layer.in_features, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(many), F.linear(many, layer.full), atol=0, rtol=0)
    ids = torch.randint(0, 1024, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = bf16(ids).float(), q(ids).float()
    assert (a - b).abs().max() < 0.25 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
    keys = {m.key for m in layers}
    del q, layers, layer
    import gc
    gc.collect()
    assert not keys & set(quantize._PACKED)         # packed weights go with their layers


def test_int8_dynamic_is_used_only_where_it_runs_and_pays(random_model, monkeypatch):
    """prepare_for_inference takes int8-dynamic's layers only where int8_activations_pay
    (its kernel runs and measured faster than weight-only int8) says so, and otherwise
    reports why and keeps weight-only int8."""
    import copy

    from model import inference, quantize
    from model.quantize import Int8Linear

    why = quantize.int8_activations_pay()
    assert why is None or "slower" in why or "failed" in why
    for verdict in ("oneDNN's int8 kernel failed here (RuntimeError)", why):
        monkeypatch.setattr(inference, "int8_activations_pay", lambda v=verdict: v)
        q = copy.deepcopy(random_model).to(torch.bfloat16)
        report = inference.prepare_for_inference(q, int8=True, int8_activations=True)
        assert report["int8 activations"] == (verdict or "yes")
        layers = [m for m in q.modules() if isinstance(m, Int8Linear)]
        assert layers and all((m.key is not None) == (verdict is None) for m in layers)


def test_branches_attend_as_if_each_row_held_the_whole_sequence(random_model):
    """kv_cache.BranchCache: rows continuing one cached prompt (a chunk of several
    tokens, then one at a time, then reordered as beam search does) get the logits of
    their whole sequence computed from scratch; the prompt's cache is left as it was."""
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, 1024, (1, 40), generator=g)
    chunk, step, more = (torch.randint(0, 1024, (3, n), generator=g) for n in (3, 1, 1))
    with torch.no_grad():
        base = random_model.new_cache()
        random_model(prompt, base)
        keys = base.k[0][:, :, :40].clone()
        branch = base.branch(3, 6)
        a, b = random_model(chunk, branch), random_model(step, branch)
        branch.reorder([2, 2, 0])
        c = random_model(more, branch)
        for r, parent in enumerate([2, 2, 0]):
            rows = [(r, a, chunk), (r, b, step)]
            for row, got, ids in rows:
                whole = random_model(torch.cat([prompt[0], chunk[row], step[row]])[None])
                at = 40 if ids is chunk else 43
                torch.testing.assert_close(got[row], whole[0, at:at + ids.shape[1]],
                                           atol=1e-5, rtol=1e-4)
            whole = random_model(torch.cat([prompt[0], chunk[parent], step[parent],
                                            more[r]])[None])
            torch.testing.assert_close(c[r], whole[0, 44:45], atol=1e-5, rtol=1e-4)
    assert base.length == 40 and torch.equal(base.k[0][:, :, :40], keys)
    import pytest

    from model.kv_cache import branch_room
    assert branch.capacity == 40 + branch_room(6)          # room for 6, rounded up
    with pytest.raises(ValueError, match="branch cache overflow"):
        random_model(torch.zeros(3, branch.capacity - branch.length + 1, dtype=torch.long),
                     branch)


def test_beams_memory_is_flat_in_the_prompt_length(tiny, monkeypatch):
    """Beam search stores only the generated positions per beam: the same bytes after a
    20-token prompt as after a 600-token one (copying the prompt per beam, as before,
    grew with it)."""
    from model.kv_cache import KVCache, branch_room

    made = []
    real = KVCache.branch

    def spy(self, batch, room):
        made.append(real(self, batch, room))
        return made[-1]

    monkeypatch.setattr(KVCache, "branch", spy)
    tok = tiny.tokenizer
    ids = tok.encode("def area(width, height):\n    return width * height\n\n" * 60)
    for n in (20, 600):
        generate(tiny.model, tok, ids[:n], GenerationConfig(max_new_tokens=8, beams=4,
                                                            stop=("\n",)))
    assert len(made) == 2 and made[0].prefix == 20 and made[1].prefix == 600
    assert made[0].stored_bytes() == made[1].stored_bytes()
    one_prompt_row = sum(t[:1, :, :600].numel() * t.element_size()
                         for t in made[1].base.k + made[1].base.v)
    # 4 beams of room for 8 tokens and one more (rounded up: kv_cache.branch_room), not 600
    assert made[1].stored_bytes() == 4 * branch_room(9) * one_prompt_row // 600


def test_an_empty_model_is_made_in_its_dtype_without_an_fp32_copy():
    """Loading a bf16 checkpoint onto a GPU must not peak at twice its size: the empty
    model is cast on the meta device before any memory is allocated. Every fp32 tensor
    made on a real device is counted: making the model may cost no more of them than
    making its rotary tables alone (computed in fp32, then cast)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from model.transformer import Rotary, Transformer

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.fp32_bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if (isinstance(out, torch.Tensor) and out.device.type != "meta"
                    and out.dtype == torch.float32):
                self.fp32_bytes += out.numel() * out.element_size()
            return out

    config = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=704,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    with Allocations() as seen:
        model = Transformer.empty(config, device="cpu", dtype=torch.bfloat16)
    with Allocations() as rotary:
        Rotary(config).to(dtype=torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert 0 < rotary.fp32_bytes < 0.3 * weights
    assert seen.fp32_bytes <= rotary.fp32_bytes, (seen.fp32_bytes, rotary.fp32_bytes)


def test_int8_layers_pad_bf16_products_to_a_row_bucket_with_the_same_rows(random_model,
                                                                             monkeypatch):
    """model/quantize.py: a bf16 call of many rows is multiplied padded to a multiple of
    ROW_BUCKET rows (one oneDNN kernel per bucket, not per prompt length), and its rows
    are the unpadded product's."""
    import copy

    import torch.nn.functional as F

    from model import quantize

    q = copy.deepcopy(random_model).to(torch.bfloat16)
    quantize.quantize_int8(q)
    layer = q.layers[0].mlp.up_proj
    seen: list[int] = []
    real = F.linear

    def recording(x, w, b=None):
        seen.append(x.shape[0])
        return real(x, w, b)
    monkeypatch.setattr(quantize.F, "linear", recording)
    for n in (quantize.ROWS + 1, quantize.ROW_BUCKET, quantize.ROW_BUCKET + 3, 101):
        x = torch.randn(1, n, layer.in_features, dtype=torch.bfloat16)
        y = layer(x)
        assert y.shape == (1, n, layer.out_features)
        torch.testing.assert_close(y, real(x, layer.full), atol=0, rtol=0)
        assert seen[-1] % quantize.ROW_BUCKET == 0 and 0 <= seen[-1] - n < quantize.ROW_BUCKET


def test_shared_prefix_attention_in_bf16_on_a_cpu_is_the_fp32_one_cast_back():
    """model/attention.attend_shared computes bf16 inputs on a CPU in float32 (oneDNN's
    bf16 batched product builds a kernel per new shape, and these shapes are new at
    nearly every call): the result is the fp32 computation's, rounded once."""
    from model.attention import attend_shared

    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, 8, 3, 32, generator=g).bfloat16()
    pk, pv = (torch.randn(1, 4, 37, 32, generator=g).bfloat16() for _ in range(2))
    k, v = (torch.randn(5, 4, 3, 32, generator=g).bfloat16() for _ in range(2))
    got = attend_shared(q, pk, pv, k, v)
    assert got.dtype == torch.bfloat16
    want = attend_shared(q.float(), pk.float(), pv.float(), k.float(), v.float())
    assert torch.equal(got, want.bfloat16())


def test_a_chunk_after_cached_positions_attends_causally_by_either_kernel(monkeypatch):
    """model/attention.attend: queries for the last T of L positions see keys up to their
    own, whether the chunk is made square with zero queries for the causal kernel (most
    of the keys new) or masked (few new): both equal attention written out by hand."""
    from model import attention

    real = attention.F.scaled_dot_product_attention
    masked: list[bool] = []

    def recording(*args, **kwargs):
        masked.append(kwargs.get("attn_mask") is not None)
        return real(*args, **kwargs)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    g = torch.Generator().manual_seed(5)
    L = 40
    k, v = (torch.randn(1, 2, L, 16, generator=g) for _ in range(2))
    for T in (3, 19, 20, 33, 39):                   # 2T < L: masked; 2T >= L: square
        q = torch.randn(1, 4, T, 16, generator=g)
        scores = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / 4.0
        visible = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)
        want = scores.masked_fill(~visible, float("-inf")).softmax(-1) \
            @ v.repeat_interleave(2, dim=1)
        torch.testing.assert_close(attention.attend(q, k, v), want, atol=1e-5, rtol=1e-4)
        assert masked[-1] == (2 * T < L)


def test_last_only_computes_the_last_layer_for_the_last_position_alone(random_model):
    """`last_only` (every prefill): the last layer's MLP sees one row, not the prompt's;
    the logits are the full pass's last row and the cache holds every position's keys and
    values, with or without cached positions before, and in a branch."""
    ids = torch.randint(0, 1024, (1, 50), generator=torch.Generator().manual_seed(3))
    rows = []
    hook = random_model.layers[-1].mlp.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[1]))
    try:
        full_cache = random_model.new_cache()
        full = random_model(ids, full_cache)
        rows.clear()
        assert torch.allclose(random_model(ids, last_only=True)[:, -1], full[:, -1],
                              atol=1e-5, rtol=1e-4)
        cache = random_model.new_cache()
        random_model(ids[:, :20], cache, last_only=True)
        last = random_model(ids[:, 20:], cache, last_only=True)
        assert rows == [1, 1, 1] and last.shape[1] == 1
        torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)
        for a, b in zip(cache.k + cache.v, full_cache.k + full_cache.v, strict=True):
            torch.testing.assert_close(a[:, :, :50], b[:, :, :50], atol=1e-5, rtol=1e-4)
        branch = random_model.new_cache()
        random_model(ids[:, :20], branch)
        rows.clear()
        tail = random_model(ids[:, 20:].expand(2, -1), branch.branch(2, 30), last_only=True)
        assert rows == [1]
        torch.testing.assert_close(tail[:, -1], full[:, -1].expand(2, -1), atol=1e-5,
                                   rtol=1e-4)
    finally:
        hook.remove()
