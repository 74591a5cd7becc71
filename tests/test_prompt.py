"""Prompt building: token budgets and cuts at line boundaries."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from completion.prompt import cut_prefix, cut_suffix
from completion.settings import EngineSettings
from completion.words import inside_word
from model.checkpoint import LoadedModel, ModelMeta
from model.tokenizer import PSM
from server import engine as engine_module
from server.engine import CompletionEngine

LINES = [f"value_{i} = compute_{i}(argument_{i})" for i in range(200)]
TEXT = "\n".join(LINES) + "\n"


def test_cut_prefix_keeps_the_end_within_budget_from_a_line_start(tokenizer):
    ids = cut_prefix(tokenizer, TEXT, 100)
    assert len(ids) <= 100
    text = tokenizer.decode(ids)
    assert TEXT.endswith(text)
    assert text.startswith("value_")            # a whole line, not the middle of one
    assert len(text) > len(LINES[-1])           # and more than the last line fits
    assert cut_prefix(tokenizer, "x = 1\n", 100) == tokenizer.encode("x = 1\n")


def test_cut_suffix_keeps_the_start_within_budget_to_a_line_end(tokenizer):
    ids = cut_suffix(tokenizer, TEXT, 100)
    assert len(ids) <= 100
    text = tokenizer.decode(ids)
    assert TEXT.startswith(text) and text.endswith("\n")


def test_huge_text_is_cut_without_tokenizing_all_of_it(tokenizer):
    huge = TEXT * 2000                           # ~7 MB
    ids = cut_prefix(tokenizer, huge, 64)
    assert 0 < len(ids) <= 64 and huge.endswith(tokenizer.decode(ids))


def test_a_long_prefix_is_first_tokenized_in_a_smaller_window(tokenizer, monkeypatch):
    """The first try tokenizes about CHARS_PER_TOKEN_GUESS characters a token, not the
    worst case's CHARS_PER_TOKEN_MAX, and cuts the same tokens as the worst case's window;
    a text of long tokens falls back to the worst case's window."""
    import completion.prompt as prompt

    seen: list[int] = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: seen.append(len(text)) or encode(text))
    long = "".join(f"{name} = compute({name})  # {i}\n"
                   for i, name in enumerate(w * (1 + i % 7) for i, w in
                                            enumerate(["alpha", "b", "gamma_x"] * 400)))
    for budget in (64, 300):
        seen.clear()
        fast = cut_prefix(tokenizer, long, budget)
        assert max(seen) <= budget * prompt.CHARS_PER_TOKEN_GUESS
        monkeypatch.setattr(prompt, "CHARS_PER_TOKEN_GUESS", prompt.CHARS_PER_TOKEN_MAX)
        seen.clear()
        assert cut_prefix(tokenizer, long, budget) == fast
        assert max(seen) > budget * 6
        monkeypatch.undo()
        monkeypatch.setattr(tokenizer, "encode",
                            lambda text: seen.append(len(text)) or encode(text))
    # Long tokens (deep indentation is one token here): the first window holds too few
    # of them, and the worst case's window is tokenized.
    deep = (" " * 64 + "pass\n") * 400
    seen.clear()
    ids = cut_prefix(tokenizer, deep, 100)
    assert deep.endswith(tokenizer.decode(ids)) and 0 < len(ids) <= 100
    assert max(seen) > 100 * prompt.CHARS_PER_TOKEN_GUESS


def engine(tokenizer, random_model, **settings) -> CompletionEngine:
    loaded = LoadedModel(model=random_model, tokenizer=tokenizer, config=random_model.config,
                         meta=ModelMeta(fim_order=PSM, context_size=1024), path=Path("mem"),
                         device=torch.device("cpu"), dtype=torch.float32)
    return CompletionEngine(loaded, EngineSettings(**settings))


def test_build_prompt_budgets_prefix_and_suffix(tokenizer, random_model):
    eng = engine(tokenizer, random_model, context_tokens=256, max_tokens=16)
    prefix, suffix = TEXT, TEXT.replace("value_", "other_")
    ids, _ = eng.build_prompt(prefix, suffix)
    assert len(ids) <= 256 + 4                    # plus the FIM control tokens
    text = tokenizer.decode(ids)
    assert "value_199" in text and "other_0" in text
    assert 0 < text.count("other_") < text.count("value_")    # the suffix got a quarter


def test_inside_word():
    assert inside_word("self.va", "lue")
    assert not inside_word("self.va", "")
    assert not inside_word("self.va", ")")
    assert not inside_word("x = ", "value")


def test_warmup_generates_without_counting_as_a_request(tokenizer, random_model):
    eng = engine(tokenizer, random_model)
    assert eng.warmup() > 0
    assert eng.stats.requests == 0 and not eng.stats.latencies_ms


def test_words_are_python_identifiers_in_any_script():
    from server import identifiers

    assert inside_word("grö", "ße = 1")
    assert identifiers.partial_word("x = größ") == "größ"
    assert identifiers.partial_word("x = 2fo") == "fo"           # a name never starts with a digit
    counts = identifiers.name_counts("größe = 1\n名前 = größe\nprint(größ", "", "größ")
    assert counts["größe"] == 2 and counts["名前"] == 1
    assert identifiers.greedy_name("grö", "ße + 1") == "größe"


