"""`python -m scraper {github,local,stats,dedup,export}`: build and inspect a SQLite corpus.

    python -m scraper local /usr/lib/python3.11 --each-subdir --db corpus.sqlite
    python -m scraper github --min-stars 100 --since 2015-01 --db corpus.sqlite
    python -m scraper stats --db corpus.sqlite
    python -m scraper dedup --db corpus.sqlite
    python -m scraper export --db corpus.sqlite --out files.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from scraper.filters import FilterConfig
from scraper.store import CorpusStore, ScrapeLock, StoreError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, required=True, help="the SQLite corpus file")
    p.add_argument("--verbose", "-v", action="store_true", help="log every request/repo")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scraper", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    gh = sub.add_parser("github", help="discover and fetch Python repositories from GitHub")
    _common(gh)
    gh.add_argument("--min-stars", type=int, default=100)
    gh.add_argument("--since", default="2015-01", help="first creation month, YYYY-MM")
    gh.add_argument("--until", default=None, help="last creation month, YYYY-MM (default: now)")
    gh.add_argument("--max-repos", type=int, default=None)
    gh.add_argument("--license", default=None,
                    help="comma-separated SPDX ids to keep, e.g. mit,apache-2.0")
    gh.add_argument("--api-url", default="https://api.github.com")
    gh.add_argument("--token-file", type=Path, default=None,
                    help="file with one token per line (else $GITHUB_TOKEN / $GITHUB_TOKENS)")
    gh.add_argument("--max-tarball-mb", type=float, default=200.0)
    gh.add_argument("--refresh", action="store_true",
                    help="re-check finished slices and repositories (ETags make unchanged "
                         "answers free)")
    gh.add_argument("--min-interval", type=float, default=0.0,
                    help="seconds between requests at least (politeness)")

    lo = sub.add_parser("local", help="add local directories (stdlib, site-packages, ...)")
    _common(lo)
    lo.add_argument("dirs", nargs="+", type=Path)
    lo.add_argument("--each-subdir", action="store_true",
                    help="each subfolder / top-level module is its own repository")
    lo.add_argument("--exclude", action="append", default=[],
                    help="with --each-subdir, a child to leave out (repeatable)")

    st = sub.add_parser("stats", help="print corpus counts")
    _common(st)
    st.add_argument("--json", action="store_true")

    dd = sub.add_parser("dedup", help="mark near-duplicates (MinHash, Jaccard >= 0.85)")
    _common(dd)
    dd.add_argument("--threshold", type=float, default=0.85)

    ex = sub.add_parser("export", help="write the corpus as .jsonl or .parquet")
    _common(ex)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--include-near-dups", action="store_true")
    return ap


# Commands that write the corpus: one of them at a time per database (ScrapeLock).
WRITERS = {"local", "github", "dedup"}


def print_stats(stats: dict) -> None:
    repos = stats["repos"]
    print(f"repositories  {sum(repos.values()):>10,}  "
          + "  ".join(f"{k} {v:,}" for k, v in sorted(repos.items())))
    print(f"files         {stats['files']:>10,}")
    print(f"bytes         {stats['bytes']:>10,}")
    print(f"duplicates dropped (exact)  {stats['duplicates_dropped']:,}")
    print(f"near-duplicates marked      {stats['near_duplicates']:,}")
    if stats["slices"]:
        print("search slices  " + "  ".join(f"{k} {v:,}" for k, v in stats["slices"].items())
              + f"  (incomplete_results: {stats['incomplete_slices']})")
    print("licenses:")
    for lic, n in stats["licenses"].items():
        print(f"  {lic:<40} {n:>8,}")
    print("rejections by filter:")
    for reason, n in stats["rejections"].items():
        print(f"  {reason:<40} {n:>8,}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    lock = ScrapeLock(args.db)
    try:
        if args.command in WRITERS:
            lock.acquire()
        store = CorpusStore(args.db)
    except StoreError as e:
        lock.release()
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return run_command(store, args)
    finally:
        store.close()
        lock.release()


def run_command(store: CorpusStore, args: argparse.Namespace) -> int:
    """Run one subcommand on an open store; returns the exit status."""
    if args.command == "local":
        return _local(store, args)
    if args.command == "github":
        from scraper.github import run_github
        return run_github(store, args)
    if args.command == "stats":
        stats = store.stats()
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            print_stats(stats)
        return 0
    if args.command == "dedup":
        from scraper.dedup import near_duplicates
        dups = near_duplicates(((f.sha, f.stars, f.content)
                                for f in store.iter_files(include_near_dups=True)),
                               args.threshold)
        store.set_near_dups(dups.items())
        print(f"marked {len(dups):,} near-duplicate files (Jaccard >= {args.threshold})")
        return 0
    if args.command == "export":
        from scraper.export import export
        n = export(store, args.out, args.include_near_dups)
        print(f"wrote {n:,} files to {args.out}")
        return 0
    return 1


def _local(store: CorpusStore, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scraper.local import crawl_local, local_repos
    try:
        repos = local_repos(args.dirs, args.each_subdir, frozenset(args.exclude))
    except NotADirectoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=len(repos), unit="repo", desc="local", disable=None)

    def progress(name: str, new: int) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{name} +{new}")
        logging.getLogger("scraper").debug("%s: %d new files", name, new)

    new = crawl_local(store, args.dirs, args.each_subdir, FilterConfig(),
                      frozenset(args.exclude), progress)
    bar.close()
    print(f"added {new:,} new files from {len(repos):,} local repositories")
    return 0


if __name__ == "__main__":
    sys.exit(main())
