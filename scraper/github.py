"""The `github` source: discover Python repositories by search, fetch their qualifying files.

Discovery: `language:python stars:>=N fork:false created:A..B` over monthly slices; a
slice reporting more than 1,000 results (the search API's cap) is bisected by date until
each part fits. Pages follow the `Link` header; every page's repositories and the next
page URL are saved, so a killed crawl resumes mid-slice.

Fetching, per repository (most-starred first): the recursive git tree (paths, sizes and
blob SHAs in one request; truncated trees are walked subtree by subtree); repositories
with no `.py` blob in the size range are marked skipped without downloading anything;
blobs the store already holds are not downloaded again. The rest come from one streamed,
size-capped tarball, or from individual blob requests when that costs fewer requests.
Symlinks (mode 120000) and submodules (type commit) are skipped; SHAs are recomputed from
the downloaded bytes.
"""

from __future__ import annotations

import argparse
import calendar
import logging
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from scraper.client import (
    Empty,
    Forbidden,
    GitHubClient,
    GitHubError,
    Gone,
    TransientError,
    Unprocessable,
)
from scraper.filters import DEFAULT_FILTERS, FilterConfig, check_file
from scraper.store import DONE, FAILED, GONE, Accepted, CorpusStore, RepoRow

log = logging.getLogger("scraper.github")
SEARCH_CAP = 1000
PER_PAGE = 100
MAX_ATTEMPTS = 3
MAX_SUBTREE_REQUESTS = 100


@dataclass
class FetchConfig:
    filters: FilterConfig = DEFAULT_FILTERS
    max_tarball_bytes: int = 200 * 2**20
    blob_fallback_limit: int = 30     # blobs to fetch one by one when a tarball is too big


# -- discovery -----------------------------------------------------------------------------

def month_slices(since: str, until: str | None, today: date | None = None
                 ) -> list[tuple[date, date]]:
    """Calendar months from `since` (YYYY-MM) through `until` (default: this month)."""
    try:
        y, m = map(int, since.split("-")[:2])
        end = today or date.today()
        if until:
            uy, um = map(int, until.split("-")[:2])
            end = date(uy, um, calendar.monthrange(uy, um)[1])
    except ValueError:
        raise ValueError(f"--since/--until must look like 2015-01, got {since!r}/{until!r}."
                         ) from None
    out = []
    while date(y, m, 1) <= end:
        last = date(y, m, calendar.monthrange(y, m)[1])
        out.append((date(y, m, 1), min(last, end)))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def search_query(min_stars: int, start: date, end: date) -> str:
    return (f"language:python stars:>={min_stars} fork:false "
            f"created:{start.isoformat()}..{end.isoformat()}")


def discover(client: GitHubClient, store: CorpusStore, min_stars: int,
             slices: list[tuple[date, date]], max_repos: int | None = None,
             licenses: set[str] | None = None,
             progress: Callable[[str], None] | None = None) -> None:
    stack = list(reversed(slices))
    while stack:
        if max_repos is not None and store.count_repos("github") >= max_repos:
            return
        start, end = stack.pop()
        q = search_query(min_stars, start, end)
        row = store.slice(q)
        status = row[4] if row else "pending"
        if status == "split":
            stack.extend(reversed(_halves(start, end)))
            continue
        if status == "done":
            continue
        url = row[5] if row and row[5] else "/search/repositories"
        params = None if row and row[5] else {"q": q, "per_page": PER_PAGE}
        first = not (row and row[5])
        try:
            for page, nxt in client.paginate(url, params):
                total = int(page.get("total_count", 0))
                if first and total > SEARCH_CAP and start < end:
                    store.save_slice(q, start.isoformat(), end.isoformat(), total, "split", None)
                    stack.extend(reversed(_halves(start, end)))
                    log.debug("%s: %d results, bisecting", q, total)
                    break
                first = False
                with store.transaction():
                    for item in page.get("items", []):
                        _add_repo(store, item, licenses)
                    store.save_slice(q, start.isoformat(), end.isoformat(), total,
                                     "partial" if nxt else "done", nxt,
                                     bool(page.get("incomplete_results")))
                if page.get("incomplete_results"):
                    log.warning("search reported incomplete_results for %s", q)
                if max_repos is not None and store.count_repos("github") >= max_repos:
                    return
        except Unprocessable:
            # Past the 1,000th result of a one-day slice: nothing more can be listed.
            store.save_slice(q, start.isoformat(), end.isoformat(), None, "done", None, True)
            log.warning("%s: search stopped at its 1,000-result cap", q)
        except TransientError as e:
            log.warning("%s: %s; the slice will be retried on the next run", q, e)
        if progress:
            progress(q)


