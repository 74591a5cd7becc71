"""Project memory (completion/cache_lm.py): exact counts, updates equal to a rebuild, a
blend that stays a distribution, and generation that copies what the user's code repeats
while every rule of decoding still holds."""

from __future__ import annotations

import math
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


LINE = "zq_frobnicate(widget_seventeen, qq=3)"
REPEATED = "".join(f"def handler_{i}(event):\n    {LINE}\n\n" for i in range(5))


def test_document_counts_hold_both_sides_of_the_cursor_and_nothing_between(tokenizer,
                                                                           monkeypatch):
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
    # the two sides, tokenized in one parallel call, count what each side's own ids do
    above, below = REPEATED * 3 + "x = 1\n", "y = 2\n" + REPEATED * 2
    batches = []
    batch = tokenizer.encode_batch
    monkeypatch.setattr(tokenizer, "encode_batch",
                        lambda texts: batches.append(texts) or batch(texts))
    doc.counts(tokenizer, above + "z = ", "\n" + below)
    assert batches == [[above, "\n" + below]]
    want = Counts([tokenizer.encode(above), tokenizer.encode("\n" + below)])
    for k, table in want.tables.items():
        got = doc._blocks.tables[k]
        assert (got.keys == table.keys).all() and (got.nxt == table.nxt).all() \
            and (got.cnt == table.cnt).all() and len(table.keys)




def request(lm, prefix: str, suffix: str = "\n", **settings):
    """A request as the pipeline prepares it, with the document as its own memory."""
    s = EngineSettings(**settings)
    p = prepare(lm, prefix, suffix, s)
    return p, memory_mixer(lm, p, DocumentCounts(), None, s)


def test_greedy_copies_what_the_document_repeats_and_bans_still_hold(tiny):
    """A line repeated five times after the same context: the blend gives its tokens most
    of the probability (confidence of a long match seen five times), so greedy decoding
    writes it, whatever the model thinks; without the memory the tiny model does not."""
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
    assert ("zq_fro" + r.text).startswith("zq_frob") and mixer.stats.matched


def test_an_empty_memory_changes_nothing(tiny):
    tok, model = tiny.tokenizer, tiny.model
    for text in ("class Box:\n    def __init__(self, value):\n        self.", "import "):
        ids = tok.encode(text)
        cfg = GenerationConfig(max_new_tokens=12)
        plain = generate(model, tok, ids, cfg).candidates[0]
        mixed = generate(model, tok, ids, cfg, mixer=Mixer([Lookup([(Counts([[5, 6, 7]]), 1)])],
                                                           ids)).candidates[0]
        assert mixed.token_ids == plain.token_ids


def test_drafts_give_greedy_output_exactly_in_fewer_passes(tiny, corpus):
    """Greedy decoding with the memory's drafts verified in one pass writes the same
    tokens as without drafts, over many prompts of real code with the whole file as the
    memory; where the code repeats, several tokens come from one forward pass."""
    tok, model = tiny.tokenizer, tiny.model
    rng = random.Random(5)
    texts = [*[t for t in corpus if 400 < len(t) < 20_000][:14], REPEATED * 2]
    passes = tokens = compared = 0
    for text in texts:
        ids = tok.encode(text)
        for _ in range(3):
            cut = rng.randrange(20, min(len(ids) - 1, 900))
            memory = Lookup([(Counts([ids[:cut], ids[cut + 30:]]), 1)])
            outs = []
            for drafts in (False, True):
                cfg = GenerationConfig(max_new_tokens=24, drafts=drafts)
                r = generate(model, tok, ids[:cut], cfg, mixer=Mixer([memory], ids[:cut]))
                outs.append(r)
            assert outs[1].candidates[0].token_ids == outs[0].candidates[0].token_ids, text[:60]
            assert outs[1].candidates[0].text == outs[0].candidates[0].text
            passes += outs[1].timings["forward_passes"]
            tokens += len(outs[1].candidates[0].token_ids)
            compared += 1
    assert compared == 45
    assert passes < 0.8 * tokens, (passes, tokens)


def test_drafts_end_at_stops_and_keep_the_cache_consistent(tiny):
    """A draft that runs past the end of the line is cut where greedy stops; the KV cache
    then holds exactly its token ids, so the next request reuses it."""
    tok, model = tiny.tokenizer, tiny.model
    ids = tok.encode(REPEATED + "def handler_9(event):\n    zq_frobnicate(")
    memory = Lookup([(Counts([tok.encode(REPEATED)]), 1)])
    cache = model.new_cache(1)
    r = generate(model, tok, ids, GenerationConfig(max_new_tokens=40, stop=("\n",)),
                 cache=cache, mixer=Mixer([memory], ids))
    assert r.text == "widget_seventeen, qq=3)"
    assert r.timings["forward_passes"] < len(r.candidates[0].token_ids) / 2
    gen, fed = r.candidates[0].token_ids, cache.tokens[len(ids):]
    assert cache.tokens[:len(ids)] == ids and fed[:len(gen) - 1] == gen[:-1]
    assert len(cache.tokens) == cache.length
    again = model.new_cache(1)
    model(torch.tensor([cache.tokens]), again)
    probe = torch.tensor([[ids[0]]])
    n = cache.length
    a = model(probe, cache)[0, -1]
    b = model(probe, again)[0, -1]
    assert cache.length == again.length == n + 1
    assert torch.allclose(a, b, atol=1e-4)


