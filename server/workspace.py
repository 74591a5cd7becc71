"""The user's workspace as repository context: its Python files indexed into windows in the
background, open documents' buffers in place of their disk text, and for each request the
most similar windows of other files (completion/retrieval.py) as prompt tokens.

Indexing is bounded (files, bytes, seconds) and skips what is not the user's code: VCS
folders, virtual environments, site-packages, node_modules, build and cache folders,
symbolic links (so no loop can trap the walk), binary, non-UTF-8 and huge files. What was
skipped is said once in the log. Nothing here ever raises into a request: a folder that
disappears, an unreadable file or a permission error is skipped.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from completion.cache_lm import Lookup, Memory
from completion.prompt import clean_text, context_ids
from completion.retrieval import WindowIndex, query_words
from model.tokenizer import Tokenizer

log = logging.getLogger("codecomplete")
MEMORY_BATCH = 256       # the walk recounts the project memory after this many files
BUFFERS = "<open buffers>"   # a file event that counts the open documents' newest buffers

SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".venv", "venv", "env", ".env", "site-packages", "dist-packages",
    "node_modules", "__pycache__", "build", "dist", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", ".idea", ".vscode", ".eggs",
})


@dataclass(frozen=True)
class Limits:
    """How much of a workspace is indexed; beyond these, files are skipped (and counted)."""

    files: int = 5000
    file_bytes: int = 1_000_000
    total_bytes: int = 64_000_000
    seconds: float = 30.0
    entries: int = 200_000       # directory entries looked at, indexed or not
    memory_tokens: int = 2_000_000   # tokens counted by the project memory (at most 16
    #                                  bytes per token and context length: ~200 MB)


def skipped_dir(entry: os.DirEntry) -> bool:
    name = entry.name
    return (name in SKIP_DIRS or name.endswith(".egg-info")
            or os.path.exists(os.path.join(entry.path, "pyvenv.cfg")))


class Workspace:
    """Windows of the workspace's Python files and of the open documents."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self.index = WindowIndex()
        self.folders: tuple[str, ...] = ()
        self.skipped: Counter[str] = Counter()
        self._sizes: dict[str, int] = {}        # bytes of each file indexed from disk
        self._bytes = 0                         # their sum, for the byte limit
        self.done = threading.Event()          # the current scan finished
        self._open: set[str] = set()           # paths whose buffer replaces the disk text
        self._pending: dict[str, str] = {}     # open documents' newest text, indexed lazily
        self._lock = threading.Lock()
        self._sizes_lock = threading.Lock()     # _sizes and _bytes (walk and file events)
        self._scan = 0                         # a newer scan stops an older one
        self._cached: tuple[tuple, list[int]] | None = None
        # Project memory (completion/cache_lm.py): the same files as token counts, once
        # the server has a tokenizer to count them in.
        self.memory = Memory(limits.memory_tokens)
        self.tokenizer: Tokenizer | None = None
        self._events: list[str] = []            # file events waiting for the worker
        self._events_idle = threading.Event()
        self._events_idle.set()
        self._event_thread: threading.Thread | None = None
        self._keep: str | None = None           # the document of the latest request
        self._requests = 0                      # requests in flight (`serving`)
        self._quiet = threading.Condition()     # notified when the last one ends
        self._local = threading.local()         # .serving (a request's thread), .waited
        self.done.set()

    # -- requests come first ---------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around a request's work: the walk and the file events wait meanwhile. On a
        small machine a background thread reading, tokenizing and counting thousands of
        files would otherwise take the interpreter lock from the request's thread between
        every one of its tensor operations (a request measured 3-7 s while a 5,000-file
        workspace was walked, 0.2 s after)."""
        with self._quiet:
            self._requests += 1
        self._local.serving = True
        try:
            yield
        finally:
            self._local.serving = False
            with self._quiet:
                self._requests -= 1
                if not self._requests:
                    self._quiet.notify_all()

    def _after_requests(self) -> None:
        """Background work calls this between files: wait while requests are in flight.
        The seconds waited add up in the thread's `waited` (the walk's time limit does
        not count them, wherever in the walk they were spent)."""
        if not self._requests or getattr(self._local, "serving", False):
            return                     # (a request's own thread never waits for itself)
        started = time.monotonic()
        with self._quiet:
            while self._requests:
                self._quiet.wait(0.5)
        self._local.waited = getattr(self._local, "waited", 0.0) + time.monotonic() - started

    # -- the workspace folders ------------------------------------------------------------

    def set_folders(self, folders: tuple[str, ...]) -> None:
        """Index these folders in the background (again, if they changed)."""
        folders = tuple(str(Path(f)) for f in folders if f)
        if folders == self.folders:
            return
        self.folders = folders
        with self._lock:
            self._scan += 1
            scan = self._scan
        for path in self.index.paths():
            if path not in self._open:
                self._forget(path, refresh=False)   # the walk recounts the memory
        self.done.clear()
        threading.Thread(target=self._walk, args=(scan, folders), daemon=True,
                         name="codecomplete-index").start()

    def _walk(self, scan: int, folders: tuple[str, ...]) -> None:
        started = time.monotonic()
        self._local.waited = 0.0        # given to requests (_after_requests): not the walk's

        def working() -> float:
            return time.monotonic() - started - self._local.waited

        self.skipped = Counter()
        entries = 0
        stack = list(folders)
        try:
            while stack and scan == self._scan:
                self._after_requests()
                folder = stack.pop()
                try:
                    with os.scandir(folder) as it:
                        listing = sorted(it, key=lambda e: e.name)
                except OSError:
                    self.skipped["unreadable_folders"] += 1
                    continue
                for entry in listing:
                    entries += 1
                    self._after_requests()
                    if entries > self.limits.entries or working() > self.limits.seconds:
                        self.skipped["entries_past_the_limits"] += 1
                        stack.clear()
                        break
                    self._visit(entry, stack, scan)
        finally:
            if scan == self._scan:       # the buffers opened meanwhile, off the request path
                self._after_requests()
                self._count_buffers(self._keep)
            self.memory.settle()
            if scan == self._scan:
                self._report(folders, working())
                self.done.set()

    def _visit(self, entry: os.DirEntry, stack: list[str], scan: int | None = None) -> None:
        try:
            if entry.is_symlink():
                self.skipped["symbolic_links"] += 1
            elif entry.is_dir(follow_symlinks=False):
                if skipped_dir(entry):
                    self.skipped["environment_vcs_build_or_cache_folders"] += 1
                else:
                    stack.append(entry.path)
            elif entry.name.endswith(".py") and entry.is_file(follow_symlinks=False):
                self._index_disk_file(entry.path, entry.stat(follow_symlinks=False).st_size,
                                      refresh=False, scan=scan)
                if len(self._sizes) % MEMORY_BATCH == 0:
                    self._after_requests()
                    self.memory.settle()      # requests meanwhile see what is counted so far
        except OSError:
            self.skipped["unreadable_files"] += 1

    def _index_disk_file(self, path: str, size: int, refresh: bool = True,
                         scan: int | None = None) -> None:
        """Read and index one file from disk. The walk and the file events run on two
        threads: the sizes the limits count are changed under a lock, a path indexed again
        counts once, and a walk whose folders changed meanwhile (`scan` is old) adds
        nothing more."""
        if path in self._open:
            return
        with self._sizes_lock:
            if scan is not None and scan != self._scan:
                return
            self._bytes -= self._sizes.pop(path, 0)      # indexed again: counted once
            if len(self._sizes) >= self.limits.files:
                self.skipped["files_past_the_file_limit"] += 1
                return
            if size > self.limits.file_bytes:
                self.skipped["files_over_the_size_limit"] += 1
                return
            if self._bytes + size > self.limits.total_bytes:
                self.skipped["files_past_the_byte_limit"] += 1
                return
            self._sizes[path] = size                     # reserved until read
            self._bytes += size
        try:
            with open(path, "rb") as f:
                data = f.read(self.limits.file_bytes + 1)
            if b"\0" in data:
                raise UnicodeDecodeError("utf-8", data, 0, 1, "binary")
            text = data.decode("utf-8")
        except (UnicodeDecodeError, OSError) as e:
            self.skipped["binary_or_non_utf8_files" if isinstance(e, UnicodeDecodeError)
                         else "unreadable_files"] += 1
            with self._sizes_lock:
                self._bytes -= self._sizes.pop(path, 0)
            return
        self._after_requests()                           # read; tokenized after requests
        self._add(path, text, refresh)
        with self._sizes_lock:
            if path in self._sizes:                      # the read size, not the listed one
                self._bytes += len(data) - self._sizes[path]
                self._sizes[path] = len(data)
        if scan is not None and scan != self._scan:      # the folders changed meanwhile
            self._forget(path, refresh)

    def _add(self, path: str, text: str, refresh: bool = True) -> None:
        """Index one file's text: its windows, and its tokens in the project memory (the
        walk counts them in batches: `refresh` False)."""
        self.index.set_file(path, text)
        tok = self.tokenizer
        if tok is None:
            return
        if self.memory.tokens >= self.memory.cap_tokens and path not in self.memory:
            self.skipped["files_past_the_memory_limit"] += 1   # full: not even tokenized
        elif not self.memory.set(path, tok.encode(clean_text(text)), refresh):
            self.skipped["files_past_the_memory_limit"] += 1

    def _forget(self, path: str, refresh: bool = True) -> None:
        """Drop a file from the index (and from the counts the limits apply to)."""
        with self._sizes_lock:
            self._bytes -= self._sizes.pop(path, 0)
        self.index.remove_file(path)
        self.memory.remove(path, refresh)

    def _report(self, folders: tuple[str, ...], seconds: float) -> None:
        skipped = ", ".join(f"{n} {what.replace('_', ' ')}"
                            for what, n in sorted(self.skipped.items()))
        log.info("workspace index: %d files (%.1f MB, %d windows) from %s in %.1f s%s",
                 len(self._sizes), self._bytes / 1e6, len(self.index),
                 ", ".join(folders) or "no folder", seconds,
                 f"; skipped {skipped}" if skipped else "")

    def describe(self) -> dict[str, object]:
        """For the status request: what is indexed and what was skipped (snake_case reasons,
        so clients that turn objects into attributes can read them)."""
        with self._lock:
            pending = [p for p in self._pending if not self.index.has(p)]
        return {"workspace_files": self.index.file_count() + len(pending),
                "workspace_windows": len(self.index),
                "memory_files": self.memory.names,
                "memory_tokens": self.memory.tokens,
                "memory_mb": round(self.memory.nbytes / 1e6, 1),
                "workspace_indexing": not (self.done.is_set()
                                           and self._events_idle.is_set()),
                "workspace_skipped": dict(self.skipped)}

    # -- documents and file events ---------------------------------------------------------

    def set_document(self, path: str, text: str) -> None:
        """An open document's buffer (didOpen/didChange): indexed before the next search
        that may use it, instead of its disk text."""
        with self._lock:
            self._open.add(path)
            self._pending[path] = text

    def close_document(self, path: str) -> None:
        """The buffer is gone: the disk text counts again (if it is in the workspace),
        read off the event loop (`queue_file_event`)."""
        with self._lock:
            self._open.discard(path)
            self._pending.pop(path, None)
        self.queue_file_event(path)

    def queue_file_event(self, path: str) -> None:
        """`file_changed` on the workspace's own thread: reading and counting a file (or
        the thousands a branch switch touches) never holds up a request or a cancel.
        Until the queue is empty the status says the workspace is indexing."""
        with self._lock:
            self._events.append(path)
            self._events_idle.clear()
            if self._event_thread is None or not self._event_thread.is_alive():
                self._event_thread = threading.Thread(target=self._drain_events, daemon=True,
                                                      name="codecomplete-file-events")
                self._event_thread.start()

    def _drain_events(self) -> None:
        while True:
            with self._lock:
                if not self._events:
                    self._events_idle.set()
                    self._event_thread = None
                    return
                path = self._events.pop(0)
            self._after_requests()
            try:
                if path == BUFFERS:
                    self._count_buffers(self._keep)
                else:
                    self.file_changed(path)
            except Exception as e:     # one odd file never stops the others
                log.warning("could not re-index %s: %s", path, e)

    def wait_for_events(self, timeout: float | None = None) -> bool:
        """Wait until the queued file events are handled (tests, benchmarks)."""
        return self._events_idle.wait(timeout)

    def file_changed(self, path: str) -> None:
        """A file was created, changed or deleted on disk (didSave, didChangeWatchedFiles).
        Only a regular file (not a symbolic link, which the walk skips too) inside a
        workspace folder, compared by its normalised path, is indexed."""
        path = os.path.normpath(path)
        if path in self._open:
            return
        self._forget(path)
        if not path.endswith(".py") or self._folder_of(path) is None:
            return
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._index_disk_file(path, st.st_size)

    def _folder_of(self, path: str) -> str | None:
        """The workspace folder `path` lies in (with its trailing separator), if any,
        compared by path components after `..` and `.` are resolved."""
        path = os.path.normpath(path)
        for folder in self.folders:
            base = os.path.normpath(folder)
            if path != base and os.path.commonpath([path, base]) == base:
                return base.rstrip(os.sep) + os.sep
        return None

    def _flush(self, keep: str) -> None:
        """Have the newest buffers of open documents indexed, except `keep` (the document
        being completed: it is left out of its own context anyway, and re-indexing it on
        every keystroke would cost each request). They are counted on the workspace's own
        thread once the request is answered, not by the request: tokenizing and counting
        the file the user just left cost a cold request ~20 ms (a quarter of its time in
        benchmarks.latency), and the request loses only that file's newest edits."""
        self._keep = keep
        if not self.done.is_set():
            return      # a walk is counting: the buffers wait for its end (counting them
            #             now would wait for, or redo, the walk's batch)
        with self._lock:
            due = BUFFERS not in self._events and any(p != keep for p in self._pending)
        if due:
            self.queue_file_event(BUFFERS)

    def _count_buffers(self, keep: str | None) -> None:
        with self._lock:
            todo = {p: t for p, t in self._pending.items() if p != keep}
            for p in todo:
                del self._pending[p]
        for path, text in todo.items():      # counted together: one recount, not one each
            if len(text) <= self.limits.file_bytes:
                self._add(path, text, refresh=False)
            else:
                self._forget(path, refresh=False)
        if todo:
            self.memory.settle()

    # -- requests --------------------------------------------------------------------------

    def display_path(self, path: str) -> str:
        """The path as the prompt shows it: relative to its workspace folder."""
        base = self._folder_of(path)
        if base is not None:
            return path[len(base):]
        return os.path.basename(path) or path

    def memory_counts(self, path: str) -> Lookup | None:
        """The project memory's counts of the workspace and the other open buffers, without
        the document at `path` (the request counts its buffer itself); None when empty."""
        self._flush(keep=path)
        counts = self.memory.counter(exclude=path)
        return counts if counts.parts else None

    def context(self, tok: Tokenizer, prefix: str, path: str, budget: int) -> list[int]:
        """Prompt tokens of the windows of other files most similar to the lines above the
        cursor (most similar last), then the document's own header; [] when none is
        similar. The same query gives the same tokens, so the KV cache stays reusable."""
        self._flush(keep=path)
        query = query_words(prefix)
        key = (query, path, budget, self.index.generation, id(tok))
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        hits = self.index.search(query, exclude=path)
        chunks = [(self.display_path(w.path), w.text) for _, w in hits]
        ids = context_ids(tok, chunks, self.display_path(path), budget) if chunks else []
        self._cached = (key, ids)
        return ids
