"""Corpus -> tokenizer -> uint16 token shards with a JSON manifest, split by repository.

    python -m training.prepare --db corpus.sqlite --out data/NAME [--vocab-size 8192]

Documents are stored *without* FIM: each is its tokens followed by `<|endoftext|>`, and a
per-shard `int64` index of document starts lets the training loader apply FIM per
document on the fly (so the FIM rate is a training setting, not baked into the data).
Documents are in (repository, path) order, and a per-shard `.docs.json` names each
document's repository and path, so the loader can pack a repository's files together
and put windows of a file's neighbours before it (repository context).

Validation holds out whole repositories (packages, for a `local` corpus), chosen by a
seeded hash of the name, so it never shares a repository with training. The tokenizer is
trained on the training split only. Re-running with the same inputs is a no-op: the
manifest records a fingerprint of the file SHAs and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import atomic_write_bytes, atomic_write_text
from model.tokenizer import Tokenizer, train_tokenizer
from scraper.store import CorpusStore, FileRow, StoreError

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SHARD_TOKENS = 1 << 26          # 64M tokens (128 MB) per shard at most
FORMAT_VERSION = 2   # 2: per-shard .docs.json with (repo, path)


@dataclass(frozen=True)
class PrepareConfig:
    vocab_size: int = 8192
    val_fraction: float = 0.05
    seed: int = 0
    tokenizer_chars: int = 60_000_000   # train the BPE on at most this much text
    batch_docs: int = 256


def split_repos(sizes: dict[str, int], fraction: float, seed: int) -> set[str]:
    """Repositories for validation: in seeded-hash order, take repos whose size does not
    overshoot the target by much, until `fraction` of the bytes is held out. At least one
    repository is held out whenever there are two or more."""
    if len(sizes) < 2 or fraction <= 0:
        return set()
    total = sum(sizes.values())
    target = fraction * total
    order = sorted(sizes, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
    val: set[str] = set()
    held = 0
    for repo in order:
        if held >= target:
            break
        if held + sizes[repo] <= 1.5 * target or (not val and sizes[repo] < total / 2):
            val.add(repo)
            held += sizes[repo]
    if not val:
        val.add(min(sizes, key=sizes.__getitem__))
    return val


def fingerprint(files: list[FileRow], config: PrepareConfig, tokenizer_sha: str | None) -> str:
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, config.__dict__, tokenizer_sha]).encode())
    for f in files:
        h.update(f"{f.repo}\0{f.path}\0{f.sha}\n".encode())
    return h.hexdigest()


def write_split(out: Path, split: str, tok: Tokenizer, docs: list[FileRow],
                batch_docs: int) -> dict:
    """Tokenize `docs` in batches (tokenizers parallelises each batch across cores) into
    shards `split_NNN.bin` (uint16) + `split_NNN.idx.npy` (int64 document starts)."""
    if tok.vocab_size > 65536:
        raise ValueError(f"vocab size {tok.vocab_size} does not fit uint16 shards")
    shards = []
    buf: list[np.ndarray] = []
    starts: list[int] = []
    names: list[list[str]] = []
    n_tokens = n_bytes = 0
    filled = 0

    def flush() -> None:
        nonlocal buf, starts, names, filled
        if not buf:
            return
        name = f"{split}_{len(shards):03d}"
        arr = np.concatenate(buf).astype(np.uint16)
        atomic_write_bytes(out / f"{name}.bin", arr.tobytes())
        idx = np.asarray(starts, dtype=np.int64)
        atomic_write_bytes(out / f"{name}.idx.npy", _npy_bytes(idx))
        atomic_write_text(out / f"{name}.docs.json", json.dumps(names))
        shards.append({"name": name, "tokens": int(arr.size), "docs": len(starts)})
        buf, starts, names, filled = [], [], [], 0

    for i in range(0, len(docs), batch_docs):
        batch = docs[i:i + batch_docs]
        for f, ids in zip(batch, tok.encode_batch([d.content for d in batch]), strict=True):
            arr = np.asarray([*ids, tok.eot_id], dtype=np.uint16)
            if filled + arr.size > SHARD_TOKENS and buf:
                flush()
            starts.append(filled)
            names.append([f.repo, f.path])
            buf.append(arr)
            filled += arr.size
            n_tokens += arr.size
            n_bytes += len(f.content.encode("utf-8"))
    flush()
    return {"shards": shards, "tokens": n_tokens, "bytes": n_bytes, "docs": len(docs),
            "repos": sorted({d.repo for d in docs})}


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


def prepare(db: Path, out: Path, config: PrepareConfig = PrepareConfig(),
            tokenizer_path: Path | None = None, log=print) -> dict:
    """Build (or confirm up to date) the dataset in `out`; returns the manifest."""
    with CorpusStore(db) as store:
        files = list(store.iter_files())
    if not files:
        raise ValueError(f"{db} holds no files; run `python -m scraper` first.")
    given = Tokenizer.from_file(tokenizer_path) if tokenizer_path else None
    fp = fingerprint(files, config, given.sha256() if given else None)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fp and all(
                (out / f"{s['name']}{ext}").exists() for ext in (".bin", ".docs.json")
                for split in old["splits"].values() for s in split["shards"]):
            log(f"{out} is up to date ({old['splits']['train']['tokens']:,} train tokens).")
            return old

    sizes: dict[str, int] = defaultdict(int)
    for f in files:
        sizes[f.repo] += len(f.content)
    val_repos = split_repos(sizes, config.val_fraction, config.seed)
    train_docs = [f for f in files if f.repo not in val_repos]
    val_docs = [f for f in files if f.repo in val_repos]
    log(f"{len(files):,} files from {len(sizes):,} repositories; validation: "
        f"{len(val_repos)} repositories, {len(val_docs):,} files")

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if given:
        tok = given
    else:
        def sample():
            budget = config.tokenizer_chars
            for f in train_docs:
                if budget <= 0:
                    return
                budget -= len(f.content)
                yield f.content
        tok = train_tokenizer(sample(), config.vocab_size)
        log(f"tokenizer: {tok.vocab_size} tokens trained in {time.time() - t0:.0f}s")
    atomic_write_text(out / TOKENIZER, tok.to_str())
    splits = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        t1 = time.time()
        splits[name] = write_split(out, name, tok, docs, config.batch_docs)
        log(f"{name}: {splits[name]['tokens']:,} tokens, {splits[name]['bytes']:,} bytes "
            f"({splits[name]['bytes'] / max(1, splits[name]['tokens']):.2f} bytes/token) "
            f"in {time.time() - t1:.0f}s")
    manifest = {"format": FORMAT_VERSION, "fingerprint": fp, "db": str(db),
                "tokenizer_sha256": tok.sha256(), "vocab_size": tok.vocab_size,
                "config": config.__dict__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "licenses": _licenses(files), "splits": splits}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _licenses(files: list[FileRow]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for f in files:
        counts[f.license] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab-size", type=int, default=PrepareConfig.vocab_size)
    ap.add_argument("--val-fraction", type=float, default=PrepareConfig.val_fraction)
    ap.add_argument("--seed", type=int, default=PrepareConfig.seed)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this tokenizer.json instead of training one")
    args = ap.parse_args(argv)
    if not args.db.exists():
        print(f"error: corpus database {args.db} does not exist.", file=sys.stderr)
        return 2
    config = PrepareConfig(vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                           seed=args.seed)
    try:
        prepare(args.db, args.out, config, args.tokenizer,
                log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, StoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
