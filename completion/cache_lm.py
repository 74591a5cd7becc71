"""Project memory: the user's own code as a cache language model, mixed into every token.

A small network does not learn to copy from far-away code, but code repeats itself: the
names, calls and idioms of a project recur in the same file and across its files (Tu et
al., "On the localness of software"; Hellendoorn & Devanbu, nested cache n-gram models).
So next to the network we keep exact counts of what followed each recent run of tokens in
the user's code, and blend them into the network's next-token distribution:

    p(t) = model; then for each level (workspace, then document: the most local has the
    final say), at the longest context length k it matched:
        lam = weight * (1 - 2^(-k/2)) * n / (n + 1)
        p(t) = (1 - lam) * p(t) + lam * c(t) / n

c(t) counts how often the last k tokens were followed by t, n how often they occurred. The
weight is the cache's confidence (SLP-Core's idea): a longer match and more occurrences
trust the counts more, and every step keeps a distribution over the whole vocabulary (it
sums to 1). benchmarks/memory_mixing.py compares it with a fixed weight, entropy gating
and a Dirichlet prior over every matched length (docs/memory.md has the numbers).

Counts are exact (no count is shared by two n-grams, so nothing is lost when normalising):
each context length has a table of (context hash, next token, count) sorted by hash; a
64-bit hash of the context alone picks the rows, and the next tokens are stored as they
are. Tables are built with numpy from token-id arrays: 16 bytes per entry, at most one
entry per indexed token per context length.

- `Counts`: the tables for a set of token sequences (immutable).
- `Memory`: a set of named sequences (the workspace's files, the open buffers) kept
  current by `set`/`remove`: lookups read base + added - removed, so the result after
  any update equals a rebuild (tests/test_cache_lm.py), and the base is rebuilt once the
  changes grow. Bounded by a token cap; sequences past it are not counted.
- `Mixer`: the per-token blend used by generation (model/generate.py's `mixer` hook).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from completion.prompt import clean_text
from model.tokenizer import Tokenizer

ORDERS = (2, 3, 4, 6, 8, 12)   # context lengths looked up (tokens before the next one)
WEIGHT = 0.7                   # the most weight the counts of one level can get (the
#                                best bits/byte of benchmarks.memory_mixing: 0.6-0.7)
HASH_MUL = 0x9E3779B97F4A7C15  # odd 64-bit multiplier (golden ratio) of the rolling hash
MASK64 = (1 << 64) - 1
SEP = -1                       # between sequences: no n-gram spans two of them
SMALL_MERGE = 64               # continuations merged in a dict rather than with numpy
DRAFT_MIN_ORDER = 4            # a draft follows contexts of at least this many tokens


def _powers(n: int) -> list[int]:
    out, p = [], 1
    for _ in range(n):
        out.append(p)
        p = (p * HASH_MUL) & MASK64
    return out


POWERS = _powers(max(ORDERS) + 1)


def context_hash(ids: Sequence[int], k: int) -> int:
    """The hash of the last `k` of `ids` (the most recent token weighs 1, the one before
    HASH_MUL, ...): the same value `Counts` computes for each position of a sequence."""
    h = 0
    for j in range(k):
        h = (h + (ids[-1 - j] + 1) * POWERS[j]) & MASK64
    return h


@dataclass
class Table:
    """One context length's counts, sorted by context hash."""

    keys: np.ndarray    # uint64
    nxt: np.ndarray     # int32
    cnt: np.ndarray     # int32

    def find(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        key = np.uint64(h)
        lo = int(np.searchsorted(self.keys, key, "left"))
        hi = int(np.searchsorted(self.keys, key, "right"))
        return self.nxt[lo:hi], self.cnt[lo:hi]


EMPTY_TABLE = Table(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int32))


