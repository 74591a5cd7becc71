"""A real HTTP server on 127.0.0.1 that imitates the parts of the GitHub REST API the
scraper uses, with GitHub's limits and failure modes, for tests and `benchmarks/scrape.py`.

Imitated: `/user`, `/search/repositories` (qualifiers `created:A..B` and `stars:>=N`,
`total_count`, `incomplete_results`, `Link` pagination, 422 past the 1,000th result),
`/repos/O/R/git/trees/REF?recursive=1` (with `truncated`), `/repos/O/R/git/trees/SHA`,
`/repos/O/R/git/blobs/SHA`, `/repos/O/R/tarball/REF` (302 to a codeload-like URL on the
same host, a gzipped tar with a pax commit header, symlink members), ETags and 304s,
per-token rate-limit headers (core and search budgets with resets), and injectable
faults: 5xx, malformed JSON, 403 secondary limits with and without `retry-after`, 429,
403 primary limits, plain 403, 401 (a revoked token), 404 and 451 repositories.

The clock is shared with the client in tests (`FakeClock`), so an hour of rate-limit
waiting costs no real time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeClock:
    """Time that only moves when someone sleeps (or a request costs simulated latency)."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start
        self.slept = 0.0
        self.lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)
            self.slept += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    full_name: str
    stars: int
    created: date
    files: dict[str, bytes] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    submodules: list[str] = field(default_factory=list)
    license: str | None = "MIT"
    fork: bool = False
    status: int = 200           # 404 / 451 make the repo's endpoints answer that
    truncated: bool = False     # the recursive tree answer is truncated
    empty: bool = False         # 409 on the tree
    branch: str = "main"

    @property
    def commit(self) -> str:
        return hashlib.sha1(f"commit:{self.full_name}".encode()).hexdigest()

    def search_item(self) -> dict:
        return {"full_name": self.full_name, "stargazers_count": self.stars,
                "fork": self.fork, "default_branch": self.branch,
                "created_at": f"{self.created.isoformat()}T12:00:00Z",
                "license": {"spdx_id": self.license} if self.license else None}


def _dir_sha(repo: FakeRepo, folder: str) -> str:
    return hashlib.sha1(f"tree:{repo.full_name}:{folder}".encode()).hexdigest()


@dataclass
class Limits:
    core: int = 5000
    core_window: float = 3600.0
    search: int = 30
    search_window: float = 60.0


ANON_LIMITS = Limits(core=60, search=10)


