import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.generate import CANCELLED, LENGTH, STOP, GenerationConfig, generate
from model.sampling import filter_logits, sample_next


def nucleus(logits: torch.Tensor, top_p: float) -> set[int]:
    """Reference nucleus: most likely tokens until their mass reaches top_p."""
    probs = torch.softmax(logits.double(), -1)
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i].item()
        if mass >= top_p:
            break
    return kept


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), top_p=st.floats(0.05, 0.99), scale=st.floats(0.5, 8.0))
def test_top_p_never_samples_outside_the_nucleus(seed, top_p, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(50, generator=g) * scale
    allowed = nucleus(logits, top_p)
    draws = sample_next(logits.expand(400, -1), temperature=1.0, top_p=top_p, generator=g)
    assert set(draws.tolist()) <= allowed


def test_filter_keeps_exactly_the_nucleus_and_top_k():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.8)).squeeze().tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, top_k=3)).squeeze().tolist()
    assert kept == [True, True, True, False]
    kept = torch.isfinite(filter_logits(logits, top_p=0.01)).squeeze().tolist()
    assert kept == [True, False, False, False]


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert sample_next(logits).tolist() == [1, 0]


def test_seeded_sampling_is_reproducible_and_n_candidates_differ(tiny):
    prompt = tiny.tokenizer.encode("class Point:\n    def ")
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.2, top_p=0.95, n=4, seed=7)
    a = generate(tiny.model, tiny.tokenizer, prompt, cfg)
    b = generate(tiny.model, tiny.tokenizer, prompt, cfg)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert len(a.candidates) == 4
    assert len({c.text for c in a.candidates}) > 1


def test_max_tokens_stop_strings_and_stop_callback(tiny):
    tok = tiny.tokenizer
    prompt = tok.encode("class Box:\n    def __init__(self, value):")
    r = generate(tiny.model, tok, prompt, GenerationConfig(max_new_tokens=3))
    assert r.candidates[0].finish_reason in (LENGTH, STOP)
    assert len(r.candidates[0].token_ids) <= 3
    r = generate(tiny.model, tok, prompt, GenerationConfig(max_new_tokens=40, stop=("\n",)))
    assert "\n" not in r.text and r.candidates[0].finish_reason == STOP
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    r = generate(tiny.model, tok, prompt, GenerationConfig(max_new_tokens=40),
                 should_stop=stop_after_two)
    assert r.candidates[0].finish_reason == CANCELLED
    assert len(r.candidates[0].token_ids) == 2


def test_banned_first_tokens(tiny):
    tok = tiny.tokenizer
    prompt = tok.encode("def area(width, height):\n    ")
    greedy = generate(tiny.model, tok, prompt, GenerationConfig(max_new_tokens=3))
    first = greedy.candidates[0].token_ids[0]
    banned = generate(tiny.model, tok, prompt,
                      GenerationConfig(max_new_tokens=3, ban_first=(first,)))
    assert banned.candidates[0].token_ids[0] != first
