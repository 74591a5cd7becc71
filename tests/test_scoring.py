"""Scoring continuations with a shared prompt and a KV cache, and identifier candidates."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator

import torch

from completion.cache_lm import Counts, Lookup, Mixer
from model.scoring import score_continuations, word_end_mask
from server.identifiers import candidates, greedy_name, name_counts, partial_word


def test_scores_equal_a_plain_forward_pass(random_model, tokenizer):
    torch.manual_seed(1)
    prompt = torch.randint(1, 1000, (40,)).tolist()
    conts = [[5, 6, 7], [8], [], [9, 10]]     # [] scores only "a name ends here"
    end = torch.zeros(random_model.config.vocab_size, dtype=torch.bool)
    end[[11, 12, 13]] = True
    cache = random_model.new_cache(1)
    cache.reuse([1, 2, 3])                        # a stale cache is fine
    got = score_continuations(random_model, prompt, conts, cache, end)
    for c, g in zip(conts, got, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(random_model(torch.tensor([prompt + c]))[0].float(), -1)
        want = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(c))
        want += torch.logsumexp(logp[len(prompt) + len(c) - 1][end], 0).item()
        assert abs(g - want) < 1e-3, (c, g, want)
    assert cache.tokens == prompt                 # the cache ends holding the prompt


def test_scores_with_the_memory_are_the_blends(random_model):
    """With a mixer, each scored token's probability is the blend generation would use
    (Mixer.blend_one of the model's own), given the continuation's ids before it; a
    continuation the memory has seen after the prompt outscores one it has not by far
    more than the model alone tells them apart."""
    torch.manual_seed(2)
    prompt = torch.randint(1, 1000, (30,)).tolist()
    seen, unseen = [21, 22, 23], [31, 32, 33]
    memory = Lookup([(Counts([prompt[-6:] + seen + [11]] * 4), 1)])
    mixer = Mixer([memory], prompt)
    end = torch.zeros(random_model.config.vocab_size, dtype=torch.bool)
    end[[11, 12, 13]] = True
    conts = [seen, unseen, []]
    got = score_continuations(random_model, prompt, conts, random_model.new_cache(1), end,
                              mixer)
    with torch.no_grad():
        for c, g in zip(conts, got, strict=True):
            p = torch.softmax(random_model(torch.tensor([prompt + c]))[0].float(), -1)
            want = sum(math.log(mixer.blend_one(p[len(prompt) - 1 + j, t].item(),
                                                prompt + c[:j], t))
                       for j, t in enumerate(c))
            last = p[len(prompt) + len(c) - 1]
            want += math.log(sum(mixer.blend_one(last[t].item(), prompt + c, t)
                                 for t in (11, 12, 13)))
            assert abs(g - want) < 1e-3, (c, g, want)
    assert got[0] > got[1] + 5                        # the memory's continuation wins
    plain = score_continuations(random_model, prompt, conts[:2], random_model.new_cache(1))
    assert abs(plain[0] - plain[1]) < 10 and got[0] - got[1] > plain[0] - plain[1] + 5


def test_word_end_mask(tokenizer):
    mask = word_end_mask(tokenizer, 1024)
    for i in range(tokenizer.vocab_size):
        b = tokenizer.token_bytes(i)
        if b[:1] in (b"(", b".", b"\n", b" "):
            assert mask[i], b
        if b[:1] in (b"a", b"_", b"Z", b"7"):
            assert not mask[i], b


def test_identifier_candidates():
    prefix = "import os\n\ntotal_count = 0\nfor token in tokens:\n    total_count += 1\nto"
    assert partial_word(prefix) == "to"
    assert partial_word("x = (") == ""
    counts = name_counts(prefix, "\nprint(total_count)\n", "to")
    names = candidates(counts, "to")
    assert names[0] == "total_count"              # used three times
    assert "tokens" in names and "token" in names
    assert "to" not in names
    assert greedy_name("to", "tal_count += 1") == "total_count"
    assert greedy_name("to", "(x)") == "to"
    assert "tuple" in candidates(name_counts("t", "", "t"), "t")   # a builtin


def test_engine_ranks_a_name_from_the_document_first(tiny):
    from completion.settings import EngineSettings
    from server.engine import CompletionEngine

    doc = ("zeta_quantity_total = 0\n"
           + "".join(f"zeta_quantity_total += {i}\n" for i in range(6))
           + "print(zeta_q")
    on = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=12))
    off = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=12, rerank=False))
    ranked = on.complete(doc, "")
    assert ranked and ranked[0].text.startswith("uantity_total"), ranked
    plain = off.complete(doc, "")
    assert not plain or not plain[0].text.startswith("uantity_total"), plain
    # The strong case stays right, and the cache still serves a repeat.
    node = ("class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
            "    def get_value(self):\n        return self.va")
    assert on.complete(node, "")[0].text.startswith("lue")
    assert on.complete(node, "")[0].text.startswith("lue")


def test_engine_after_a_module_suggests_only_its_names(tiny):
    from completion.settings import EngineSettings
    from server.engine import CompletionEngine

    # The document's own name is used often and recently, but `os` cannot have it.
    doc = ("import os\n" + "".join(f"pathway_items = {i}\n" for i in range(6))
           + "print(pathway_items)\nroot = os.pa")
    engine = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=12))
    out = engine.complete(doc, "")
    assert out, "no completion"
    name = "pa" + re.match(r"\w*", out[0].text).group(0)
    assert name in dir(os), out


def test_after_a_re_ranked_name_the_line_follows_the_memory(tiny):
    """Re-ranking replaces a wrong greedy pick (`zeta_quantit(self):`, what the tiny model
    wrote on one CPU; on another its own pass finds the name, so the pick is set here) by
    the document's name, and the rest of the line is written with the project memory's
    blend too (the document repeats it): without the blend, the tiny model writes a line
    of its own after the name (`uantity_total(self, name):` on the CPUs tried)."""
    from completion.pipeline import generate_candidates, memory_mixer, prepare
    from completion.settings import EngineSettings
    from server.engine import CompletionEngine

    doc = ("zeta_quantity_total = 0\n"
           + "log(zeta_quantity_total, flush=True)\n" * 6 + "log(zeta_q")
    engine = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=20))
    p = prepare(tiny, doc, "", engine.settings)
    engine._cache = tiny.model.new_cache(1, tiny.context)
    rests = {}
    for name, mixer in (("on", memory_mixer(tiny, p, engine._document, None,
                                            engine.settings)), ("off", None)):
        generated = generate_candidates(tiny, p, engine._cache, None, mixer)
        generated.candidates[0].text = "uantit(self):"          # a wrong greedy pick
        rests[name] = engine._rerank(doc, "", p.ids, p.healed, generated, None,
                                     mixer=mixer)
    assert rests["on"] == "uantity_total, flush=True)"
    assert rests["off"] != rests["on"]


def test_a_completion_list_offers_names_best_first_without_the_lines_rest(tiny):
    """`names` (textDocument/completion): after a partly typed name the answer is the rests
    of the ranked names alone, the re-ranked one first, each a different name; the inline
    answer at the same cursor goes on past the name; without a partial name the list is
    the inline answer; neither answer is served from the other's cache."""
    from completion.settings import EngineSettings
    from server.engine import NAMES_LISTED, CompletionEngine

    doc = ("zeta_quantity_total = 0\nzeta_quota = 1\n"
           + "log(zeta_quantity_total, flush=True)\n" * 6 + "log(zeta_q")
    engine = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=20))
    listed = [c.text for c in engine.complete(doc, "", names=True)]
    assert listed[0] == "uantity_total", listed
    assert "uota" in listed and len(listed) == len(set(listed)) <= NAMES_LISTED
    assert all(re.fullmatch(r"\w+", t) for t in listed), listed
    inline = engine.complete(doc, "")[0].text
    assert inline.startswith("uantity_total") and len(inline) > len("uantity_total")
    assert [c.text for c in engine.complete(doc, "", names=True)] == listed
    line = "zeta_quantity_total = 0\nlog("
    assert [c.text for c in engine.complete(line, "", names=True)] == \
        [c.text for c in engine.complete(line, "")]