def _halves(start: date, end: date) -> list[tuple[date, date]]:
    mid = start + timedelta(days=(end - start).days // 2)
    return [(start, mid), (mid + timedelta(days=1), end)]


def _add_repo(store: CorpusStore, item: dict, licenses: set[str] | None) -> None:
    if item.get("fork") or not item.get("full_name"):
        return
    spdx = ((item.get("license") or {}).get("spdx_id") or "unknown")
    if spdx == "NOASSERTION":
        spdx = "unknown"
    if licenses and spdx.lower() not in licenses:
        return
    store.upsert_repo(item["full_name"], "github", int(item.get("stargazers_count", 0)),
                      spdx, item.get("default_branch") or "HEAD")


# -- fetching ------------------------------------------------------------------------------

def tree_entries(client: GitHubClient, repo: RepoRow) -> tuple[list[dict], bool]:
    """All blob/commit entries of the default branch, and whether the answer was the
    remembered one (304: unchanged since the last crawl)."""
    ref = repo.default_branch or "HEAD"
    resp = client.get(f"/repos/{repo.name}/git/trees/{ref}", params={"recursive": "1"},
                      expect_json=True)
    tree = resp.json()
    if not tree.get("truncated"):
        return tree.get("tree", []), resp.from_cache
    log.info("%s: tree truncated, walking subtrees", repo.name)
    entries: list[dict] = []
    queue = [("", tree["sha"])]
    requests = 0
    while queue and requests < MAX_SUBTREE_REQUESTS:
        prefix, sha = queue.pop(0)
        sub = client.get_json(f"/repos/{repo.name}/git/trees/{sha}")
        requests += 1
        for e in sub.get("tree", []):
            e = dict(e, path=prefix + e["path"])
            if e.get("type") == "tree":
                queue.append((e["path"] + "/", e["sha"]))
            else:
                entries.append(e)
    if queue:
        log.warning("%s: tree too large; %d folders left unread", repo.name, len(queue))
    return entries, False


def select_blobs(entries: list[dict], filters: FilterConfig
                 ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """({path: sha} of .py blobs in the size range, [(path, reason)] rejected by size).
    Symlinks (mode 120000) and submodules (type commit) never qualify."""
    wanted, rejected = {}, []
    for e in entries:
        path = e.get("path", "")
        if e.get("type") != "blob" or e.get("mode") == "120000" or not path.endswith(".py"):
            continue
        size = int(e.get("size", 0))
        if size < filters.min_bytes:
            rejected.append((path, "too_small"))
        elif size > filters.max_bytes:
            rejected.append((path, "too_large"))
        else:
            wanted[path] = e["sha"]
    return wanted, rejected


def download_tarball(client: GitHubClient, repo: RepoRow, wanted: set[str], cap: int
                     ) -> tuple[dict[str, bytes], str | None] | None:
    """{path: bytes} of the wanted regular files and the commit SHA (from the archive's
    pax header), or None when the archive exceeds `cap` bytes."""
    ref = repo.default_branch or "HEAD"
    resp = client.get(f"/repos/{repo.name}/tarball/{ref}", stream=True, use_etag=False)
    with tempfile.SpooledTemporaryFile(max_size=32 * 2**20) as spool:
        size = 0
        for chunk in resp.iter_body():  # type: ignore[attr-defined]
            size += len(chunk)
            if size > cap:
                log.info("%s: tarball over %d MB, falling back to blobs", repo.name,
                         cap // 2**20)
                return None
            spool.write(chunk)
        spool.seek(0)
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=spool, mode="r:*") as tar:
                commit = tar.pax_headers.get("comment")
                for member in tar:
                    if not member.isfile():      # symlinks, folders, devices
                        continue
                    path = member.name.split("/", 1)[1] if "/" in member.name else member.name
                    if path in wanted:
                        f = tar.extractfile(member)
                        if f is not None:
                            out[path] = f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise TransientError(f"{repo.name}: tarball is corrupt ({type(e).__name__})"
                                 ) from None
    return out, commit


def download_blobs(client: GitHubClient, repo: RepoRow, wanted: dict[str, str]
                   ) -> dict[str, bytes]:
    out = {}
    for path, sha in wanted.items():
        resp = client.get(f"/repos/{repo.name}/git/blobs/{sha}",
                          accept="application/vnd.github.raw+json", use_etag=False)
        out[path] = resp.body
    return out


def fetch_repo(client: GitHubClient, store: CorpusStore, repo: RepoRow,
               config: FetchConfig, refresh: bool = False) -> int:
    """Fetch one repository into the store; returns the number of new files. Errors that
    concern only this repository are recorded on it, never raised."""
    try:
        try:
            entries, unchanged = tree_entries(client, repo)
        except Empty:
            store.finish_repo(repo, None, [], [])
            return 0
        if refresh and unchanged and repo.status == DONE:
            return 0
        wanted, rejected = select_blobs(entries, config.filters)
        known = store.known_shas(wanted.values())
        need = {p: s for p, s in wanted.items() if s not in known}
        known_pairs = [(p, s) for p, s in wanted.items() if s in known]
        commit = None
        data: dict[str, bytes] = {}
        if len(need) > 2:            # one tarball beats three or more blob requests
            got = download_tarball(client, repo, set(need), config.max_tarball_bytes)
            if got is None:
                limited = dict(list(need.items())[:config.blob_fallback_limit])
                data = download_blobs(client, repo, limited)
            else:
                data, commit = got
        elif need:
            data = download_blobs(client, repo, need)
        accepted = []
        for path, blob in data.items():
            text, reason = check_file(path, blob, config.filters)
            if text is None:
                rejected.append((path, reason or "unknown"))
            else:
                accepted.append(Accepted(path, blob, text))
        return store.finish_repo(repo, commit, accepted, rejected, known_pairs)
    except (Gone, Forbidden) as e:
        store.mark_repo(repo, GONE, str(e))
        log.info("%s: %s", repo.name, e)
    except TransientError as e:
        store.mark_repo(repo, FAILED, str(e), count_attempt=True)
        log.warning("%s: %s (will retry on the next run)", repo.name, e)
    return 0


# -- the command ---------------------------------------------------------------------------

def crawl(client: GitHubClient, store: CorpusStore, args: argparse.Namespace,
          slices: list, licenses: set[str] | None) -> tuple[int, list]:
    """Discover repositories slice by slice, then fetch each; returns (new files, the
    repositories fetched)."""
    from tqdm import tqdm

    if getattr(args, "refresh", False):
        store.db.execute("UPDATE slices SET status='pending', next_url=NULL"
                         " WHERE status IN ('done', 'partial')")
    bar = tqdm(total=len(slices), unit="slice", desc="discover", disable=None)
    discover(client, store, args.min_stars, slices, args.max_repos, licenses,
             progress=lambda q: bar.update(1) if bar.n < bar.total else None)
    bar.close()
    todo = store.repos_to_fetch(MAX_ATTEMPTS)
    if getattr(args, "refresh", False):
        todo += store.repos(DONE)
    if args.max_repos is not None:
        todo = todo[:args.max_repos]
    config = FetchConfig(max_tarball_bytes=int(args.max_tarball_mb * 2**20))
    fbar = tqdm(total=len(todo), unit="repo", desc="fetch", disable=None)
    new = 0
    for repo in todo:
        new += fetch_repo(client, store, repo, config, refresh=getattr(args, "refresh", False))
        fbar.update(1)
        left = client.remaining("core")
        fbar.set_postfix(files=new, budget="?" if left is None else left)
    fbar.close()
    return new, todo


def run_github(store: CorpusStore, args: argparse.Namespace, clock=None,
               today: date | None = None) -> int:
    from scraper.tokens import TokenError, install_redactor, load_tokens
    try:
        tokens = load_tokens(args.token_file)
        slices = month_slices(args.since, args.until, today)
    except (TokenError, ValueError) as e:
        print(f"error: {e}")
        return 2
    install_redactor(tokens)
    client = GitHubClient(args.api_url, tokens, clock=clock, etags=store,
                          min_interval=getattr(args, "min_interval", 0.0))
    licenses = {x.strip().lower() for x in args.license.split(",")} if args.license else None
    try:
        client.resolve_identities()
    except GitHubError as e:
        print(f"error: {e}")
        return 2
    if not tokens:
        log.warning("no GITHUB_TOKEN: running unauthenticated at 60 requests/hour")
    try:
        new, todo = crawl(client, store, args, slices, licenses)
    except GitHubError as e:
        # Anything a repository's own record cannot absorb (a token revoked mid-crawl: 401)
        # ends the run in one sentence; every repository finished so far is saved.
        print(f"error: {e}; the crawl stopped here and resumes from this point when "
              "rerun.")
        return 2
    print(f"{new:,} new files from {len(todo):,} repositories; {client.requests_made:,} "
          f"requests, {client.waited:,.0f}s waited")
    return 0
