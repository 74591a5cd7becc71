"""The corpus: one SQLite file (WAL) holding the files and the crawl state.

Why SQLite: a crawl is killed at arbitrary moments (rate limits, laptops closing, SIGKILL).
Every repository's files, rejections and status are written in one transaction, so after
a kill a repository is either completely in the store or not at all, and rerunning the
same command picks up exactly where it stopped with nothing lost or duplicated.

Tables
- `repos`: one row per source repository (GitHub `owner/name`, or `local:NAME`), with its
  stars, license (SPDX), commit, crawl status, attempts and last error.
- `files`: unique file contents keyed by git blob SHA, with the most-starred origin.
- `occurrences`: every qualifying (repo, path) and its SHA; `occurrences - files` is the
  number of exact duplicates dropped.
- `rejections`: (repo, path, reason) for every file a filter turned away.
- `local_origins`: the directory each `local:` repository name stands for, so two
  directories with the same name get two repositories.
- `slices`: search-API discovery state (query, created range, result count, next page).
- `etags`: the last ETag, `Link` header and body (zlib) seen for a URL, sent back as
  `If-None-Match`; a bounded cache (ETAG_CACHE_BYTES, least recently used out first).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scraper.client import CachedPage

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    source TEXT NOT NULL,
    stars INTEGER NOT NULL DEFAULT 0,
    license TEXT NOT NULL DEFAULT 'unknown',
    default_branch TEXT,
    commit_sha TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS files (
    sha TEXT PRIMARY KEY,
    repo_id INTEGER NOT NULL REFERENCES repos(id),
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    size INTEGER NOT NULL,
    license TEXT NOT NULL,
    stars INTEGER NOT NULL,
    commit_sha TEXT,
    near_dup_of TEXT
);
CREATE TABLE IF NOT EXISTS occurrences (
    repo_id INTEGER NOT NULL REFERENCES repos(id),
    path TEXT NOT NULL,
    sha TEXT NOT NULL,
    PRIMARY KEY (repo_id, path)
);
CREATE TABLE IF NOT EXISTS rejections (
    repo_id INTEGER NOT NULL REFERENCES repos(id),
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (repo_id, path)
);
CREATE TABLE IF NOT EXISTS slices (
    query TEXT PRIMARY KEY,
    start TEXT NOT NULL,
    end TEXT NOT NULL,
    total INTEGER,
    status TEXT NOT NULL DEFAULT 'pending',
    next_url TEXT,
    incomplete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS etags (
    url TEXT PRIMARY KEY,
    etag TEXT NOT NULL,
    link TEXT,
    body BLOB NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS etags_used ON etags(used);
CREATE TABLE IF NOT EXISTS local_origins (
    name TEXT PRIMARY KEY,
    origin TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_repo ON files(repo_id);
"""

# Repository statuses: pending -> done | skipped (no qualifying file) | gone (404/451)
# | failed (gave up after retries; retried on the next run).
PENDING, DONE, SKIPPED, GONE, FAILED = "pending", "done", "skipped", "gone", "failed"


class StoreError(Exception):
    """The corpus database cannot be opened or is not a codecomplete corpus."""


