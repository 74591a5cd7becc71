"""Identifier re-ranking after a partly typed name.

When the cursor follows a partial identifier (`total = comp|`), the names the user means
are nearly always already in the file, in Python's builtins or among the keywords. A small
model's greedy choice, token by token, often drifts to a plausible but absent name. So the
names starting with what was typed are scored by the model itself — the probability of the
whole name followed by something that ends a name — beside the model's own greedy guess,
with a small prior for names used often in this file, and the best one leads the completion.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections import Counter

from server.snippets import IDENTIFIER

PARTIAL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
LEADING_WORD = re.compile(r"[A-Za-z0-9_]*")
MAX_CANDIDATES = 12
SCAN_CHARS = 20_000            # how much of the document around the cursor is scanned
PRIOR_WEIGHT = 0.5             # nats per log(1 + uses in the file)
GLOBAL_NAMES = frozenset(keyword.kwlist + keyword.softkwlist
                         + [n for n in dir(builtins) if not n.startswith("_")])


def partial_word(prefix: str) -> str:
    """The identifier fragment right before the cursor ("" when there is none)."""
    m = PARTIAL.search(prefix[-200:])
    return m.group(0) if m else ""


def name_counts(prefix: str, suffix: str, partial: str) -> Counter[str]:
    """Uses of each identifier in the document around the cursor (the fragment being
    typed not counted)."""
    counts = Counter(IDENTIFIER.findall(prefix[-SCAN_CHARS:]))
    counts.update(IDENTIFIER.findall(suffix[:SCAN_CHARS]))
    counts[partial] -= 1
    return counts


def candidates(counts: Counter[str], partial: str) -> list[str]:
    """Names that extend `partial`: the document's, most used first, then builtins and
    keywords."""
    names = {n: c for n, c in counts.items()
             if c > 0 and n.startswith(partial) and n != partial}
    for n in GLOBAL_NAMES:
        if n.startswith(partial) and n != partial:
            names.setdefault(n, 0)
    return [n for n, _ in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))
            ][:MAX_CANDIDATES]


def greedy_name(partial: str, completion: str) -> str:
    """The identifier the model's completion makes of the fragment."""
    return partial + LEADING_WORD.match(completion).group(0)


def prior(uses: int) -> float:
    return PRIOR_WEIGHT * math.log1p(uses)
