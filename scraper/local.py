"""The `local` source: directories on this machine, through the same filters and store.

This is how the shipped default model is trained offline: the Python standard library and
an environment's site-packages. Each directory counts as one repository (`local:NAME`), or
with `each_subdir` each of its subfolders and top-level modules does, so site-packages
splits by package and `training.prepare` can hold whole packages out for validation.

Licenses come from the packages' own metadata (`*.dist-info/METADATA`: License-Expression,
else a short License field, else the OSI classifier); the standard library is PSF-2.0.
"""

from __future__ import annotations

import email.parser
import os
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scraper.filters import DEFAULT_FILTERS, FilterConfig, check_file
from scraper.store import DONE, SKIPPED, Accepted, CorpusStore

# Folders that are never source worth learning from (caches, metadata, build output).
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".venv", "node_modules", "build",
             "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages"}

CLASSIFIER_SPDX = {
    "MIT License": "MIT", "BSD License": "BSD-3-Clause",
    "Apache Software License": "Apache-2.0", "Python Software Foundation License": "PSF-2.0",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0", "ISC License (ISCL)": "ISC",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0",
    "GNU Library or Lesser General Public License (LGPL)": "LGPL-2.1",
    "The Unlicense (Unlicense)": "Unlicense",
}


# Free-text License fields seen in package metadata, mapped to SPDX ids.
FREE_TEXT_SPDX = {
    "apache 2.0": "Apache-2.0", "apache 2.0 license": "Apache-2.0", "apache-2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache software license": "Apache-2.0",
    "bsd": "BSD-3-Clause", "bsd license": "BSD-3-Clause", "new bsd license": "BSD-3-Clause",
    "mit license": "MIT", "isc license": "ISC", "psf": "PSF-2.0",
}


def normalize_license(text: str) -> str:
    return FREE_TEXT_SPDX.get(text.strip().lower(), text.strip())


@dataclass(frozen=True)
class LocalRepo:
    name: str            # store name, "local:NAME"
    root: Path           # a directory, or a single module file
    license: str


def _dist_license(meta_path: Path) -> str:
    try:
        msg = email.parser.Parser().parsestr(meta_path.read_text(encoding="utf-8",
                                                                 errors="replace"),
                                             headersonly=True)
    except OSError:
        return "unknown"
    if msg.get("License-Expression"):
        return msg["License-Expression"].strip()
    lic = (msg.get("License") or "").strip()
    if lic and len(lic) <= 40 and "\n" not in lic:
        return normalize_license(lic)
    for classifier in msg.get_all("Classifier") or []:
        if classifier.startswith("License :: OSI Approved :: "):
            name = classifier.rsplit(" :: ", 1)[1]
            return CLASSIFIER_SPDX.get(name, name)
    return "unknown"


def package_licenses(site: Path) -> dict[str, str]:
    """Top-level import name -> license, from the dist-info folders in `site`."""
    out: dict[str, str] = {}
    for info in site.glob("*.dist-info"):
        lic = _dist_license(info / "METADATA")
        tops: set[str] = set()
        top_level = info / "top_level.txt"
        if top_level.exists():
            tops.update(t.strip() for t in top_level.read_text().splitlines() if t.strip())
        record = info / "RECORD"
        if record.exists():
            for line in record.read_text(errors="replace").splitlines():
                first = line.split(",", 1)[0].split("/", 1)[0]
                if first and not first.endswith((".dist-info", ".data")) and first != "..":
                    tops.add(first.removesuffix(".py"))
        for top in tops:
            out.setdefault(top, lic)
    return out


def is_stdlib(path: Path) -> bool:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    return path.resolve() == stdlib


def local_repos(dirs: list[Path], each_subdir: bool = False,
                exclude: frozenset[str] = frozenset()) -> list[LocalRepo]:
    """The repositories the given directories stand for, in a stable order. With
    `each_subdir` they are named `local:DIR/CHILD` so two trees cannot collide; children
    named in `exclude` are left out."""
    repos: list[LocalRepo] = []
    for d in dirs:
        if not d.is_dir():
            raise NotADirectoryError(f"{d} is not a directory.")
        base_license = "PSF-2.0" if is_stdlib(d) else "unknown"
        if not each_subdir:
            repos.append(LocalRepo(f"local:{d.resolve().name}", d, base_license))
            continue
        licenses = package_licenses(d)
        for child in sorted(d.iterdir()):
            name = child.name.removesuffix(".py")
            if child.is_dir() and (child.name in SKIP_DIRS or "." in child.name
                                   or child.name.startswith("_distutils")):
                continue
            if (child.is_file() and child.suffix != ".py") or child.name in exclude \
                    or name in exclude:
                continue
            repos.append(LocalRepo(f"local:{d.resolve().name}/{name}", child,
                                   licenses.get(name, base_license)))
    return repos


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, file) for every regular file under root; symlinks are skipped so a
    link cannot pull in files from outside the repository or count them twice."""
    if root.is_file():
        yield root.name, root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS
                             and not os.path.islink(os.path.join(dirpath, n)))
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            if full.is_symlink() or not full.is_file():
                continue
            yield full.relative_to(root).as_posix(), full


def scan_local(store: CorpusStore, repo: LocalRepo, config: FilterConfig) -> int:
    """Filter one local repository into the store; returns how many files were new."""
    name = store.claim_local_name(repo.name, str(repo.root.resolve()))
    row = store.upsert_repo(name, "local", license=repo.license)
    if row.status in (DONE, SKIPPED):
        return 0
    accepted: list[Accepted] = []
    rejected: list[tuple[str, str]] = []
    for rel, full in walk_files(repo.root):
        if not rel.endswith(".py"):
            continue  # not counted: only Python files are candidates at all
        try:
            data = full.read_bytes()
        except OSError:
            rejected.append((rel, "unreadable"))
            continue
        text, reason = check_file(rel, data, config)
        if text is None:
            rejected.append((rel, reason or "unknown"))
        else:
            accepted.append(Accepted(rel, data, text))
    return store.finish_repo(row, None, accepted, rejected)


def crawl_local(store: CorpusStore, dirs: list[Path], each_subdir: bool = False,
                config: FilterConfig = DEFAULT_FILTERS, exclude: frozenset[str] = frozenset(),
                progress: Callable[[str, int], None] | None = None) -> int:
    total = 0
    for repo in local_repos(dirs, each_subdir, exclude):
        new = scan_local(store, repo, config)
        total += new
        if progress:
            progress(repo.name, new)
    return total
