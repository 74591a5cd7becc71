"""Near-duplicate detection: MinHash over 5-gram token shingles, LSH banding, Jaccard >= 0.85.

Exact duplicates never reach the store twice (files are keyed by blob SHA). Near
duplicates — vendored copies with a changed header, the same module in two versions —
are marked (`files.near_dup_of`) rather than deleted, so the step can be rerun with a
different threshold; `training.prepare` leaves marked files out. In every cluster the
most-starred file (then the smallest SHA) is kept.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

NUM_PERM = 128
BANDS, ROWS = 32, 4          # 32 * 4 = 128; candidate pairs from ~0.42 Jaccard upwards
SHINGLE = 5
THRESHOLD = 0.85
_PRIME = (1 << 61) - 1
_TOKEN = re.compile(r"\w+|[^\w\s]")


def shingles(text: str, n: int = SHINGLE) -> set[int]:
    """Hashes of the n-grams of code tokens (identifiers, numbers, single punctuation)."""
    toks = _TOKEN.findall(text)
    if len(toks) < n:
        return {zlib.crc32(" ".join(toks).encode())}
    return {zlib.crc32("\x00".join(toks[i:i + n]).encode()) for i in range(len(toks) - n + 1)}


class MinHasher:
    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        h = np.fromiter(shingles(text), dtype=np.uint64)
        # (a*h + b) mod p on 64-bit: h < 2^32 and a < 2^61 would overflow, so split a.
        a_lo, a_hi = self.a & 0xFFFFFFFF, self.a >> np.uint64(32)
        hv = h[:, None]
        prod = ((a_hi * hv % _PRIME) * np.uint64(1 << 32) % _PRIME + a_lo * hv % _PRIME
                + self.b) % _PRIME
        return prod.min(axis=0)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def near_duplicates(items: Iterable[tuple[str, int, str]], threshold: float = THRESHOLD
                    ) -> dict[str, str]:
    """items: (sha, stars, text). Returns {sha: kept_sha} for every file that is a near
    duplicate of a kept one."""
    hasher = MinHasher()
    sigs: dict[str, np.ndarray] = {}
    rank: dict[str, tuple[int, str]] = {}
    buckets: dict[tuple[int, bytes], list[str]] = defaultdict(list)
    for sha, stars, text in items:
        sig = hasher.signature(text)
        sigs[sha] = sig
        rank[sha] = (-stars, sha)
        for band in range(BANDS):
            buckets[(band, sig[band * ROWS:(band + 1) * ROWS].tobytes())].append(sha)
    parent = {sha: sha for sha in sigs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    checked: set[tuple[str, str]] = set()
    for members in buckets.values():
        for i in range(1, len(members)):
            for j in range(i):
                pair = (members[j], members[i])
                if pair in checked:
                    continue
                checked.add(pair)
                if jaccard_estimate(sigs[pair[0]], sigs[pair[1]]) >= threshold:
                    ra, rb = find(pair[0]), find(pair[1])
                    if ra != rb:
                        keep, drop = sorted((ra, rb), key=rank.__getitem__)
                        parent[drop] = keep
    return {sha: find(sha) for sha in sigs if find(sha) != sha}