def git_blob_sha(data: bytes) -> str:
    """Git's blob SHA-1 of `data` (what GitHub's tree API reports), recomputed from content
    so a corrupted download cannot enter the store under the wrong name."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoRow:
    id: int
    name: str
    source: str
    stars: int
    license: str
    status: str
    attempts: int
    commit_sha: str | None
    default_branch: str | None


@dataclass(frozen=True)
class FileRow:
    sha: str
    repo: str
    path: str
    content: str
    license: str
    stars: int
    commit_sha: str | None


@dataclass(frozen=True)
class Accepted:
    """A qualifying file ready to store: its path in the repo, raw bytes and text."""
    path: str
    data: bytes
    text: str


ETAG_CACHE_BYTES = 64 * 2**20


class ScrapeLock:
    """One scrape per database at a time: an exclusive lock on `DB.lock` beside it, held
    for the life of the process and released by the OS if the process dies (no stale
    locks). The file holds the holder's pid, so the second process can say who it is."""

    def __init__(self, db_path: str | Path):
        self.path = Path(str(db_path) + ".lock")
        self._file = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:                  # not POSIX: no lock, as before
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)   # data/ in a fresh clone
        f = open(self.path, "a+")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise StoreError(f"another scrape (pid {pid}) holds {self.path.with_suffix('')}; "
                             "wait for it to finish or stop it first.") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ScrapeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CorpusStore:
    """All reads and writes of the corpus database go through this class."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._etag_bytes: int | None = None    # compressed bytes in the ETag cache (lazy)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)   # data/ in a fresh clone
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._drop_old_etags()
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable corpus database ({e}).") from None

    def _drop_old_etags(self) -> None:
        """Databases from before the bounded ETag cache kept every body uncompressed and
        forever; that table is only a cache, so it is dropped and made anew."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(etags)")}
        if cols and "used" not in cols:
            self.db.execute("DROP TABLE etags")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CorpusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- repositories ------------------------------------------------------------------

    def upsert_repo(self, name: str, source: str, stars: int = 0, license: str = "unknown",
                    default_branch: str | None = None) -> RepoRow:
        """Register a repository (idempotent); metadata is refreshed, status kept."""
        self.db.execute(
            "INSERT INTO repos(name, source, stars, license, default_branch, updated_at)"
            " VALUES(?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET stars=excluded.stars,"
            " license=excluded.license, default_branch=excluded.default_branch",
            (name, source, stars, license, default_branch, time.time()))
        repo = self.repo(name)
        assert repo is not None
        return repo

    def claim_local_name(self, name: str, origin: str) -> str:
        """The store name for the local directory `origin`: `name` when it is free or
        already this directory's, else `name@<hash of the path>` (two folders both called
        `src` are two repositories, and the second is not skipped as done)."""
        row = self.db.execute("SELECT origin FROM local_origins WHERE name=?",
                              (name,)).fetchone()
        if row is not None and row[0] != origin:
            name = f"{name}@{hashlib.sha256(origin.encode()).hexdigest()[:8]}"
        self.db.execute("INSERT OR IGNORE INTO local_origins VALUES(?,?)", (name, origin))
        return name

    def repo(self, name: str) -> RepoRow | None:
        row = self.db.execute(
            "SELECT id, name, source, stars, license, status, attempts, commit_sha,"
            " default_branch FROM repos WHERE name=?", (name,)).fetchone()
        return RepoRow(*row) if row else None

    def repos(self, status: str | None = None) -> list[RepoRow]:
        sql = ("SELECT id, name, source, stars, license, status, attempts, commit_sha,"
               " default_branch FROM repos")
        rows = (self.db.execute(sql + " WHERE status=? ORDER BY id", (status,)) if status
                else self.db.execute(sql + " ORDER BY id"))
        return [RepoRow(*r) for r in rows]

    def mark_repo(self, repo: RepoRow, status: str, error: str | None = None,
                  count_attempt: bool = False) -> None:
        self.db.execute(
            "UPDATE repos SET status=?, last_error=?, attempts=attempts+?, updated_at=?"
            " WHERE id=?", (status, error, int(count_attempt), time.time(), repo.id))

    def finish_repo(self, repo: RepoRow, commit_sha: str | None, accepted: Iterable[Accepted],
                    rejected: Iterable[tuple[str, str]],
                    known: Iterable[tuple[str, str]] = ()) -> int:
        """Store one repository's files and rejections and mark it done, atomically.
        `known` are (path, sha) of blobs the store already holds (not downloaded again).
        Exact dedup: a SHA already stored keeps the more-starred origin. Returns the
        number of files that were new to the store."""
        new = 0
        with self.transaction():
            self.db.execute("DELETE FROM occurrences WHERE repo_id=?", (repo.id,))
            self.db.execute("DELETE FROM rejections WHERE repo_id=?", (repo.id,))
            for path, reason in rejected:
                self.db.execute("INSERT OR REPLACE INTO rejections VALUES(?,?,?)",
                                (repo.id, path, reason))
            for path, sha in known:
                self.db.execute("INSERT OR REPLACE INTO occurrences VALUES(?,?,?)",
                                (repo.id, path, sha))
                self.db.execute(
                    "UPDATE files SET repo_id=?, path=?, license=?, stars=?, commit_sha=?"
                    " WHERE sha=? AND stars < ?", (repo.id, path, repo.license, repo.stars,
                                                   commit_sha, sha, repo.stars))
            for f in accepted:
                sha = git_blob_sha(f.data)
                self.db.execute("INSERT OR REPLACE INTO occurrences VALUES(?,?,?)",
                                (repo.id, f.path, sha))
                row = self.db.execute("SELECT stars FROM files WHERE sha=?", (sha,)).fetchone()
                if row is None:
                    self.db.execute(
                        "INSERT INTO files(sha, repo_id, path, content, size, license, stars,"
                        " commit_sha) VALUES(?,?,?,?,?,?,?,?)",
                        (sha, repo.id, f.path, f.text, len(f.data), repo.license, repo.stars,
                         commit_sha))
                    new += 1
                elif repo.stars > row[0]:  # keep the most-starred origin
                    self.db.execute(
                        "UPDATE files SET repo_id=?, path=?, license=?, stars=?, commit_sha=?"
                        " WHERE sha=?", (repo.id, f.path, repo.license, repo.stars,
                                         commit_sha, sha))
            has_files = self.db.execute("SELECT 1 FROM occurrences WHERE repo_id=? LIMIT 1",
                                        (repo.id,)).fetchone()
            self.db.execute(
                "UPDATE repos SET status=?, commit_sha=?, last_error=NULL, updated_at=?"
                " WHERE id=?", (DONE if has_files else SKIPPED, commit_sha, time.time(),
                                repo.id))
        return new

    def known_shas(self, shas: Iterable[str]) -> set[str]:
        """Which of these blob SHAs the store already holds."""
        out: set[str] = set()
        for sha in shas:
            if self.db.execute("SELECT 1 FROM files WHERE sha=?", (sha,)).fetchone():
                out.add(sha)
        return out

    def repos_to_fetch(self, max_attempts: int) -> list[RepoRow]:
        """Pending repositories and failed ones with attempts left, most-starred first
        (so exact dedup mostly keeps the first origin it sees)."""
        rows = self.db.execute(
            "SELECT id, name, source, stars, license, status, attempts, commit_sha,"
            " default_branch FROM repos WHERE source='github' AND (status=? OR"
            " (status=? AND attempts < ?)) ORDER BY stars DESC, id",
            (PENDING, FAILED, max_attempts))
        return [RepoRow(*r) for r in rows]

    def count_repos(self, source: str) -> int:
        return self.db.execute("SELECT count(*) FROM repos WHERE source=?",
                               (source,)).fetchone()[0]

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- discovery slices and ETags ----------------------------------------------------

    def slice(self, query: str) -> tuple | None:
        return self.db.execute("SELECT query, start, end, total, status, next_url, incomplete"
                               " FROM slices WHERE query=?", (query,)).fetchone()

    def save_slice(self, query: str, start: str, end: str, total: int | None, status: str,
                   next_url: str | None, incomplete: bool = False) -> None:
        self.db.execute(
            "INSERT INTO slices VALUES(?,?,?,?,?,?,?) ON CONFLICT(query) DO UPDATE SET"
            " total=excluded.total, status=excluded.status, next_url=excluded.next_url,"
            " incomplete=max(slices.incomplete, excluded.incomplete)",
            (query, start, end, total, status, next_url, int(incomplete)))

    def etag(self, url: str) -> CachedPage | None:
        row = self.db.execute("SELECT etag, link, body FROM etags WHERE url=?",
                              (url,)).fetchone()
        if row is None:
            return None
        try:
            body = zlib.decompress(row[2])
        except zlib.error:
            self.db.execute("DELETE FROM etags WHERE url=?", (url,))
            if self._etag_bytes is not None:
                self._etag_bytes -= len(row[2])
            return None
        self.db.execute("UPDATE etags SET used=? WHERE url=?", (time.time(), url))
        return CachedPage(row[0], row[1] or "", body)

    def save_etag(self, url: str, etag: str, body: bytes, link: str = "") -> None:
        """Remember a page for conditional requests; the cache keeps at most
        ETAG_CACHE_BYTES (compressed), dropping the least recently used pages first. The
        total is summed once per store and then kept up to date, not summed per page."""
        data = zlib.compress(body, 6)
        if self._etag_bytes is None:
            self._etag_bytes = self.db.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM etags").fetchone()[0]
        old = self.db.execute("SELECT length(body) FROM etags WHERE url=?", (url,)).fetchone()
        self._etag_bytes -= old[0] if old else 0
        if len(data) > ETAG_CACHE_BYTES // 8:
            self.db.execute("DELETE FROM etags WHERE url=?", (url,))
            return
        self.db.execute("INSERT OR REPLACE INTO etags VALUES(?,?,?,?,?)",
                        (url, etag, link or None, data, time.time()))
        self._etag_bytes += len(data)
        while self._etag_bytes > ETAG_CACHE_BYTES:
            rows = self.db.execute("SELECT url, length(body) FROM etags ORDER BY used LIMIT 64"
                                   ).fetchall()
            if not rows:                  # another process emptied it: start the count anew
                self._etag_bytes = 0
                break
            self.db.executemany("DELETE FROM etags WHERE url=?", [(r[0],) for r in rows])
            self._etag_bytes -= sum(r[1] for r in rows)

    # -- reading the corpus ------------------------------------------------------------

    def iter_files(self, include_near_dups: bool = False) -> Iterator[FileRow]:
        """Unique files in a stable order (repo, path)."""
        where = "" if include_near_dups else " WHERE f.near_dup_of IS NULL"
        yield from (FileRow(*r) for r in self.db.execute(
            "SELECT f.sha, r.name, f.path, f.content, f.license, f.stars, f.commit_sha"
            " FROM files f JOIN repos r ON r.id = f.repo_id" + where +
            " ORDER BY r.name, f.path"))

    def set_near_dups(self, pairs: Iterable[tuple[str, str | None]]) -> None:
        with self.transaction():
            self.db.execute("UPDATE files SET near_dup_of=NULL")
            self.db.executemany("UPDATE files SET near_dup_of=? WHERE sha=?",
                                [(kept, sha) for sha, kept in pairs])

    def stats(self) -> dict:
        q = self.db.execute

        def scalar(sql: str) -> int:
            return q(sql).fetchone()[0] or 0

        return {
            "repos": dict(q("SELECT status, count(*) FROM repos GROUP BY status").fetchall()),
            "files": scalar("SELECT count(*) FROM files"),
            "bytes": scalar("SELECT sum(size) FROM files"),
            "duplicates_dropped": scalar("SELECT count(*) FROM occurrences")
            - scalar("SELECT count(*) FROM files"),
            "near_duplicates": scalar("SELECT count(*) FROM files WHERE near_dup_of IS NOT NULL"),
            "licenses": dict(q("SELECT license, count(*) FROM files GROUP BY license"
                               " ORDER BY count(*) DESC").fetchall()),
            "rejections": dict(q("SELECT reason, count(*) FROM rejections GROUP BY reason"
                                 " ORDER BY count(*) DESC").fetchall()),
            "slices": dict(q("SELECT status, count(*) FROM slices GROUP BY status").fetchall()),
            "incomplete_slices": scalar("SELECT count(*) FROM slices WHERE incomplete"),
        }


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