class Counts:
    """Exact n-gram counts of a set of token sequences, one table per context length."""

    def __init__(self, seqs: Iterable[Sequence[int] | np.ndarray],
                 orders: tuple[int, ...] = ORDERS):
        self.orders = orders
        parts = [np.asarray(s, dtype=np.int64) for s in seqs]
        parts = [p for p in parts if len(p)]
        self.tokens = sum(len(p) for p in parts)
        self.tables: dict[int, Table] = {}
        if not parts:
            self.tables = {k: EMPTY_TABLE for k in orders}
            return
        seq = np.concatenate([x for p in parts for x in (np.array([SEP]), p)])
        n = len(seq)
        seps = np.concatenate([[0], np.cumsum(seq == SEP)])   # seps[i]: SEPs before i
        shifted = (seq + 1).astype(np.uint64)                # SEP hashes as 0
        h = np.zeros(n, dtype=np.uint64)
        nxt = np.empty(n, dtype=np.int64)
        nxt[:-1], nxt[-1] = seq[1:], SEP
        for k in range(1, max(orders) + 1):
            # h[i]: the hash of seq[i-k+1 .. i], as context_hash computes it
            if k <= n:
                h[k - 1:] += shifted[:n - k + 1] * np.uint64(POWERS[k - 1])
            if k not in orders:
                continue
            i = np.arange(k - 1, n - 1)
            # no SEP among the k context tokens and the next one: positions i-k+1 .. i+1
            ok = seps[i + 2] - seps[i - k + 1] == 0
            self.tables[k] = aggregate(h[i[ok]], nxt[i[ok]])

    def find(self, k: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tables[k].find(h)

    @property
    def nbytes(self) -> int:
        return sum(t.keys.nbytes + t.nxt.nbytes + t.cnt.nbytes for t in self.tables.values())


def aggregate(keys: np.ndarray, nxt: np.ndarray) -> Table:
    """(hash, next) pairs -> a table of distinct pairs with their counts, sorted by hash."""
    if not len(keys):
        return EMPTY_TABLE
    # by hash, then next token: np.lexsort((nxt, keys))'s order in half its time (numpy
    # sorts 16-bit integers by radix), which counting a cold document or a workspace's
    # files spends most of its time in
    small = nxt.astype(np.int16) if int(nxt.max()) < 2 ** 15 and int(nxt.min()) >= 0 else nxt
    by_next = np.argsort(small, kind="stable")
    order = by_next[np.argsort(keys[by_next], kind="stable")]
    keys, nxt = keys[order], nxt[order]
    starts = np.flatnonzero(np.concatenate(
        [[True], (keys[1:] != keys[:-1]) | (nxt[1:] != nxt[:-1])]))
    counts = np.diff(np.append(starts, len(keys)))
    return Table(keys[starts], nxt[starts].astype(np.int32), counts.astype(np.int32))


class Memory:
    """Named token sequences (files, buffers) and their counts, updated in place.

    `set`, `remove` and `rebuild` may run on any thread; `find` reads one consistent
    snapshot and never waits for an update's counting. At most `cap_tokens` tokens are
    counted: a sequence that would pass the cap is left out (and counted in `skipped`)."""

    REBUILD_SHARE = 0.25   # the base is rebuilt once changes reach this share of it
    REBUILD_MIN = 20_000   # ... and at least this many tokens

    def __init__(self, cap_tokens: int = 2_000_000, orders: tuple[int, ...] = ORDERS):
        self.cap_tokens = cap_tokens
        self.orders = orders
        self._seqs: dict[str, np.ndarray] = {}
        self._base_seqs: dict[str, np.ndarray] = {}   # what the base counted
        self._lock = threading.Lock()                 # _seqs, _base_seqs and swaps
        self.skipped = 0
        self._tokens = 0
        empty = Counts([], orders)
        self._snapshot = Snapshot(empty, empty, empty, {}, 0)
        self._excluded: tuple[np.ndarray, Counts] | None = None
        self._dirty = False                           # changes not yet counted (`settle`)

    # -- updates ---------------------------------------------------------------------------

    def set(self, name: str, ids: Sequence[int] | np.ndarray, refresh: bool = True) -> bool:
        """Count `ids` as `name` (replacing what was counted for it); False when the cap
        leaves it out. With `refresh` False the counts follow at the next `rebuild` (or
        update): a walk over thousands of files counts them once, not once per file."""
        arr = np.asarray(ids, dtype=np.int32)
        with self._lock:
            old = self._seqs.get(name)
            size = self._tokens - (len(old) if old is not None else 0) + len(arr)
            if size > self.cap_tokens:
                self.skipped += 1
                if old is not None:
                    del self._seqs[name]
                    self._tokens -= len(old)
                    self._changed(refresh)
                return False
            self._seqs[name] = arr
            self._tokens = size
            self._changed(refresh)
            return True

    def remove(self, name: str, refresh: bool = True) -> None:
        with self._lock:
            old = self._seqs.pop(name, None)
            if old is None:
                return
            self._tokens -= len(old)
            self._changed(refresh)

    def clear(self) -> None:
        with self._lock:
            self._seqs.clear()
            self._tokens = 0
            self._refresh()

    def rebuild(self) -> None:
        """Count everything into a new base (what `_refresh` does once changes grow)."""
        with self._lock:
            self._rebase()

    def settle(self) -> None:
        """Count the changes made with `refresh` False, if any (a no-op otherwise)."""
        with self._lock:
            if self._dirty:
                self._refresh()

    def _changed(self, refresh: bool) -> None:
        """After an update (held: _lock): count it now, or mark it for `settle`."""
        if refresh:
            self._refresh()
        else:
            self._dirty = True

    def _rebase(self) -> None:
        """Every sequence counted into a new base, no changes on top (held: _lock)."""
        self._base_seqs = dict(self._seqs)
        empty = Counts([], self.orders)
        self._snapshot = Snapshot(Counts(self._base_seqs.values(), self.orders), empty, empty,
                                  dict(self._seqs), self._next_version())
        self._dirty = False

    def _refresh(self) -> None:
        """Recount the changes since the base (held: _lock): the names whose sequence is
        not the base's, counted as added (their new sequence) and removed (the base's)."""
        changed = [n for n in self._seqs.keys() | self._base_seqs.keys()
                   if self._seqs.get(n) is not self._base_seqs.get(n)]
        changed_tokens = sum(len(self._seqs.get(n, ())) + len(self._base_seqs.get(n, ()))
                             for n in changed)
        base = self._snapshot.base
        if changed_tokens > max(self.REBUILD_MIN, self.REBUILD_SHARE * base.tokens):
            self._rebase()
            return
        added = Counts([self._seqs[n] for n in changed if n in self._seqs], self.orders)
        removed = Counts([self._base_seqs[n] for n in changed if n in self._base_seqs],
                         self.orders)
        self._snapshot = Snapshot(base, added, removed, dict(self._seqs),
                                  self._next_version())
        self._dirty = False

    def _next_version(self) -> int:
        return self._snapshot.version + 1

    # -- reading ---------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        return self._tokens

    def __contains__(self, name: str) -> bool:
        return name in self._seqs

    @property
    def names(self) -> int:
        return len(self._seqs)

    @property
    def nbytes(self) -> int:
        snap = self._snapshot
        return sum(c.nbytes for c in (snap.base, snap.added, snap.removed)) + 4 * self._tokens

    def counter(self, exclude: str | None = None) -> Lookup:
        """A lookup over one consistent snapshot of the counts, without the sequence named
        `exclude` (the document being completed, which has its own level)."""
        snap = self._snapshot
        parts = [(snap.base, 1), (snap.added, 1), (snap.removed, -1)]
        version = (snap.version, exclude)
        seq = snap.seqs.get(exclude) if exclude is not None else None
        if seq is not None:
            kept = self._excluded
            if kept is None or kept[0] is not seq:
                kept = self._excluded = (seq, Counts([seq], self.orders))
            parts.append((kept[1], -1))
        return Lookup(parts, version)


@dataclass(frozen=True)
class Snapshot:
    """What one lookup reads: base + added - removed, and the sequences they count."""

    base: Counts
    added: Counts
    removed: Counts
    seqs: dict[str, np.ndarray]
    version: int = 0


class Lookup:
    """Counts of the tokens that followed a context, summed over signed `Counts`.
    `version` tells two lookups of different contents apart (for answer caches)."""

    def __init__(self, parts: list[tuple[Counts, int]], version: object = None):
        self.parts = [(c, sign) for c, sign in parts if c.tokens]
        self.version = version

    def find(self, k: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.parts) == 1 and self.parts[0][1] == 1:
            return self.parts[0][0].find(k, h)
        found = [(*c.find(k, h), sign) for c, sign in self.parts]
        found = [f for f in found if len(f[0])]
        if not found:
            return EMPTY_TABLE.nxt, EMPTY_TABLE.cnt
        if len(found) == 1 and found[0][2] == 1:
            return found[0][0], found[0][1]
        if sum(len(f[0]) for f in found) <= SMALL_MERGE:      # the usual case: a dict
            merged: dict[int, int] = {}
            for nxt, cnt, sign in found:
                for t, c in zip(nxt.tolist(), cnt.tolist(), strict=True):
                    merged[t] = merged.get(t, 0) + sign * c
            kept = [(t, c) for t, c in merged.items() if c > 0]
            return (np.array([t for t, _ in kept], dtype=np.int32),
                    np.array([c for _, c in kept], dtype=np.int32))
        nxt = np.concatenate([f[0] for f in found])
        cnt = np.concatenate([f[1] * f[2] for f in found])
        ids, inverse = np.unique(nxt, return_inverse=True)
        total = np.bincount(inverse, weights=cnt).astype(np.int64)
        keep = total > 0
        return ids[keep].astype(np.int32), total[keep].astype(np.int32)


class DocumentCounts:
    """The current document's own counts, both sides of the cursor (the suffix is the
    user's text too), for one request at a time. The text above the cursor's line and
    below it is tokenized and counted once and kept while the user types on one line; the
    line itself is counted anew (its two sides). At most DOC_CHARS on each side."""

    DOC_CHARS = 200_000

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._blocks: Counts | None = None

    def counts(self, tok: Tokenizer, prefix: str, suffix: str) -> Lookup:
        start = prefix.rfind("\n") + 1
        end = suffix.find("\n")
        end = len(suffix) if end == -1 else end
        above, below = prefix[:start][-self.DOC_CHARS:], suffix[end:][:self.DOC_CHARS]
        key = (id(tok), len(above), hash(above), len(below), hash(below))
        if key != self._key or self._blocks is None:
            # one call: the tokenizer encodes the two sides in parallel (the same ids;
            # 6.2 -> 4.3 ms for a file of 8-16 kB split in the middle, on 2 cores)
            self._blocks = Counts(tok.encode_batch([clean_text(above), clean_text(below)]))
            self._key = key
        line = Counts([tok.encode(clean_text(prefix[start:])),
                       tok.encode(clean_text(suffix[:end]))])
        return Lookup([(self._blocks, 1), (line, 1)])


@dataclass
class MixStats:
    """How often the cache took part, for the status request."""

    tokens: int = 0          # tokens generated with the mixer on
    matched: int = 0         # ... of which some level matched a context


def confidence(k: int, n: int, weight: float) -> float:
    """The share of probability a level's counts get: more for a longer context and for
    one seen more often, never more than `weight`."""
    return weight * (1 - 2 ** (-k / 2)) * n / (n + 1)


class Mixer:
    """Blends cache counts into a model's next-token distributions (see the module doc).

    `levels` go from the least to the most local (workspace, then document); `left` is
    the text's token ids before the first generated token (the prompt's prefix, without
    the healed bytes). Called by generation with each row's generated ids."""

    def __init__(self, levels: Sequence[Lookup], left: Sequence[int], weight: float = WEIGHT,
                 orders: tuple[int, ...] = ORDERS, stats: MixStats | None = None):
        self.levels = [lv for lv in levels if lv.parts]
        self.left = list(left[-max(orders):])
        self.weight = weight
        self.orders = orders
        self.stats = stats if stats is not None else MixStats()

    def __bool__(self) -> bool:
        return bool(self.levels)

    def matches(self, level: Lookup, history: Sequence[int]
                ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(k, next ids, counts) for each context length `level` matched, shortest first."""
        found = []
        for k in self.orders:
            if k > len(history):
                break
            nxt, cnt = level.find(k, context_hash(history, k))
            if not len(nxt):
                break          # a longer context cannot match where a shorter did not
            found.append((k, nxt, cnt))
        return found

    def evidence(self, history: Sequence[int]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(weight, next ids, counts) of each level's longest match, in the order they are
        applied: the least local level first."""
        out = []
        for level in self.levels:
            found = self.matches(level, history)
            if found:
                k, nxt, cnt = found[-1]
                n = int(cnt.sum())
                out.append((confidence(k, n, self.weight), nxt, cnt))
        return out

    def after(self, ids: Sequence[int]) -> Mixer:
        """The same memory for text that goes on after `ids` (written after `left`): what
        identifier re-ranking needs to generate the rest of a line after the name it chose."""
        return Mixer(self.levels, [*self.left, *ids], self.weight, self.orders, self.stats)

    def __call__(self, logits: torch.Tensor, rows: Sequence[Sequence[int] | None],
                 count: bool = True) -> torch.Tensor:
        """Log-probabilities [B, V] of the blend, from the model's `logits` [B, V] and each
        row's generated ids (rows that are None are left as the model's). `count` False
        leaves the stats alone: scoring given names is not writing tokens."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        for b, ids in enumerate(rows):
            if ids is None:
                continue
            self.stats.tokens += count
            found = self.evidence([*self.left, *ids])
            if not found:
                continue
            self.stats.matched += count
            p = logp[b].exp()
            for lam, nxt, cnt in found:
                p.mul_(1 - lam)
                share = torch.from_numpy(cnt.astype(np.float32) * (lam / float(cnt.sum())))
                p.index_add_(0, torch.from_numpy(nxt.astype(np.int64)).to(p.device),
                             share.to(p.device))
            logp[b] = p.clamp_min(1e-30).log()
        return logp

    def draft(self, generated: Sequence[int], n: int) -> list[int]:
        """Up to `n` tokens the memory expects next: each the most frequent continuation
        of the longest context (of at least DRAFT_MIN_ORDER tokens) matched in the most
        local level that matches. Generation verifies them (model/generate.py)."""
        history = [*self.left, *generated]
        out: list[int] = []
        while len(out) < n:
            t = self._likeliest(history)
            if t is None:
                break
            out.append(t)
            history.append(t)
        return out

    def _likeliest(self, history: list[int]) -> int | None:
        for level in reversed(self.levels):
            for k in reversed(self.orders):
                if k < DRAFT_MIN_ORDER or k > len(history):
                    continue
                nxt, cnt = level.find(k, context_hash(history, k))
                if len(nxt):
                    return int(nxt[int(cnt.argmax())])
        return None

    def blend_one(self, p_model: float, history: Sequence[int], target: int) -> float:
        """The blended probability of `target` after `history`, from the model's own
        probability of it: the same arithmetic as `__call__` for one token (evaluation)."""
        p = p_model
        for lam, nxt, cnt in self.evidence(history):
            hit = cnt[nxt == target]
            p = (1 - lam) * p + lam * (float(hit[0]) if len(hit) else 0.0) / float(cnt.sum())
        return p