def test_the_workspace_memory_never_holds_the_line_being_completed(tmp_path, tokenizer):
    """The document being completed is left out of the workspace level whatever its disk
    text holds (here: the very line being completed); its buffer, without the line, is
    what the request counts. File events update the counts to exactly a rebuild's, off
    the event loop, and a path that leaves the workspace through `..` or a symbolic link
    is not indexed."""
    from server.workspace import Workspace

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def alpha():\n    return zeta_target_line(1)\n")
    b.write_text("def beta():\n    return common_call(2)\n")
    (tmp_path.parent / "elsewhere.py").write_text("def gamma():\n    return outside_name(3)\n")
    ws = Workspace()
    ws.tokenizer = tokenizer
    ws.set_folders((str(tmp_path),))
    assert ws.done.wait(10)
    ws.set_document(str(a), "def alpha():\n    return \n")
    counts = ws.memory_counts(str(a))

    def seen(lookup: Lookup, text: str) -> bool:
        ids = tokenizer.encode(text)
        assert len(ids) > 4
        return any(len(lookup.find(4, context_hash(ids[:j], 4))[0]) for j in range(4, len(ids)))

    assert seen(counts, "    return common_call(2)")
    assert not seen(counts, "zeta_target_line(1)\n")
    b.write_text("def beta():\n    return other_call(4)\n")
    ws.queue_file_event(str(b))
    ws.queue_file_event(str(tmp_path / "sub" / ".." / ".." / "elsewhere.py"))
    (tmp_path / "link.py").symlink_to(tmp_path.parent / "elsewhere.py")   # leads outside
    ws.queue_file_event(str(tmp_path / "link.py"))
    assert ws.wait_for_events(10)
    assert ws.memory.names == 2              # a (its disk text) and b, not elsewhere or link
    assert_same_counts(ws.memory.counter(), [tokenizer.encode(a.read_text()),
                                             tokenizer.encode(b.read_text())])
    counts = ws.memory_counts(str(a))
    assert seen(counts, "    return other_call(4)") and not seen(counts, "common_call(2)\n")


def test_the_walk_waits_while_a_request_is_served(tmp_path, tokenizer):
    """Requests come first: while one is in flight the workspace walk reads and counts
    nothing (on a 2-core machine a walk of 5,000 files made requests take 3-7 s: its
    thread took the interpreter lock between every tensor operation of theirs), a
    request's own calls into the workspace never wait for themselves, and buffers opened
    during the walk are counted at its end, off the request path."""
    import time

    from server.workspace import Workspace

    for i in range(300):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(value):\n    return value + {i}\n")
    ws = Workspace()
    ws.tokenizer = tokenizer
    target, other = str(tmp_path / "m0.py"), str(tmp_path / "notes.py")
    with ws.serving():
        ws.set_folders((str(tmp_path),))
        ws.set_document(other, "def helper_for_notes():\n    return 42\n")
        started = time.monotonic()
        ws.memory_counts(target)           # the request's own call: it does not wait
        assert time.monotonic() - started < 5
        time.sleep(0.5)
        assert ws.memory.names == 0 and not ws.done.is_set()    # the walk waited
    assert ws.done.wait(60)
    assert ws.memory.names == 301          # every file, and the buffer opened meanwhile
    assert other in ws.memory and target in ws.memory


def test_a_request_leaves_other_buffers_to_the_workspaces_thread(tmp_path, tokenizer):
    """The buffer of a document the user left is counted after the request that follows,
    on the workspace's thread, not by the request (it cost a cold request ~20 ms); the
    document being completed is never counted from its buffer."""
    import time

    from server.workspace import Workspace

    ws = Workspace()
    ws.tokenizer = tokenizer
    ws.set_folders((str(tmp_path),))
    assert ws.done.wait(10)
    left, target = str(tmp_path / "left.py"), str(tmp_path / "target.py")
    ws.set_document(left, "def helper_for_notes():\n    return 42\n")
    ws.set_document(target, "def typed_here():\n    return 1\n")
    with ws.serving():
        ws.memory_counts(target)
        time.sleep(0.3)
        assert left not in ws.memory            # not by the request, nor during it
    assert ws.wait_for_events(10)
    assert left in ws.memory and target not in ws.memory
    assert_same_counts(ws.memory.counter(), [tokenizer.encode(
        "def helper_for_notes():\n    return 42\n")])


