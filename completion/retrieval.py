"""Repository context: the windows of other files most similar to the code before the
cursor, found by the Jaccard similarity of identifier sets (RepoCoder's recipe: windows
of 20 lines every 10 lines, the query is the lines just above the cursor's line).

One implementation for the server (server/workspace.py indexes the user's workspace) and
for training (training/data.py puts windows of the same repository before FIM examples),
so the model is trained on exactly the context it is served.

The query leaves out the line being typed, so while the user types within a line the
chosen windows stay the same and the prompt's KV cache stays reusable.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from completion.words import IDENTIFIER

WINDOW_LINES = 20          # lines per window, and lines of query
STRIDE_LINES = 10          # windows overlap by half
MIN_SIMILARITY = 0.10      # below this a window is noise, not context
COMMON_SHARE = 0.25        # a word in more than this share of windows (self, return, if)
#                            is not looked up: it says little and costs the most
SHORTLIST = 256            # windows sharing the most uncommon words get an exact score
RETRIEVED = 8              # windows a search returns; prompts take as many as fit
MAX_WINDOW_CHARS = 4000    # a window of huge lines (data tables) is cut


@dataclass(frozen=True)
class Window:
    path: str              # the file's path as shown in the prompt (relative when known)
    start: int             # first line, 0-based
    end: int               # one past the last line
    text: str
    words: frozenset[str]


def words_of(text: str) -> frozenset[str]:
    """The identifiers (and keywords) of `text`: what similarity is measured on."""
    return frozenset(IDENTIFIER.findall(text))


def file_windows(path: str, text: str) -> list[Window]:
    """A file's windows of WINDOW_LINES lines every STRIDE_LINES lines; blank ones left out."""
    lines = text.split("\n")
    out = []
    for start in range(0, max(1, len(lines) - STRIDE_LINES), STRIDE_LINES):
        end = min(len(lines), start + WINDOW_LINES)
        chunk = "\n".join(lines[start:end])[:MAX_WINDOW_CHARS]
        words = words_of(chunk)
        if words:
            out.append(Window(path, start, end, chunk, words))
    return out


def query_words(prefix: str) -> frozenset[str]:
    """The identifiers of the WINDOW_LINES complete lines before the cursor's line (the
    line being typed is left out, so the query is stable while typing it)."""
    done = prefix[: prefix.rfind("\n") + 1] if "\n" in prefix else ""
    tail = done[-WINDOW_LINES * 200:].split("\n")[-WINDOW_LINES - 1:]
    return words_of("\n".join(tail))


class WindowIndex:
    """Windows of many files with an inverted index from identifier to windows, so a query
    touches only the windows that share a word with it. Files are added, replaced and
    removed by path; every method is thread-safe (the server indexes in the background
    while requests search)."""

    def __init__(self) -> None:
        self._windows: dict[int, Window] = {}
        self._by_path: dict[str, list[int]] = {}
        self._postings: dict[str, set[int]] = defaultdict(set)
        self._next = 0
        self._lock = threading.Lock()
        self.generation = 0        # changes whenever the contents change

    def __len__(self) -> int:
        return len(self._windows)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._by_path)

    def file_count(self) -> int:
        """Files indexed (read without the lock: a status request never waits on a search)."""
        return len(self._by_path)

    def has(self, path: str) -> bool:
        return path in self._by_path

    def set_file(self, path: str, text: str) -> int:
        """Index (or re-index) one file; returns its number of windows."""
        found = file_windows(path, text)
        with self._lock:
            self._drop(path)
            ids = []
            for w in found:
                wid = self._next
                self._next += 1
                self._windows[wid] = w
                for word in w.words:
                    self._postings[word].add(wid)
                ids.append(wid)
            self._by_path[path] = ids
            self.generation += 1
        return len(found)

    def remove_file(self, path: str) -> None:
        with self._lock:
            if path in self._by_path:
                self._drop(path)
                self.generation += 1

    def _drop(self, path: str) -> None:
        for wid in self._by_path.pop(path, ()):
            w = self._windows.pop(wid)
            for word in w.words:
                ids = self._postings.get(word)
                if ids is not None:
                    ids.discard(wid)
                    if not ids:
                        del self._postings[word]

    def search(self, query: frozenset[str], k: int = RETRIEVED, exclude: str | None = None,
               min_similarity: float = MIN_SIMILARITY) -> list[tuple[float, Window]]:
        """Up to `k` windows by descending Jaccard similarity with `query`, none from the
        file `exclude`, none overlapping a better one of the same file."""
        if not query:
            return []
        with self._lock:
            common = max(50, int(COMMON_SHARE * len(self._windows)))
            shared: dict[int, int] = defaultdict(int)
            for word in query:
                ids = self._postings.get(word)
                if ids and len(ids) <= common:
                    for wid in ids:
                        shared[wid] += 1
            best = sorted(shared, key=lambda wid: (-shared[wid], wid))[:SHORTLIST]
            shortlist = [(wid, self._windows[wid]) for wid in best]
        # Scored outside the lock: indexing and status requests need not wait for it.
        scored = []
        for wid, w in shortlist:
            if w.path == exclude:
                continue
            both = len(query & w.words)               # the exact overlap, common words too
            score = both / (len(query) + len(w.words) - both)
            if score >= min_similarity:
                scored.append((score, wid, w))
        scored.sort(key=lambda s: (-s[0], s[1]))
        picked: list[tuple[float, Window]] = []
        for score, _, w in scored:
            if any(p.path == w.path and p.start < w.end and w.start < p.end
                   for _, p in picked):
                continue
            picked.append((score, w))
            if len(picked) == k:
                break
        return picked