def test_scoring_computes_each_distribution_once(random_model, monkeypatch):
    """Given the prompt's last logits (as generation leaves them, with the cache holding
    the prompt), scoring runs the model once, on the continuations; and a history shared
    by several continuations (the prompt alone, a common first token) is blended once.
    The scores are those of scoring from scratch."""
    torch.manual_seed(3)
    prompt = torch.randint(1, 1000, (40,)).tolist()
    conts = [[5, 6, 7], [5, 6, 8], [5, 9], []]
    end = torch.zeros(random_model.config.vocab_size, dtype=torch.bool)
    end[[11, 12, 13]] = True
    want = score_continuations(random_model, prompt, conts, random_model.new_cache(1), end)
    cache = random_model.new_cache(1)
    with torch.no_grad():
        last = random_model(torch.tensor([[*prompt, 4, 4]]), cache)[0, len(prompt) - 1]
    passes, blended = [], []
    features = random_model.features
    monkeypatch.setattr(random_model, "features",
                        lambda ids, *a, **k: passes.append(ids.shape) or features(ids, *a, **k))

    def mixer(logits, rows):
        blended.extend(tuple(r) for r in rows)
        return torch.log_softmax(logits.float(), -1)
    got = score_continuations(random_model, prompt, conts, cache, end, mixer, last)
    assert passes == [(4, 3)]                        # the continuations only
    assert sorted(blended) == sorted({(), (5,), (5, 6), (5, 6, 7), (5, 6, 8), (5, 9)})
    assert all(abs(g - w) < 1e-3 for g, w in zip(got, want, strict=True)), (got, want)
    assert cache.tokens == prompt