def test_memory_bits_per_byte_counts_the_file_and_its_repository(tiny):
    """With a model that knows nothing (uniform logits), every bit saved is the memory's:
    a file that repeats itself costs less with its own earlier text counted, and less
    again when the rest of its repository holds the same code; a repository of nothing
    alike saves nothing beyond the file's own repeats."""
    import copy

    from training.evaluate import memory_bits_per_byte

    lm = copy.copy(tiny)
    vocab = tiny.config.vocab_size

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, vocab)

    lm.model = Uniform()
    lm.config = tiny.config
    body = "".join(f"def handler_{i}(event):\n    {LINE}\n\n" for i in range(3))
    repos = {"r": {"a.py": body, "b.py": body.replace("handler", "callback")},
             "s": {"c.py": body, "d.py": "x = 1\n" * 3}}
    r = memory_bits_per_byte(lm, {"r": repos["r"]}, 1, random.Random(0))
    assert r["workspace"] < r["document"] < r["model"]
    # the model's own bits: log2(vocab) for each token of the one file scored
    assert any(r["model"] * len(text.encode()) == pytest.approx(r["tokens"] * math.log2(vocab))
               for text in repos["r"].values())
    s = memory_bits_per_byte(lm, {"s": repos["s"]}, 2, random.Random(0))
    assert s["document"] < s["model"] and s["drop_workspace"] >= s["drop_document"]


def test_odd_workspace_files_stay_within_the_memory_cap(tmp_path, tokenizer):
    """A file of one line repeated 100,000 times, a minified one-line file, a binary and a
    non-UTF-8 file: the memory counts what fits under its cap, says what it left out, and
    answers lookups over what it holds."""
    from server.workspace import Limits, Workspace

    (tmp_path / "repeat.py").write_text("x = 1\n" * 100_000)
    (tmp_path / "mini.py").write_text(";".join(f"v{i}={i}" for i in range(5000)))
    (tmp_path / "small.py").write_text("def small():\n    return 1\n")
    (tmp_path / "blob.py").write_bytes(b"\0\1\2" * 100)
    (tmp_path / "latin.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    ws = Workspace(Limits(memory_tokens=20_000))
    ws.tokenizer = tokenizer
    ws.set_folders((str(tmp_path),))
    assert ws.done.wait(30)
    assert 0 < ws.memory.tokens <= 20_000
    info = ws.describe()
    assert info["workspace_skipped"]["files_past_the_memory_limit"] >= 1
    assert info["workspace_skipped"]["binary_or_non_utf8_files"] == 2
    assert info["memory_files"] == ws.memory.names >= 1 and info["memory_mb"] >= 0
    counts = ws.memory_counts(str(tmp_path / "other.py"))
    assert counts is not None
    ids = tokenizer.encode("def small():\n    return")
    assert len(counts.find(4, context_hash(ids, 4))[0]) or "small.py" not in str(
        ws.memory._seqs)


def test_updates_without_refresh_are_counted_at_settle_and_only_then():
    """The walk counts files in batches: a `set` with refresh False changes nothing a
    lookup sees until `settle`, which then equals a rebuild; a second settle recounts
    nothing (the snapshot stays the same object)."""
    memory = Memory()
    memory.set("a", [1, 2, 3, 4])
    memory.set("b", [1, 2, 3, 5], refresh=False)
    memory.remove("a", refresh=False)
    assert_same_counts(memory.counter(), [[1, 2, 3, 4]])
    memory.settle()
    assert_same_counts(memory.counter(), [[1, 2, 3, 5]])
    snapshot = memory._snapshot
    memory.settle()
    assert memory._snapshot is snapshot


def test_aggregate_orders_and_counts_as_a_lexicographic_sort(monkeypatch):
    """aggregate's two stable sorts (the next token by radix when it fits 16 bits) give
    np.lexsort's table, without calling np.lexsort: distinct (hash, next) pairs by hash
    then next, with their counts; also for a vocabulary past 2^15."""
    import numpy as np

    from completion.cache_lm import aggregate

    rng = np.random.default_rng(7)
    for vocab in (1000, 152_000):
        keys = rng.integers(0, 50, 3000).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        nxt = rng.integers(0, vocab, 3000).astype(np.int64)
        nxt[::5] = nxt[0]                                   # repeated pairs to count
        order = np.lexsort((nxt, keys))
        k, t = keys[order], nxt[order]
        pairs = sorted(set(zip(k.tolist(), t.tolist(), strict=True)))
        want = [(a, b, int(((k == a) & (t == b)).sum())) for a, b in pairs]
        with monkeypatch.context() as m:
            m.setattr(np, "lexsort", lambda *a, **k: pytest.fail("np.lexsort was called"))
            table = aggregate(keys, nxt)
        got = list(zip(table.keys.tolist(), table.nxt.tolist(), table.cnt.tolist(),
                       strict=True))
        assert got == want
