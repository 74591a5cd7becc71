"""Project memory (completion/cache_lm.py): exact counts, updates equal to a rebuild, a
blend that stays a distribution, and generation that copies what the user's code repeats
while every rule of decoding still holds."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
import torch

from completion.cache_lm import (
    ORDERS,
    Counts,
    DocumentCounts,
    Lookup,
    Memory,
    Mixer,
    context_hash,
)
from completion.pipeline import generate_candidates, memory_mixer, prepare
from completion.settings import EngineSettings
from model.generate import GenerationConfig, generate


def brute_counts(seqs: list[list[int]]) -> dict[int, dict[tuple, Counter]]:
    out: dict[int, dict[tuple, Counter]] = {k: defaultdict(Counter) for k in ORDERS}
    for s in seqs:
        for i in range(len(s) - 1):
            for k in ORDERS:
                if i - k + 1 >= 0:
                    out[k][tuple(s[i - k + 1:i + 1])][s[i + 1]] += 1
    return out


def as_dict(found) -> dict[int, int]:
    nxt, cnt = found
    return dict(zip(nxt.tolist(), cnt.tolist(), strict=True))


def random_seqs(rng: random.Random, n: int, vocab: int = 5, longest: int = 80) -> list[list[int]]:
    return [[rng.randrange(vocab) for _ in range(rng.randrange(longest))] for _ in range(n)]


def assert_same_counts(lookup: Lookup | Counts, seqs: list[list[int]]) -> int:
    """Every context of `seqs` has exactly its brute-force counts in `lookup`, and a
    context that never occurs has none."""
    checked = 0
    for k, table in brute_counts(seqs).items():
        for ctx, counts in table.items():
            assert as_dict(lookup.find(k, context_hash(list(ctx), k))) == dict(counts), (k, ctx)
            checked += 1
    assert as_dict(lookup.find(2, context_hash([99, 98], 2))) == {}
    return checked


def test_counts_are_exact_and_never_span_two_sequences():
    rng = random.Random(0)
    seqs = random_seqs(rng, 30)
    counts = Counts(seqs)
    assert assert_same_counts(counts, seqs) > 500
    assert counts.tokens == sum(map(len, seqs))
    # [1, 2] ends one sequence and [3] starts the next: no 2-token context [2, 3] exists
    assert as_dict(Counts([[1, 2], [3, 4]]).find(2, context_hash([2, 3], 2))) == {}
    assert as_dict(Counts([[1, 2, 3, 4]]).find(2, context_hash([2, 3], 2))) == {4: 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_after_any_updates_equals_a_rebuild(seed):
    rng = random.Random(seed)
    memory = Memory()
    memory.REBUILD_MIN = 200        # rebuild the base now and then along the way
    current: dict[str, list[int]] = {}
    for step in range(60):
        name = f"f{rng.randrange(12)}"
        if rng.random() < 0.25:
            memory.remove(name)
            current.pop(name, None)
        else:
            seq = random_seqs(rng, 1)[0]
            assert memory.set(name, seq)
            current[name] = seq
        if step % 15 == 14:
            memory.rebuild()
        assert memory.tokens == sum(map(len, current.values()))
        if step % 5 == 0:
            assert_same_counts(memory.counter(), list(current.values()))
    assert_same_counts(memory.counter(), list(current.values()))
    some = sorted(current)[0]
    assert_same_counts(memory.counter(exclude=some),
                       [s for n, s in current.items() if n != some])


def test_memory_cap_leaves_out_what_does_not_fit():
    memory = Memory(cap_tokens=100)
    assert memory.set("a", list(range(60)))
    assert not memory.set("b", list(range(50)))       # 110 > 100: left out, said so
    assert memory.skipped == 1 and memory.tokens == 60 and memory.names == 1
    assert memory.set("a", list(range(90)))           # replacing counts the new size only
    assert not memory.set("a", list(range(101)))      # grown past the cap: dropped
    assert memory.tokens == 0 and memory.names == 0


def test_the_blend_is_a_distribution_and_changes_only_where_the_memory_matched():
    rng = random.Random(3)
    seqs = random_seqs(rng, 20, vocab=6)
    memory = Memory()
    for i, s in enumerate(seqs):
        memory.set(str(i), s)
    mixer = Mixer([memory.counter()], seqs[0][:4])
    logits = torch.randn(3, 40) * 3
    rows = [[1, 2], [], None]
    out = mixer(logits, rows)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-5)
    model = torch.log_softmax(logits, -1)
    assert torch.equal(out[2], model[2])                 # a finished row is left as it was
    assert not torch.allclose(out[0], model[0])          # [.., 1, 2] occurred: it moved
    assert torch.allclose(out[0, 6:].exp(), model[0, 6:].exp() * (out[0, 6:].exp().sum()
                                                                   / model[0, 6:].exp().sum()))
    # no match at all (a context the memory never saw): exactly the model's distribution
    unseen = Mixer([memory.counter()], [30, 31, 32])
    assert torch.equal(unseen(logits[:1], [[33]]), model[:1])
    # blend_one (evaluation) is the same arithmetic for one token
    history = [*mixer.left, 1, 2]
    for target in range(6):
        p = model[0, target].exp().item()
        assert mixer.blend_one(p, history, target) == pytest.approx(out[0, target].exp().item(),
                                                                    rel=1e-4)


def test_document_counts_hold_both_sides_of_the_cursor_and_nothing_between(tokenizer):
    doc = DocumentCounts()
    prefix, suffix = "alpha = beta_gamma(1)\nx = ", "\nalpha = beta_gamma(2)\n"
    lookup = doc.counts(tokenizer, prefix, suffix)
    above = tokenizer.encode("alpha = beta_gamma(")
    nxt, _ = lookup.find(2, context_hash(above, 2))
    assert len(nxt)                                      # seen above and below
    kept = doc._blocks
    assert doc.counts(tokenizer, prefix + "y", suffix) and doc._blocks is kept  # same line
    doc.counts(tokenizer, prefix + "\n", suffix)
    assert doc._blocks is not kept                       # a new line: recounted


LINE = "zq_frobnicate(widget_seventeen, qq=3)"
REPEATED = "".join(f"def handler_{i}(event):\n    {LINE}\n\n" for i in range(5))


def request(lm, prefix: str, suffix: str = "\n", **settings):
    """A request as the pipeline prepares it, with the document as its own memory."""
    s = EngineSettings(**settings)
    p = prepare(lm, prefix, suffix, s)
    return p, memory_mixer(lm, p, DocumentCounts(), None, s)


def test_greedy_copies_what_the_document_repeats_and_bans_still_hold(tiny):
    """A line repeated five times after the same context: the blend gives its tokens at
    least 5/(5 + alpha) of the probability, so greedy decoding writes it, whatever the
    model thinks; without the memory the tiny model does not."""
    prefix = REPEATED + "def handler_9(event):\n    "
    p, mixer = request(tiny, prefix, multiline="never")
    assert p.config.write_line                       # a blank line: FIM
    mixed = generate_candidates(tiny, p, mixer=mixer).candidates[0]
    plain = generate_candidates(tiny, p).candidates[0]
    assert mixed.text == LINE and plain.text != LINE
    assert mixer.stats.matched >= len(mixed.token_ids) - 1
    # the banned first token stays banned under the blend
    banned = replace(p.config, ban_first=(mixed.token_ids[0],))
    other = generate(tiny.model, tiny.tokenizer, p.ids, banned, heal=p.healed,
                     mixer=request(tiny, prefix, multiline="never")[1]).candidates[0]
    assert other.token_ids[0] != mixed.token_ids[0]


def test_beams_and_healing_hold_under_the_blend(tiny):
    """Mid-name: the cursor's partial token is healed (re-grown first) and the rest of the
    line found by beam search, with the blend at every step."""
    prefix = REPEATED + "def handler_9(event):\n    zq_fro"
    p, mixer = request(tiny, prefix)
    assert p.config.beams > 1 and p.healed
    r = generate_candidates(tiny, p, mixer=mixer).candidates[0]
    assert tiny.tokenizer.decode(r.token_ids).startswith(p.healed.decode())
    assert "zq_fro" + r.text == LINE


def test_an_empty_memory_changes_nothing(tiny):
    tok, model = tiny.tokenizer, tiny.model
    for text in ("class Box:\n    def __init__(self, value):\n        self.", "import "):
        ids = tok.encode(text)
        cfg = GenerationConfig(max_new_tokens=12)
        plain = generate(model, tok, ids, cfg).candidates[0]
        mixed = generate(model, tok, ids, cfg, mixer=Mixer([Lookup([(Counts([[5, 6, 7]]), 1)])],
                                                           ids)).candidates[0]
        assert mixed.token_ids == plain.token_ids