@contextlib.contextmanager
def counted_passes(model) -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the ids each forward pass of `model` gets meanwhile (scoring's pass,
    Transformer.features, is not one)."""
    calls: list[tuple[int, ...]] = []
    forward = model.forward
    model.forward = lambda ids, *a, **k: calls.append(tuple(ids.shape)) or forward(ids, *a, **k)
    try:
        yield calls
    finally:
        del model.forward


def _partial_name_cursors(corpus: list[str], n: int) -> list[str]:
    """Prefixes of real code that end two characters into a name used before."""
    out = []
    for text in corpus:
        for m in re.finditer(r"(?<=[ (.\[])([A-Za-z_]\w{3,})", text):
            if m.start() > 300 and text.count(m.group(1), 0, m.start()) and len(out) < n:
                out.append(text[:m.start() + 2])
                break
    return out


def test_greedy_read_from_scored_histories_is_generations(tiny, corpus):
    """walk_greedy, reading each choice from a scoring pass's distributions, writes what
    generate's greedy decoding writes (healing, stop at the name's end, the same ids), and
    where the histories run out it hands over the tokens chosen so far: generation led by
    them writes the same text, checking them in one pass, from the prompt's logits
    without computing the prompt's end again."""
    from completion.pipeline import prepare
    from completion.settings import EngineSettings
    from model.generate import GenerationConfig, generate, walk_greedy
    from model.scoring import score_histories
    from server.identifiers import name_end

    tok, model = tiny.tokenizer, tiny.model
    end = word_end_mask(tok, model.config.vocab_size)
    cfg = GenerationConfig(max_new_tokens=8)
    walked = led = 0
    for prefix in _partial_name_cursors(corpus, 12):
        p = prepare(tiny, prefix, "", EngineSettings(temperature=0))
        cache = model.new_cache(1, tiny.context)
        want = generate(model, tok, p.ids, cfg, cache=cache, heal=p.healed,
                        stop_text=name_end).candidates[0]
        g = want.token_ids
        other = tok.encode(p.healed.decode() + "zzq")
        # every history of the greedy text scored: the walk alone writes it
        scored = score_histories(model, p.ids, [other, g], cache, end)
        got, _ = walk_greedy(scored.after, tok, cfg, p.healed, 8, name_end)
        assert got is not None and (got.text, got.token_ids, got.finish_reason) == \
            (want.text, want.token_ids, want.finish_reason), prefix[-40:]
        walked += 1
        if len(g) < 3 or want.finish_reason != "stop":
            continue
        # histories up to its first token only: the walk stops after choosing the second
        first = generate(model, tok, p.ids, GenerationConfig(max_new_tokens=0), cache=cache,
                         heal=p.healed)
        scored = score_histories(model, p.ids, [g[:1]], cache, end, None, first.prompt_logits)
        got, lead = walk_greedy(scored.after, tok, cfg, p.healed, 8, name_end)
        assert got is None and lead == g[:2]
        with counted_passes(model) as calls:
            again = generate(model, tok, p.ids, cfg, cache=cache, heal=p.healed,
                             stop_text=name_end, lead=lead, prompt_logits=first.prompt_logits)
        assert again.candidates[0].token_ids == g and again.text == want.text
        assert len(calls) == again.timings["forward_passes"] < len(g) - 1   # no prompt pass
        led += 1
    assert walked == 12 and led >= 3, (walked, led)


