"""Simulated crawl: the scraper against the fake GitHub API with GitHub's real limits.

    python -m benchmarks.scrape [--repos 3000] [--latency 0.25]

The fake API (tests/fake_github.py) enforces 5,000 core requests/hour and 30 searches/
minute per identity on a simulated clock; each request costs `--latency` simulated
seconds. Prints requests per repository, requests per *qualifying* repository (one with
at least one file that enters the corpus; bar: at most 3), and repositories per
simulated hour. One token, so one identity.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from scraper.github import run_github  # noqa: E402
from scraper.store import CorpusStore  # noqa: E402
from tests.fake_github import FakeClock, FakeGitHub, FakeRepo, Limits, python_file  # noqa: E402


def world(n: int, seed: int = 0) -> list[FakeRepo]:
    """A mix like real search results: most repos have several qualifying files, some
    one or two, some none (docs, notebooks), a few are gone."""
    rng = random.Random(seed)
    repos = []
    for i in range(n):
        kind = rng.random()
        created = date(2016 + i % 6, 1 + i % 12, 1 + i % 28)
        if kind < 0.6:
            files = {f"pkg/m{j}.py": python_file(i * 100 + j) for j in range(rng.randint(3, 40))}
        elif kind < 0.8:
            files = {f"m{j}.py": python_file(i * 100 + j) for j in range(rng.randint(1, 2))}
        elif kind < 0.95:
            files = {"README.md": b"notes\n" * 100, "nb.ipynb": b"{}"}
        else:
            files = {"x.py": python_file(i)}
        repos.append(FakeRepo(f"org{i % 37}/repo{i}", rng.randint(100, 20000), created,
                              files | {"README.md": b"readme\n" * 50},
                              status=404 if kind >= 0.95 else 200))
    return repos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repos", type=int, default=3000)
    ap.add_argument("--latency", type=float, default=0.25, help="simulated s per request")
    args = ap.parse_args(argv)
    clock = FakeClock()
    gh = FakeGitHub(world(args.repos), clock=clock, limits=Limits(), latency=args.latency,
                    logins={"bench-token": "bench"}).start()
    import os
    os.environ["GITHUB_TOKEN"] = "bench-token"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.sqlite"
            ns = argparse.Namespace(db=db, api_url=gh.url, min_stars=100, since="2016-01",
                                    until="2021-12", max_repos=None, license=None,
                                    token_file=None, max_tarball_mb=200.0, refresh=False,
                                    min_interval=0.0, verbose=False)
            t0, sim0 = time.time(), clock.time()
            with CorpusStore(db) as store:
                run_github(store, ns, clock=clock, today=date(2022, 1, 1))
                stats = store.stats()
                qualifying = stats["repos"].get("done", 0)
            wall, sim = time.time() - t0, clock.time() - sim0
    finally:
        gh.stop()
    kinds = Counter("search" if e["path"].startswith("/search/") else
                    "codeload (redirect target)" if e["path"].startswith("/_codeload/") else
                    "user" if e["path"] == "/user" else
                    e["path"].split("/")[4] + "/" + e["path"].split("/")[5]
                    if e["path"].startswith("/repos/") else "other" for e in gh.log)
    api = sum(n for k, n in kinds.items() if k != "codeload (redirect target)")
    fetch_api = sum(n for k, n in kinds.items()
                    if k not in ("search", "user", "codeload (redirect target)"))
    fetch = fetch_api + kinds["codeload (redirect target)"]
    print(f"machine: {describe()}")
    print(f"simulated GitHub: 5,000 core requests/h, 30 searches/min, {args.latency}s/request")
    print(f"repositories discovered   {sum(stats['repos'].values()):>8,}")
    print(f"  qualifying (done)       {qualifying:>8,}")
    print(f"  skipped / gone          {stats['repos'].get('skipped', 0):>8,} / "
          f"{stats['repos'].get('gone', 0):,}")
    print(f"files stored              {stats['files']:>8,}")
    for k, n in sorted(kinds.items()):
        print(f"  requests: {k:<26} {n:>6,}")
    print(f"API requests per repository              {api / max(1, args.repos):6.2f}")
    print(f"fetch API requests per qualifying repo   {fetch_api / max(1, qualifying):6.2f}"
          "   (bar: <= 3; rate-limited requests: trees, blobs, tarballs)")
    print(f"  counting codeload redirect hops too    {fetch / max(1, qualifying):6.2f}"
          "   (all trees, including those of repos that turned out empty, / qualifying)")
    print(f"simulated time {sim / 3600:.2f} h -> {args.repos / (sim / 3600):,.0f} "
          f"repositories per simulated hour (wall {wall:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