def test_name_contexts_count_whole_words_by_role_and_receiver():
    """One scan of the text before the cursor gives every candidate its uses, distance,
    role (after a dot or not) and uses after the same receiver."""
    from server import identifiers

    prefix = "self.total = 0\nx.total += 1\ntotal2 = 2total\nprint(total)\nself.to"
    names = ["total", "total2", "tomato"]
    counts = identifiers.name_counts(prefix, "", "to")
    total, total2, tomato = identifiers.name_contexts(prefix, "to", names, counts)
    before = prefix[:-2]
    assert total.uses == counts["total"]
    assert total.distance == len(before) - before.rindex("(total)") - 1
    # three uses (`2total` and `total2` are none), two of them after a dot
    assert total.same_role == (2 + 0.5) / (3 + 1)
    assert total.receiver_uses == 1                      # one after `self.`
    assert total2.uses == 1 and total2.receiver_uses == 0
    assert total2.same_role == (0 + 0.5) / (1 + 1)
    assert tomato.distance == identifiers.UNSEEN_DISTANCE and tomato.uses == 0
    # after a dot with no name before it, no use counts as the same receiver
    plain = identifiers.name_contexts("from .x import y\nfrom .", "", ["x"], counts)[0]
    assert plain.receiver_uses == 0 and plain.same_role == (1 + 0.5) / (1 + 1)


def test_engine_state_stays_bounded_and_consistent_under_concurrent_requests(
        tokenizer, random_model):
    """Requests run in worker threads and the status request reads the stats meanwhile:
    the latency record is bounded, and no count is lost."""
    eng = engine(tokenizer, random_model, max_tokens=2, temperature=0.0)
    prefix = "def f(x):\n    return x"
    eng.complete(prefix, "")                      # generated once, then served from the LRU
    per_thread = engine_module.LATENCY_WINDOW // 2 + 50
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(per_thread):
                eng.complete(prefix, "")
                if i % 50 == 0:
                    eng.describe()
        except BaseException as e:               # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = eng.describe()
    assert info["requests"] == 1 + 4 * per_thread
    assert eng.stats.cache_hits == 4 * per_thread
    assert len(eng.stats.latencies_ms) == engine_module.LATENCY_WINDOW


def test_training_does_not_import_the_server():
    import subprocess
    import sys
    code = ("import sys, training.evaluate, training.train, training.prepare, "
            "benchmarks.fim_rate\n"
            "bad = sorted(m for m in sys.modules if m == 'server' or m.startswith('server.'))\n"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr


def test_the_engine_and_the_evaluation_send_the_same_prompt_and_filter_alike(
        tokenizer, random_model):
    """One path: for the same cursor and settings the engine runs the pipeline's prompt
    (its KV cache holds it afterwards), and its answer (re-ranking off) is what
    training.evaluate scores; the project memory copies the repeated lines, so the
    answers compared are not all empty."""
    from completion import pipeline

    eng = engine(tokenizer, random_model, temperature=0.0, rerank=False, max_tokens=12)
    cases = [(TEXT[:500], TEXT[500:]), ("def f(x):\n    ", "\n\nprint(f(2))\n"),
             ("x = compute_1(", ")\n")]
    answered = 0
    for prefix, suffix in cases:
        p = pipeline.prepare(eng.loaded, prefix, suffix, eng.settings)
        got = [c.text for c in eng.complete(prefix, suffix)]
        assert eng._cache.tokens[:len(p.ids)] == p.ids
        assert got == pipeline.complete(eng.loaded, prefix, suffix, eng.settings)
        answered += bool(got)
        # On a blank line (the cursor's line holds only blanks) a line must be written.
        assert p.config.write_line == (not prefix.rsplit("\n", 1)[-1].strip()
                                       and not suffix.split("\n", 1)[0].strip())
    assert answered
    assert pipeline.prepare(eng.loaded, "import os\n", "\n", eng.settings).config.write_line
    assert not pipeline.prepare(eng.loaded, "x = f(", ")\n", eng.settings).config.write_line


def test_multiline_modes():
    from completion.prompt import wants_multiline
    body, top = "def f():\n    ", "x = 1\n"
    assert wants_multiline(body, "") and not wants_multiline(top, "")
    assert not wants_multiline(body, "", "never")
    assert wants_multiline(top, "", "always") and wants_multiline("x = f(", "", "always")
    assert not wants_multiline("x = f(", ")\n", "always")    # text right of the cursor


def test_beams_for_the_rest_of_a_line_only_when_greedy(tokenizer, random_model):
    """Beam search where it was measured to help (the rest of a line, one greedy answer),
    plain decoding on a blank line, in a block body and when sampling."""
    from completion import pipeline

    greedy = engine(tokenizer, random_model, temperature=0.0, max_tokens=12)
    sampled = engine(tokenizer, random_model, temperature=0.2, max_tokens=12)
    several = engine(tokenizer, random_model, temperature=0.0, candidates=3, max_tokens=12)

    def beams(eng, prefix, suffix):
        return pipeline.prepare(eng.loaded, prefix, suffix, eng.settings).config.beams

    assert beams(greedy, "x = compute(", ")\n") == pipeline.LINE_BEAMS > 1
    assert beams(greedy, "import o", "\n") == pipeline.LINE_BEAMS
    assert beams(greedy, "import os\n", "\nx = 1\n") == 1           # blank line
    assert beams(greedy, "def f(x):\n    ", "\n") == 1               # block body
    assert beams(sampled, "x = compute(", ")\n") == 1
    assert beams(several, "x = compute(", ")\n") == 1
    # What the engine shows there is the beam's line through the shared filters.
    p = pipeline.prepare(greedy.loaded, "x = compute(", ")\n", greedy.settings)
    assert [c.text for c in greedy.complete("x = compute(", ")\n")] == \
        pipeline.complete(greedy.loaded, "x = compute(", ")\n", greedy.settings)
    assert p.config.stop == ("\n",)
