"""Prepared data as one small, compressed folder that can travel with the repository.

A GPU machine lent for a few minutes can reach nothing outside it, so the training data
has to go along with the working tree, whose size is limited (64 MiB with the repository
itself). Token shards compress well (uint16 ids of a 16k vocabulary, code that repeats:
the 72 MB training shard of `data/local-16384` packs to 18 MB), so `pack` writes every
shard xz-compressed with the other files of the folder as they are, plus `PACK.json`
(size and SHA-256 of each original file), and refuses to write more than `--limit-mib`.
`unpack` restores the folder `training.train --data` reads, checking every file.

    python -m training.pack pack data/local-16384 data/local-16384.pack
    python -m training.pack unpack data/local-16384.pack /tmp/local-16384
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import lzma
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from model.atomic import make_temp_dir

INDEX = "PACK.json"
CHUNK = 1 << 22
DEFAULT_LIMIT_MIB = 40.0      # leaves room for the repository in a 64 MiB working tree


class PackError(ValueError):
    """A pack that cannot be made or restored, in one sentence naming the path."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` when the block ends well and is
    removed when it does not: a killed or failed run never leaves half a folder at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pack(data: Path, out: Path, limit_mib: float = DEFAULT_LIMIT_MIB, log=print) -> int:
    """Compress the prepared folder `data` into the new folder `out`; returns its bytes."""
    if not (data / "manifest.json").is_file():
        raise PackError(f"{data} is not a training.prepare folder (no manifest.json).")
    if out.exists():
        raise PackError(f"{out} already exists; give a new folder to pack into.")
    with _new_folder(out) as tmp:
        index, total = {}, 0
        for src in sorted(p for p in data.iterdir() if p.is_file()):
            packed = src.suffix == ".bin"
            dst = tmp / (src.name + ".xz" if packed else src.name)
            if packed:
                with src.open("rb") as f, lzma.open(dst, "wb", preset=6) as z:
                    shutil.copyfileobj(f, z, CHUNK)
            else:
                shutil.copyfile(src, dst)
            index[src.name] = {"bytes": src.stat().st_size, "sha256": _sha256(src),
                               "stored": dst.name}
            total += dst.stat().st_size
            log(f"{src.name}: {src.stat().st_size:,} -> {dst.stat().st_size:,} bytes")
            if total > limit_mib * 2**20:
                raise PackError(f"packing {data} takes more than {limit_mib:g} MiB "
                                f"({total / 2**20:.1f} MiB so far); use less data or a "
                                "higher --limit-mib.")
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    log(f"packed {data} into {out}: {total / 2**20:.1f} MiB")
    return total


def unpack(source: Path, out: Path, log=print) -> Path:
    """Restore a pack into `out` (made here; an `out` that already holds this pack's files,
    checked by size, is left as it is). Every file's SHA-256 is checked."""
    index_file = source / INDEX
    if not index_file.is_file():
        raise PackError(f"{source} is not a pack (no {INDEX}).")
    index = json.loads(index_file.read_text())
    for name, entry in index.items():
        for part in (name, entry.get("stored", "") if isinstance(entry, dict) else ""):
            if not part or Path(part).name != part or part in (".", "..") or "\\" in part:
                raise PackError(f"{index_file} names {part!r}, which is not a plain file "
                                "name: refusing to write outside the target folder.")
    if out.exists():
        same = all((out / name).is_file() and (out / name).stat().st_size == entry["bytes"]
                   for name, entry in index.items())
        if same:
            log(f"{out} already holds {source}'s files")
            return out
        raise PackError(f"{out} already exists and is not this pack's data; give a new "
                        "folder.")
    with _new_folder(out) as tmp:
        for name, entry in index.items():
            stored, dst = source / entry["stored"], tmp / name
            if not stored.is_file():
                raise PackError(f"{stored} is missing from the pack.")
            try:
                if stored.name.endswith(".xz"):
                    with lzma.open(stored, "rb") as z, dst.open("wb") as f:
                        shutil.copyfileobj(z, f, CHUNK)
                else:
                    shutil.copyfile(stored, dst)
            except (lzma.LZMAError, EOFError) as e:
                raise PackError(f"{stored} is corrupt ({e}).") from e
            if dst.stat().st_size != entry["bytes"] or _sha256(dst) != entry["sha256"]:
                raise PackError(f"{stored} does not restore {name} as packed (size or "
                                "SHA-256 differs).")
    log(f"unpacked {source} into {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="compress a prepared data folder into a new folder")
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--limit-mib", type=float, default=DEFAULT_LIMIT_MIB)
    u = sub.add_parser("unpack", help="restore a pack into a new folder")
    u.add_argument("pack", type=Path)
    u.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "pack":
            pack(args.data, args.out, args.limit_mib, log=say)
        else:
            unpack(args.pack, args.out, log=say)
    except (PackError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