def _forward_passes(engine, doc: str, names: bool) -> tuple[list[str], int]:
    """The answer's texts and the model's forward passes (the prompt's included, scoring
    excluded) for a request from cold caches."""
    engine._lru.clear()
    engine._cache = engine._list_cache = None
    with counted_passes(engine.loaded.model) as calls:
        texts = [c.text for c in engine.complete(doc, "", names=names)]
    return texts, len(calls)


LIST_DOCS = [
    "zeta_quantity_total = 0\nzeta_quota = 1\n"
    + "log(zeta_quantity_total, flush=True)\n" * 6 + "log(zeta_q",
    "class Node:\n    def __init__(self, value):\n        self.value = value\n"
    "        self.values = [value]\n\n    def get_value(self):\n        return self.va",
    "import os\n\nroot_folder = os.getcwd()\nroot_name = 'x'\nprint(ro",
]


def test_a_completion_list_reads_the_models_pick_from_the_names_scoring(tiny, monkeypatch):
    """A completion list after a partly typed name ranks the same names as when the
    model's own pick is written by decoding first, in fewer forward passes: where greedy
    decoding follows one of the scored names, its choices are read from their scoring."""
    from completion.settings import EngineSettings
    from server import engine as engine_module
    from server.engine import CompletionEngine

    engine = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=20))
    fast = [_forward_passes(engine, doc, True) for doc in LIST_DOCS]
    monkeypatch.setattr(engine_module, "walk_greedy", lambda *a, **k: (None, []))
    slow = [_forward_passes(engine, doc, True) for doc in LIST_DOCS]
    assert [texts for texts, _ in fast] == [texts for texts, _ in slow]
    assert all(texts for texts, _ in fast)
    assert all(f <= s for (_, f), (_, s) in zip(fast, slow, strict=True)), (fast, slow)
    assert sum(f for _, f in fast) < sum(s for _, s in slow), (fast, slow)
    # The first document repeats its line, so the memory's blend makes greedy decoding
    # follow the document's name: the pick costs no pass beyond the prompt's.
    assert fast[0][1] == 1, fast


def test_lists_have_a_shorter_prompt_in_a_cache_of_their_own(tiny):
    """A completion list's prompt is at most LIST_CONTEXT_TOKENS (and the FIM sentinels)
    and lives in its own KV cache: ghost text and a list at every keystroke, as VS Code
    asks, each reuse their own prompt from the keystroke before."""
    from completion.pipeline import prepare
    from completion.settings import EngineSettings
    from server.engine import LIST_CONTEXT_TOKENS, CompletionEngine

    body = "".join(f"value_{i} = compute_value({i}, scale=2)\n" for i in range(120))
    engine = CompletionEngine(tiny, EngineSettings(temperature=0, max_tokens=8))
    inline = prepare(tiny, body + "result = compute_va", "", engine.settings)
    assert len(inline.ids) > LIST_CONTEXT_TOKENS + 100
    engine.complete(body + "result = compute_va", "")
    assert engine.complete(body + "result = compute_va", "", names=True)
    listed = engine._list_cache.tokens
    assert len(listed) <= LIST_CONTEXT_TOKENS + 8 + 8       # sentinels, the name's tokens
    assert engine._cache.tokens[:len(inline.ids)] == inline.ids
    before = engine.stats.reused_tokens
    engine._last = None                      # not the typed-ahead rest of the suggestion
    engine.complete(body + "result = compute_val", "")
    assert engine.stats.reused_tokens - before > len(inline.ids) - 20
    before = engine.stats.reused_tokens
    engine.complete(body + "result = compute_val", "", names=True)
    assert engine.stats.reused_tokens - before > LIST_CONTEXT_TOKENS - 20
