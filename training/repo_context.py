"""Training examples with repository context, laid out exactly as the server's prompts.

A retrieval example takes one file of a repository, a cursor in it, and a middle (the
rest of the cursor's line, sometimes a few more lines, as editors ask for); the windows of
the repository's *other* files most similar to the lines above the cursor
(completion/retrieval.py, the server's retriever) go first under their file headers, then
the file's own header, then the FIM prompt cut to the server's budgets
(completion/prompt.py), then the middle and `<|endoftext|>`. So the model learns to copy
names and call patterns from context, where it is and in the form it will be served.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable

from completion.prompt import (
    assemble,
    context_ids,
    cut_prefix,
    cut_suffix,
    prompt_budget,
    split_budget,
)
from completion.retrieval import Window, WindowIndex, query_words, words_of
from completion.settings import EngineSettings
from model.tokenizer import PSM, SPM, Tokenizer
from training.fim import pick_middle

SERVER = EngineSettings()      # the budgets the server prompts with by default


class RepoIndexes:
    """The window index of each repository, built on first use from its decoded files;
    the few most recent are kept (the loader reads a repository's files together)."""

    def __init__(self, keep: int = 2):
        self._cache: OrderedDict[str, WindowIndex] = OrderedDict()
        self.keep = keep

    def get(self, repo: str, files: Callable[[], Iterable[tuple[str, str]]]) -> WindowIndex:
        """The index of `repo`, built from `files()` ((path, text) pairs) if not kept."""
        if repo in self._cache:
            self._cache.move_to_end(repo)
            return self._cache[repo]
        index = WindowIndex()
        for path, text in files():
            index.set_file(path, text)
        self._cache[repo] = index
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return index


def copyable(middle: str, hits: list[tuple[float, Window]]) -> bool:
    """Whether the retrieved windows hold the middle's first line, or most of its names."""
    line = middle.split("\n", 1)[0].strip()
    texts = [w.text for _, w in hits[:2]]
    if len(line) >= 4 and any(line in t for t in texts):
        return True
    names = words_of(line)
    known = frozenset().union(*(w.words for _, w in hits[:2])) if hits else frozenset()
    return len(names) >= 2 and len(names & known) >= 0.75 * len(names)


def choose_span(text: str, path: str, index: WindowIndex, rng: random.Random, tries: int = 1
                ) -> tuple[int, int, list[tuple[float, Window]]] | None:
    """The middle's span and the windows retrieved for it: of up to `tries` cursors, the
    first whose middle is `copyable` from its windows, else the last."""
    chosen = None
    for _ in range(max(1, tries)):
        span = pick_middle(text, rng)
        if span is None:
            return None
        a, b = span
        chosen = (a, b, index.search(query_words(text[:a]), exclude=path))
        if copyable(text[a:b], chosen[2]):
            break
    return chosen


def retrieval_example(tok: Tokenizer, text: str, path: str, index: WindowIndex,
                      rng: random.Random, seq_len: int, context_tokens: int,
                      spm_rate: float = 0.5, tries: int = 1) -> list[int]:
    """One example (at most seq_len + 1 tokens) as described above; [] if the file has no
    line to complete. Without a similar window it is a plain FIM example, as the server
    sends when it finds no context. With `tries` > 1, up to that many cursors are drawn
    and the first whose middle the context can supply (`copyable`) is kept: most cursors
    have nothing to copy, so without it the model rarely learns that context pays."""
    chosen = choose_span(text, path, index, rng, tries)
    if chosen is None:
        return []
    a, b, hits = chosen
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    chunks = [(w.path, w.text) for _, w in hits]
    context = context_ids(tok, chunks, path, context_tokens)
    middle_ids = tok.encode(middle)
    closed = len(middle_ids) <= SERVER.max_tokens
    middle_ids = [*middle_ids[:SERVER.max_tokens], *([tok.eot_id] if closed else [])]
    budget = prompt_budget(seq_len - len(context), SERVER.context_tokens, SERVER.max_tokens)
    prefix_budget, suffix_budget = split_budget(budget, suffix)
    order = SPM if rng.random() < spm_rate else PSM
    ids = assemble(tok, order, context, cut_prefix(tok, prefix, prefix_budget),
                   cut_suffix(tok, suffix, suffix_budget) if suffix_budget else [], middle_ids)
    return ids[:seq_len + 1]
