"""The GitHub source against a real local HTTP server imitating the API (tests/fake_github)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from scraper.client import GitHubClient, Unprocessable, parse_link_header
from scraper.github import month_slices, run_github
from scraper.store import CorpusStore
from tests.fake_github import FakeClock, FakeGitHub, FakeRepo, Limits, python_file, standard_world

ROOT = Path(__file__).resolve().parents[1]
TODAY = date(2016, 4, 30)
SECRET = "ghp_SECRETtoken1234567890abcdefABCDEF"


def args(db: Path, api: str, **kw) -> argparse.Namespace:
    base = dict(db=db, api_url=api, min_stars=100, since="2016-01", until="2016-03",
                max_repos=None, license=None, token_file=None, max_tarball_mb=200.0,
                refresh=False, min_interval=0.0, verbose=True)
    return argparse.Namespace(**(base | kw))


@pytest.fixture
def world():
    clock = FakeClock()
    gh = FakeGitHub(standard_world(), clock=clock).start()
    yield gh, clock
    gh.stop()


def crawl(gh, clock, db: Path, **kw) -> dict:
    with CorpusStore(db) as store:
        assert run_github(store, args(db, gh.url, **kw), clock=clock, today=TODAY) == 0
        return snapshot(store)


def snapshot(store: CorpusStore) -> dict:
    files = {(f.repo, f.path, f.sha) for f in store.iter_files(include_near_dups=True)}
    repos = {r.name: r.status for r in store.repos()}
    return {"files": files, "repos": repos, "stats": store.stats()}


def test_full_crawl_filters_and_records_everything(world, tmp_path, monkeypatch):
    gh, clock = world
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    snap = crawl(gh, clock, tmp_path / "c.sqlite")
    repos = snap["repos"]
    assert "someone/big-fork" not in repos and "acme/lowstars" not in repos
    assert repos["acme/big"] == "done" and repos["acme/small"] == "done"
    assert repos["acme/deep"] == "done"                  # truncated tree walked
    assert repos["acme/docs-only"] == "skipped" and repos["acme/empty"] == "skipped"
    assert repos["acme/deleted"] == "gone" and repos["acme/blocked"] == "gone"
    paths = {(r, p) for r, p, _ in snap["files"]}
    assert {("acme/big", p) for p in ("pkg/__init__.py", "pkg/core.py", "pkg/util.py",
                                      "pkg/shared.py", "pkg/latin.py")} <= paths
    assert ("acme/small", "shared_copy.py") not in paths      # dedup: most-starred origin
    assert len([p for r, p in paths if r == "acme/deep"]) == 6
    assert not any(p.endswith(("link.py", "bad.py", "huge.py", "tiny.py", "gen_pb2.py"))
                   for _, p in paths)
    stats = snap["stats"]
    assert stats["duplicates_dropped"] == 1
    assert stats["rejections"] == {"too_small": 1, "too_large": 1, "encoding": 1,
                                   "generated": 1}
    assert stats["licenses"] == {"MIT": 11, "Apache-2.0": 1}
    # The tarball went through the redirect, to the same host; blobs for the small repo.
    paths_hit = [e["path"] for e in gh.log]
    assert any(p.startswith("/_codeload/acme/big/") for p in paths_hit)
    assert any(p.startswith("/repos/acme/small/git/blobs/") for p in paths_hit)
    # Commit recorded from the tarball's pax header.
    with CorpusStore(tmp_path / "c.sqlite") as store:
        big = [f for f in store.iter_files() if f.repo == "acme/big"]
    assert {f.commit_sha for f in big} == {gh.repos["acme/big"].commit}


def test_slices_bisect_and_stop_at_the_search_cap(tmp_path):
    clock = FakeClock()
    gh = FakeGitHub(standard_world(filler_day_repos=1100), clock=clock).start()
    try:
        snap = crawl(gh, clock, tmp_path / "c.sqlite")
    finally:
        gh.stop()
    fillers = [r for r in snap["repos"] if r.startswith("filler/")]
    assert len(fillers) == 1000                  # the API lists no more than 1,000
    slices = snap["stats"]["slices"]
    assert slices["split"] >= 4                  # March bisected down to the 15th
    assert snap["stats"]["incomplete_slices"] == 1
    queries = [e["query"] for e in gh.log if e["path"] == "/search/repositories"]
    assert any("created%3A2016-03-15..2016-03-15" in q for q in queries)


def test_faults_are_retried_and_waits_use_the_clock(world, tmp_path):
    gh, clock = world
    clean = crawl(gh, FakeClock(), tmp_path / "clean.sqlite")
    gh.inject(r"^/search/", "secondary", "malformed", "500")
    gh.inject(r"/acme/big/git/trees", "secondary-no-retry", "429", "502")
    gh.inject(r"/acme/small/git/blobs", "primary")
    gh.inject(r"/_codeload/", "500")
    t0 = clock.time()
    faulty = crawl(gh, clock, tmp_path / "faulty.sqlite")
    assert faulty["files"] == clean["files"] and faulty["repos"] == clean["repos"]
    waited = clock.time() - t0
    # retry-after 60 + secondary without retry-after (>= 60) + 429 retry-after 30
    # + the primary limit's reset (600 s ahead) + backoffs
    assert 60 + 60 + 30 + 600 <= waited < 3600


def test_forbidden_and_persistent_5xx_are_recorded_not_fatal(world, tmp_path):
    gh, clock = world
    gh.inject(r"/acme/small/git/trees", "forbidden")
    gh.inject(r"/acme/deep/git/trees", *["500"] * 7)     # the client tries 7 times
    snap = crawl(gh, clock, tmp_path / "c.sqlite")
    assert snap["repos"]["acme/small"] == "gone"
    assert snap["repos"]["acme/deep"] == "failed"
    with CorpusStore(tmp_path / "c.sqlite") as store:
        row = store.db.execute("SELECT attempts, last_error FROM repos WHERE name=?",
                               ("acme/deep",)).fetchone()
    assert row[0] == 1 and "500" in row[1] and "gave up" in row[1]
    # The next run retries the failed repository and completes it.
    snap = crawl(gh, clock, tmp_path / "c.sqlite")
    assert snap["repos"]["acme/deep"] == "done"


def test_budget_exhaustion_waits_for_the_reset(tmp_path, monkeypatch):
    clock = FakeClock()
    gh = FakeGitHub(standard_world(), clock=clock, limits=Limits(core=5, search=2)).start()
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    try:
        t0 = clock.time()
        snap = crawl(gh, clock, tmp_path / "c.sqlite")
    finally:
        gh.stop()
    assert snap["repos"]["acme/big"] == "done"
    assert clock.time() - t0 >= 3600                  # waited at least one core reset
    # The client watches x-ratelimit-remaining and waits *before* the budget is spent:
    # no request is wasted on a 403.
    core = [e for e in gh.log if e["path"].startswith("/repos/")]
    assert len(core) > 5 and not [e for e in gh.log if e["status"] == 403]


def test_identities_share_budgets_by_account(world, tmp_path):
    gh, clock = world
    gh.logins = {"tok-a1": "alice", "tok-a2": "alice", "tok-b": "bob"}
    client = GitHubClient(gh.url, ["tok-a1", "tok-a2", "tok-b"], clock=clock)
    client.resolve_identities()
    assert [i.name for i in client.identities] == ["alice", "bob"]


def test_etags_make_a_recrawl_free(world, tmp_path):
    gh, clock = world
    db = tmp_path / "c.sqlite"
    first = crawl(gh, clock, db)
    n = len(gh.log)
    again = crawl(gh, clock, db, refresh=True)
    assert again["files"] == first["files"]
    recrawl = gh.log[n:]
    conditional = [e for e in recrawl if "If-None-Match" in e["headers"]]
    assert conditional and len(conditional) >= len(recrawl) // 2
    assert not any(e["path"].startswith("/_codeload/") for e in recrawl)


def test_unauthenticated_mode_works(world, tmp_path, monkeypatch):
    gh, clock = world
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKENS", raising=False)
    snap = crawl(gh, clock, tmp_path / "c.sqlite")
    assert snap["repos"]["acme/big"] == "done"
    assert all(e["token"] is None for e in gh.log)


def test_token_never_reaches_logs_errors_or_the_database(world, tmp_path, monkeypatch):
    gh, clock = world
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(f"# my token\n{SECRET}\n")
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    gh.inject(r"/acme/small/git/trees", "forbidden")
    gh.inject(r"/acme/deep/git/trees", *["500"] * 20)
    gh.inject(r"^/search/", "secondary")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        crawl(gh, clock, tmp_path / "c.sqlite", token_file=token_file)
        # An error path that formats a URL: the client's own messages.
        client = GitHubClient(gh.url, [SECRET], clock=clock)
        with pytest.raises(Unprocessable) as exc:
            client.get_json("/search/repositories", {"q": "x", "page": "11",
                                                     "per_page": "100"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert any(e["token"] == SECRET for e in gh.log)        # it was really used...
    assert SECRET not in stream.getvalue()                  # ...and never logged
    assert "secondary" in stream.getvalue().lower() or "rate" in stream.getvalue().lower()
    assert SECRET not in str(exc.value)
    for f in tmp_path.glob("c.sqlite*"):
        assert SECRET.encode() not in f.read_bytes(), f
    rows = sqlite3.connect(tmp_path / "c.sqlite").execute(
        "SELECT * FROM repos UNION ALL SELECT url, etag, 0, 0, 0, 0, 0, 0, 0, 0, 0"
        " FROM etags").fetchall()
    assert SECRET not in repr(rows)


def test_link_header_and_month_slices():
    links = parse_link_header('<https://x/s?page=2>; rel="next", <https://x/s?page=9>; '
                              'rel="last"')
    assert links == {"next": "https://x/s?page=2", "last": "https://x/s?page=9"}
    assert month_slices("2015-11", "2016-02") == [
        (date(2015, 11, 1), date(2015, 11, 30)), (date(2015, 12, 1), date(2015, 12, 31)),
        (date(2016, 1, 1), date(2016, 1, 31)), (date(2016, 2, 1), date(2016, 2, 29))]
    with pytest.raises(ValueError, match="2015-01"):
        month_slices("last year", None)


def _cli(db: Path, api: str) -> list[str]:
    # --min-interval makes the crawl last a few seconds, so random kills land inside it.
    return [sys.executable, "-m", "scraper", "github", "--db", str(db), "--api-url", api,
            "--since", "2016-01", "--until", "2016-03", "--min-stars", "100",
            "--min-interval", "0.01"]


def _big_world() -> list[FakeRepo]:
    repos = standard_world()
    for i in range(150):
        repos.append(FakeRepo(f"many/r{i:03d}", 100 + i, date(2016, 1 + i % 3, 1 + i % 28),
                              {f"m{j}.py": python_file(5000 + i * 10 + j) for j in range(4)}
                              | {"common.py": python_file(42)}))
    return repos


def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    gh = FakeGitHub(_big_world()).start()
    env = dict(os.environ, GITHUB_TOKEN=SECRET, PYTHONPATH=str(ROOT))
    try:
        ref = tmp_path / "ref.sqlite"
        t0 = time.monotonic()
        subprocess.run(_cli(ref, gh.url), env=env, cwd=ROOT, check=True, capture_output=True,
                       timeout=300)
        whole = time.monotonic() - t0
        db = tmp_path / "killed.sqlite"
        rng = random.Random(7)
        kills = 0
        # Kill points are shares of the uninterrupted crawl's own time (a busy machine makes
        # both slower; fixed seconds killed every try before it got anywhere), growing a
        # little each try so that the crawl finishes in the end.
        for attempt in range(30):
            proc = subprocess.Popen(_cli(db, gh.url), env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=rng.uniform(0.2, 0.8) * whole * 1.1 ** attempt)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0
            break
        else:
            pytest.fail("the crawl never finished")
        assert kills >= 2
        with CorpusStore(ref) as a, CorpusStore(db) as b:
            sa, sb = snapshot(a), snapshot(b)
            assert sa["files"] == sb["files"] and sa["repos"] == sb["repos"]
            assert sa["stats"]["duplicates_dropped"] == sb["stats"]["duplicates_dropped"]
            dup = b.db.execute("SELECT count(*) - count(DISTINCT sha) FROM files").fetchone()
            assert dup[0] == 0
    finally:
        gh.stop()


def test_cli_rejects_bad_arguments_clearly(tmp_path):
    r = subprocess.run([*_cli(tmp_path / "c.sqlite", "http://127.0.0.1:9"),
                        "--token-file", str(tmp_path / "missing.txt")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing.txt" in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "scraper", "github", "--db",
                        str(tmp_path / "c.sqlite"), "--since", "soon"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "2015-01" in r.stdout + r.stderr


def test_refresh_follows_every_page_of_a_slice(tmp_path):
    """A re-crawl answered with 304s still walks page 2 and on (the 304's headers are
    read case-insensitively, and the remembered Link header is the fallback)."""
    clock = FakeClock()
    gh = FakeGitHub(standard_world(filler_day_repos=150), clock=clock).start()
    try:
        db = tmp_path / "c.sqlite"
        first = crawl(gh, clock, db)
        n = len(gh.log)
        again = crawl(gh, clock, db, refresh=True)
    finally:
        gh.stop()
    assert again["repos"] == first["repos"]
    searches = [e for e in gh.log[n:] if e["path"] == "/search/repositories"]
    assert any("page=2" in e["query"] for e in searches)
    assert all(e["status"] == 304 for e in searches)          # and all of them were free


def test_a_token_revoked_mid_crawl_ends_in_one_sentence_and_resumes(world, tmp_path,
                                                                    monkeypatch, capsys):
    gh, clock = world
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    clean = crawl(gh, FakeClock(), tmp_path / "clean.sqlite")
    gh.inject(r"/acme/small/git/trees", "401")
    db = tmp_path / "c.sqlite"
    with CorpusStore(db) as store:
        assert run_github(store, args(db, gh.url), clock=clock, today=TODAY) == 2
        done_before = {r.name for r in store.repos("done")}
    out = capsys.readouterr().out
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "401" in error[0] and "resumes" in error[0]
    assert SECRET not in out and "Traceback" not in out
    assert "acme/big" in done_before                          # work before it is kept
    assert crawl(gh, clock, db)["files"] == clean["files"]   # and the rerun finishes


def test_etag_cache_is_compressed_bounded_and_keeps_the_link(tmp_path, monkeypatch):
    from scraper import store as store_module
    monkeypatch.setattr(store_module, "ETAG_CACHE_BYTES", 64 * 1024)
    db = tmp_path / "c.sqlite"
    with CorpusStore(db) as store:
        body = json.dumps({"tree": [{"path": f"f{i}.py"} for i in range(2000)]}).encode()
        store.save_etag("u0", '"e0"', body, '<x?page=2>; rel="next"')
        got = store.etag("u0")
        assert (got.etag, got.body, got.link) == ('"e0"', body, '<x?page=2>; rel="next"')
        stored = store.db.execute("SELECT length(body) FROM etags").fetchone()[0]
        assert stored < len(body) / 5                          # compressed
        for i in range(1, 200):                                # far more than the bound
            store.save_etag(f"u{i}", f'"e{i}"', os.urandom(2000))
        total = store.db.execute("SELECT sum(length(body)) FROM etags").fetchone()[0]
        assert total <= 64 * 1024
        assert store.etag("u199") is not None and store.etag("u1") is None   # oldest out
        store.save_etag("huge", '"h"', os.urandom(64 * 1024))  # alone over an 8th: not kept
        assert store.etag("huge") is None


def test_an_old_etag_table_is_replaced(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE etags (url TEXT PRIMARY KEY, etag TEXT NOT NULL, "
                "body BLOB NOT NULL)")
    con.execute("INSERT INTO etags VALUES('u', 'e', x'00')")
    con.commit()
    con.close()
    with CorpusStore(db) as store:
        assert store.etag("u") is None
        store.save_etag("u", "e2", b"{}")
        assert store.etag("u").body == b"{}"