class FakeGitHub:
    """Holds the fake world; `start()` serves it on 127.0.0.1 in a thread."""

    def __init__(self, repos: list[FakeRepo], clock: FakeClock | None = None,
                 limits: Limits | None = None, logins: dict[str, str] | None = None,
                 latency: float = 0.0):
        self.repos = {r.full_name: r for r in repos}
        self.clock = clock or _RealTime()
        self.limits = limits or Limits()
        self.logins = logins or {}
        self.latency = latency          # simulated seconds each request costs
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.log: list[dict] = []
        self.used: dict[tuple[str, str], tuple[float, int]] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- test controls -----------------------------------------------------------------

    def inject(self, path_regex: str, *faults: str) -> None:
        """Answer the next requests whose path matches with these faults, in order:
        500, 502, malformed, secondary, secondary-no-retry, 429, primary, forbidden."""
        self.faults[path_regex].extend(faults)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeGitHub:
        world = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                world.handle(self)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- request handling --------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, parse_qs(parts.query)
        auth = h.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").removeprefix("token ").strip() or None
        entry = {"path": path, "query": parts.query, "token": token,
                 "headers": dict(h.headers), "status": None}
        h.log_entry = entry  # type: ignore[attr-defined]
        with self.lock:
            self.log.append(entry)
            if self.latency:
                self.clock.advance(self.latency)
        if path.startswith("/_codeload/"):
            return self._codeload(h, path)
        resource = "search" if path.startswith("/search/") else "core"
        identity = self.logins.get(token, token) if token else f"ip:{h.client_address[0]}"
        fault = self._take_fault(path)
        limit_headers, exhausted = self._spend(identity, resource, bool(token),
                                               conditional=bool(h.headers.get("If-None-Match")))
        if fault:
            return self._fault(h, fault, limit_headers)
        if exhausted:
            return self._send(h, 403, {"message": "API rate limit exceeded for user."},
                              limit_headers)
        try:
            status, body, extra = self._route(path, query, token)
        except KeyError:
            status, body, extra = 404, {"message": "Not Found"}, {}
        headers = dict(limit_headers, **extra)
        if status == 200 and isinstance(body, (dict, list)):
            raw = json.dumps(body).encode()
            etag = '"' + hashlib.md5(raw).hexdigest() + '"'
            headers["ETag"] = etag
            if h.headers.get("If-None-Match") == etag:
                self._refund(identity, resource)
                return self._send_raw(h, 304, b"", headers, None)
            return self._send_raw(h, 200, raw, headers, "application/json")
        if status in (301, 302):
            return self._send_raw(h, status, b"", headers, None)
        if isinstance(body, bytes):
            return self._send_raw(h, status, body, headers, "application/octet-stream")
        return self._send(h, status, body, headers)

    def _route(self, path: str, query: dict, token: str | None
               ) -> tuple[int, object, dict]:
        if path == "/user":
            if token is None:
                return 401, {"message": "Requires authentication"}, {}
            login = self.logins.get(token) or "user-" + hashlib.sha1(token.encode()).hexdigest()[:8]
            return 200, {"login": login}, {}
        if path == "/search/repositories":
            return self._search(query)
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)/(.+)", path)
        if not m:
            raise KeyError(path)
        repo = self.repos[m.group(1)]
        if repo.status != 200:
            return repo.status, {"message": "Repository access blocked"
                                 if repo.status == 451 else "Not Found"}, {}
        rest = m.group(2)
        if rest.startswith("git/trees/"):
            ref = rest.removeprefix("git/trees/")
            if repo.empty:
                return 409, {"message": "Git Repository is empty."}, {}
            if "recursive" in query:
                return 200, self._tree(repo), {}
            return 200, self._subtree(repo, ref), {}
        if rest.startswith("git/blobs/"):
            sha = rest.removeprefix("git/blobs/")
            for data in repo.files.values():
                if blob_sha(data) == sha:
                    return 200, data, {}
            raise KeyError(sha)
        if rest.startswith("tarball/"):
            return 302, b"", {"Location": f"{self.url}/_codeload/{repo.full_name}/"
                                          f"legacy.tar.gz/{rest.removeprefix('tarball/')}"}
        raise KeyError(rest)

    def _search(self, query: dict) -> tuple[int, object, dict]:
        q = query.get("q", [""])[0]
        per_page = min(100, int(query.get("per_page", ["30"])[0]))
        page = int(query.get("page", ["1"])[0])
        m = re.search(r"created:(\d{4}-\d\d-\d\d)\.\.(\d{4}-\d\d-\d\d)", q)
        lo, hi = (date.fromisoformat(m.group(1)), date.fromisoformat(m.group(2))) if m \
            else (date.min, date.max)
        s = re.search(r"stars:>=(\d+)", q)
        min_stars = int(s.group(1)) if s else 0
        hits = sorted((r for r in self.repos.values()
                       if lo <= r.created <= hi and r.stars >= min_stars),
                      key=lambda r: (-r.stars, r.full_name))
        if (page - 1) * per_page >= 1000:
            return 422, {"message": "Only the first 1000 search results are available"}, {}
        items = hits[(page - 1) * per_page:page * per_page]
        last = max(1, -(-len(hits) // per_page))
        links = []
        base = f"{self.url}/search/repositories?q={q.replace(' ', '+')}&per_page={per_page}"
        if page < last:
            links.append(f'<{base}&page={page + 1}>; rel="next"')
            links.append(f'<{base}&page={last}>; rel="last"')
        headers = {"Link": ", ".join(links)} if links else {}
        return 200, {"total_count": len(hits), "incomplete_results": False,
                     "items": [r.search_item() for r in items]}, headers

    def _entries(self, repo: FakeRepo) -> list[dict]:
        out, folders = [], set()
        for path, data in repo.files.items():
            out.append({"path": path, "mode": "100644", "type": "blob",
                        "sha": blob_sha(data), "size": len(data)})
            folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
        for path, target in repo.symlinks.items():
            out.append({"path": path, "mode": "120000", "type": "blob",
                        "sha": blob_sha(target.encode()), "size": len(target)})
        for path in repo.submodules:
            out.append({"path": path, "mode": "160000", "type": "commit",
                        "sha": hashlib.sha1(path.encode()).hexdigest()})
        out += [{"path": f, "mode": "040000", "type": "tree", "sha": _dir_sha(repo, f)}
                for f in folders]
        return sorted(out, key=lambda e: e["path"])

    def _tree(self, repo: FakeRepo) -> dict:
        entries = self._entries(repo)
        if repo.truncated:
            entries = entries[:len(entries) // 3]
        return {"sha": _dir_sha(repo, ""), "tree": entries, "truncated": repo.truncated}

    def _subtree(self, repo: FakeRepo, sha: str) -> dict:
        entries = self._entries(repo)
        folders = {_dir_sha(repo, ""): ""} | {
            e["sha"]: e["path"] for e in entries if e["type"] == "tree"}
        folder = folders[sha]
        prefix = folder + "/" if folder else ""
        children = [dict(e, path=e["path"][len(prefix):]) for e in entries
                    if e["path"].startswith(prefix) and "/" not in e["path"][len(prefix):]]
        return {"sha": sha, "tree": children, "truncated": False}

    def tarball(self, repo: FakeRepo) -> bytes:
        top = f"{repo.full_name.replace('/', '-')}-{repo.commit[:7]}/"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                          pax_headers={"comment": repo.commit}) as tar:
            for path, data in sorted(repo.files.items()):
                info = tarfile.TarInfo(top + path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for path, target in repo.symlinks.items():
                info = tarfile.TarInfo(top + path)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
        return gzip.compress(buf.getvalue(), mtime=0)

    def _codeload(self, h: BaseHTTPRequestHandler, path: str) -> None:
        m = re.fullmatch(r"/_codeload/([^/]+/[^/]+)/legacy\.tar\.gz/.*", path)
        repo = self.repos.get(m.group(1)) if m else None
        if repo is None:
            return self._send(h, 404, {"message": "Not Found"}, {})
        fault = self._take_fault(path)
        if fault:
            return self._fault(h, fault, {})
        self._send_raw(h, 200, self.tarball(repo), {}, "application/x-gzip")

    # -- budgets and faults ------------------------------------------------------------

    def _spend(self, identity: str, resource: str, authed: bool, conditional: bool
               ) -> tuple[dict, bool]:
        limits = self.limits if authed else ANON_LIMITS
        limit = limits.search if resource == "search" else limits.core
        window = limits.search_window if resource == "search" else limits.core_window
        now = self.clock.time()
        with self.lock:
            reset, used = self.used.get((identity, resource), (now + window, 0))
            if now >= reset:
                reset, used = now + window, 0
            exhausted = used >= limit
            if not exhausted:
                used += 1
            self.used[(identity, resource)] = (reset, used)
        return ({"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(limit - used),
                 "x-ratelimit-reset": str(int(reset)), "x-ratelimit-used": str(used),
                 "x-ratelimit-resource": resource}, exhausted)

    def _refund(self, identity: str, resource: str) -> None:
        with self.lock:
            reset, used = self.used[(identity, resource)]
            self.used[(identity, resource)] = (reset, max(0, used - 1))

    def _take_fault(self, path: str) -> str | None:
        with self.lock:
            for pattern, queue in self.faults.items():
                if queue and re.search(pattern, path):
                    return queue.pop(0)
        return None

    def _fault(self, h: BaseHTTPRequestHandler, fault: str, limit_headers: dict) -> None:
        if fault in ("500", "502"):
            return self._send(h, int(fault), {"message": "Server Error"}, limit_headers)
        if fault == "malformed":
            return self._send_raw(h, 200, b'{"total_count": 3, "items": [', limit_headers,
                                  "application/json")
        if fault == "secondary":
            return self._send(h, 403, {"message": "You have exceeded a secondary rate limit."},
                              dict(limit_headers, **{"retry-after": "60"}))
        if fault == "secondary-no-retry":
            return self._send(h, 403, {"message": "You have exceeded a secondary rate limit."},
                              limit_headers)
        if fault == "429":
            return self._send(h, 429, {"message": "Too Many Requests"},
                              dict(limit_headers, **{"retry-after": "30"}))
        if fault == "primary":
            reset = str(int(self.clock.time() + 600))
            return self._send(h, 403, {"message": "API rate limit exceeded"},
                              dict(limit_headers, **{"x-ratelimit-remaining": "0",
                                                     "x-ratelimit-reset": reset}))
        if fault == "401":
            return self._send(h, 401, {"message": "Bad credentials"}, limit_headers)
        if fault == "forbidden":
            return self._send(h, 403, {"message": "Resource not accessible by integration"},
                              limit_headers)
        raise ValueError(f"unknown fault {fault}")

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: object, headers: dict
              ) -> None:
        self._send_raw(h, status, json.dumps(body).encode(), headers, "application/json")

    def _send_raw(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict,
                  content_type: str | None) -> None:
        if getattr(h, "log_entry", None) is not None:
            h.log_entry["status"] = status  # type: ignore[attr-defined]
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if content_type:
            h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)


class _RealTime:
    def time(self) -> float:
        import time
        return time.time()

    def advance(self, seconds: float) -> None:
        pass


# -- a standard fake world -----------------------------------------------------------------

def python_file(seed: int, lines: int = 60) -> bytes:
    body = "".join(f"def handler_{seed}_{i}(request, value={i}):\n"
                   f"    result = request.get('key_{i}', value) * {seed % 7 + 1}\n"
                   f"    return result\n\n" for i in range(lines // 4))
    return f'"""Module {seed}."""\n\n{body}'.encode()


def standard_world(filler_day_repos: int = 0) -> list[FakeRepo]:
    """Repositories exercising every path of the fetcher; `filler_day_repos` adds that
    many small repos on one day (more than 1,000 forces bisection down to the day and the
    422 at the search cap)."""
    shared = python_file(999)
    repos = [
        FakeRepo("acme/big", 5000, date(2016, 1, 10), {
            "pkg/__init__.py": python_file(1), "pkg/core.py": python_file(2),
            "pkg/util.py": python_file(3), "pkg/shared.py": shared,
            "pkg/latin.py": b"# -*- coding: latin-1 -*-\n" + python_file(4) + b"s = '\xe9'\n",
            "pkg/bad.py": python_file(5) + b"s = '\xff\xfe'\n",
            "pkg/huge.py": python_file(6, 6000),
            "pkg/tiny.py": b"x = 1\n",
            "pkg/gen_pb2.py": b"# Generated by the protocol buffer compiler.  DO NOT EDIT!\n"
                              + python_file(7),
            "README.md": b"# big\n" * 300},
            symlinks={"pkg/link.py": "core.py"}, submodules=["vendor/lib"]),
        FakeRepo("acme/small", 300, date(2016, 2, 3),
                 {"one.py": python_file(10), "shared_copy.py": shared}, license="Apache-2.0"),
        FakeRepo("acme/deep", 800, date(2016, 2, 20),
                 {f"d{i}/sub/m{i}.py": python_file(20 + i) for i in range(6)}, truncated=True),
        FakeRepo("acme/docs-only", 900, date(2016, 1, 20), {"README.md": b"docs\n" * 500}),
        FakeRepo("acme/empty", 150, date(2016, 2, 1), empty=True),
        FakeRepo("acme/deleted", 700, date(2016, 2, 5), status=404),
        FakeRepo("acme/blocked", 600, date(2016, 1, 5), status=451),
        FakeRepo("someone/big-fork", 4000, date(2016, 1, 11), {"x.py": python_file(30)},
                 fork=True),
        FakeRepo("acme/lowstars", 5, date(2016, 1, 12), {"y.py": python_file(31)}),
    ]
    for i in range(filler_day_repos):
        repos.append(FakeRepo(f"filler/r{i:04d}", 100 + i % 50, date(2016, 3, 15),
                              {"main.py": python_file(1000 + i)} if i % 10 == 0
                              else {"README.md": b"x\n"}))
    return repos
