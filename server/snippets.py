"""Short snippets from the user's other open documents, to put names defined there in reach.

The code just above the cursor (without the line being typed, so typing within a line
keeps the same snippet and the KV cache stays reusable) is compared with windows of lines
of the other open Python documents by the Jaccard similarity of their identifier sets;
the best window above a threshold goes into the prompt before the prefix, as comment lines
under a header naming its file (the usual "neighbouring tabs" recipe). Windows are cached
per document version, so a request costs one pass over the cached sets.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from completion.words import IDENTIFIER

WINDOW_LINES = 12          # lines per candidate window (and lines of query context)
STEP_LINES = 6             # windows overlap by half
MIN_SIMILARITY = 0.15
MAX_DOC_CHARS = 500_000    # larger documents are skipped
MAX_DOCS = 20              # the most recently opened/edited ones


@dataclass(frozen=True)
class OpenDocument:
    name: str              # shown in the header: a path or URI
    version: int
    text: str


@dataclass(frozen=True)
class Window:
    start: int             # first line (0-based)
    text: str
    identifiers: frozenset[str]


def identifiers(text: str) -> frozenset[str]:
    return frozenset(IDENTIFIER.findall(text))


def windows(text: str) -> list[Window]:
    lines = text.split("\n")
    out = []
    for start in range(0, max(1, len(lines) - STEP_LINES), STEP_LINES):
        chunk = "\n".join(lines[start:start + WINDOW_LINES])
        if chunk.strip():
            out.append(Window(start, chunk, identifiers(chunk)))
    return out


def query_lines(prefix: str) -> str:
    """The WINDOW_LINES complete lines before the cursor's line."""
    before = prefix[: prefix.rfind("\n") + 1] if "\n" in prefix else ""
    return "\n".join(before.split("\n")[-WINDOW_LINES - 1:])


class SnippetFinder:
    """Keeps the windows of recently seen documents, keyed by (name, version)."""

    def __init__(self, cache_size: int = 64):
        self._cache: OrderedDict[tuple[str, int], list[Window]] = OrderedDict()
        self.cache_size = cache_size
        self._lock = threading.Lock()     # requests' worker threads share the cache

    def _windows(self, doc: OpenDocument) -> list[Window]:
        key = (doc.name, doc.version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        found = windows(doc.text)
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return found

    def best(self, prefix: str, docs: list[OpenDocument]) -> str:
        """The prompt text for the most similar window, or "" when none is similar."""
        query = identifiers(query_lines(prefix))
        if not query:
            return ""
        best: tuple[float, str, Window] | None = None
        for doc in docs[-MAX_DOCS:]:
            if len(doc.text) > MAX_DOC_CHARS:
                continue
            for w in self._windows(doc):
                union = len(query | w.identifiers)
                score = len(query & w.identifiers) / union if union else 0.0
                if score >= MIN_SIMILARITY and (best is None or score > best[0]):
                    best = (score, doc.name, w)
        if best is None:
            return ""
        _, name, w = best
        body = "\n".join(f"# {line}" if line.strip() else "#" for line in w.text.split("\n"))
        return f"# Compare this snippet from {name}:\n{body}\n\n"
