"""Token shards from `training.prepare`, read memory-mapped, packed into training batches
with FIM applied on the fly, per document or per packed window (`fim_level`).

The loader is deterministic and resumable: the document order of each epoch is a seeded
permutation, each document's FIM decision uses an RNG seeded by (seed, epoch, document),
each window's by (seed, rank, window number), and the whole position is a small `state()`
dict (epoch, cursor, windows made, the leftover tokens) that the checkpoint stores.
Under DDP, rank r of w reads documents r, r+w, r+2w, ...
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.tokenizer import Tokenizer
from training.fim import context_fim, document_tokens
from training.prepare import MANIFEST, TOKENIZER


class DataError(ValueError):
    """A prepared data folder is missing or inconsistent."""


@dataclass
class Split:
    """All documents of one split as (shard array, start, end) views, memory-mapped."""
    tokens: list[np.memmap]
    docs: list[tuple[int, int, int]]   # (shard index, start, end) — end excludes EOT
    n_tokens: int
    n_bytes: int


def load_dataset(data_dir: str | Path) -> tuple[Tokenizer, dict, dict[str, Split]]:
    data_dir = Path(data_dir)
    mf = data_dir / MANIFEST
    if not mf.is_file():
        raise DataError(f"{data_dir} has no {MANIFEST}; run `python -m training.prepare "
                        f"--db CORPUS --out {data_dir}` first.")
    try:
        manifest = json.loads(mf.read_text())
        tok = Tokenizer.from_file(data_dir / TOKENIZER)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise DataError(f"{data_dir} is not a usable prepared dataset ({e}).") from None
    if tok.sha256() != manifest.get("tokenizer_sha256"):
        raise DataError(f"{data_dir / TOKENIZER} does not match {mf}: re-run prepare.")
    splits = {}
    for name, info in manifest["splits"].items():
        arrays, docs = [], []
        for i, shard in enumerate(info["shards"]):
            f = data_dir / f"{shard['name']}.bin"
            arr = np.memmap(f, dtype=np.uint16, mode="r")
            if arr.size != shard["tokens"]:
                raise DataError(f"{f} has {arr.size} tokens but the manifest says "
                                f"{shard['tokens']}: the file is truncated or replaced.")
            starts = np.load(data_dir / f"{shard['name']}.idx.npy", allow_pickle=False)
            ends = np.append(starts[1:], arr.size) - 1
            docs.extend((i, int(s), int(e)) for s, e in zip(starts, ends, strict=True))
            arrays.append(arr)
        splits[name] = Split(arrays, docs, info["tokens"], info["bytes"])
    return tok, manifest, splits


FIM_LEVELS = ("document", "context")


class PackedLoader:
    """Yields (batch, seq_len + 1) int64 arrays of packed documents, forever.

    fim_level "document" turns whole documents into FIM examples before packing;
    "context" packs documents left to right and then makes FIM examples inside each
    window (see `training.fim.context_fim` for why that is the one to use with a short
    context)."""

    def __init__(self, split: Split, tok: Tokenizer, seq_len: int, batch_size: int,
                 seed: int, fim_rate: float, spm_rate: float, rank: int = 0, world: int = 1,
                 fim_level: str = "context"):
        if not split.docs:
            raise DataError("the training split has no documents.")
        if fim_level not in FIM_LEVELS:
            raise DataError(f"fim_level {fim_level!r} is not one of {', '.join(FIM_LEVELS)}.")
        self.fim_level, self.windows = fim_level, 0
        self.split, self.tok = split, tok
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.fim_rate, self.spm_rate = seed, fim_rate, spm_rate
        self.rank, self.world = rank, world
        self.epoch, self.cursor = 0, 0
        self.buffer: list[int] = []
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split.docs))
        mine = perm[self.rank::self.world]
        return mine if len(mine) else perm[:1]

    def _document(self, doc_index: int) -> list[int]:
        shard, start, end = self.split.docs[doc_index]
        ids = self.split.tokens[shard][start:end]
        rng = random.Random(f"{self.seed}:{self.epoch}:{doc_index}")
        if (self.fim_level != "document" or self.fim_rate <= 0
                or rng.random() >= self.fim_rate):
            return [*ids.tolist(), self.tok.eot_id]
        # FIM spans are character-level, so go back to text for this document.
        return document_tokens(self.tok, self.tok.decode(ids.tolist()), rng,
                               fim_rate=1.0, spm_rate=self.spm_rate)

    def next_batch(self) -> np.ndarray:
        need = self.batch_size * (self.seq_len + 1)
        while len(self.buffer) < need:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            self.buffer.extend(self._document(int(self._order[self.cursor])))
            self.cursor += 1
        rows = [self.buffer[i:i + self.seq_len + 1] for i in range(0, need, self.seq_len + 1)]
        del self.buffer[:need]
        if self.fim_level == "context" and self.fim_rate > 0:
            rows = [context_fim(self.tok, row, random.Random(
                f"{self.seed}:{self.rank}:window{self.windows + i}"), self.fim_rate,
                self.spm_rate) for i, row in enumerate(rows)]
        self.windows += len(rows)
        return np.asarray(rows, dtype=np.int64)

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "windows": self.windows,
                "buffer": list(self.buffer)}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.windows = int(state.get("windows", 0))   # checkpoints from before fim_level
        self.buffer = [int(t) for t in state["buffer"]]
        self._order = self._permutation(self.epoch)


def validation_batches(split: Split, tok: Tokenizer, seq_len: int, batch_size: int,
                       n_batches: int) -> list[np.ndarray]:
    """A fixed, left-to-right (no FIM) sample of validation windows from documents in a
    fixed shuffled order, so many held-out packages contribute."""
    need = n_batches * batch_size * (seq_len + 1)
    stream: list[int] = []
    for i in np.random.default_rng(12345).permutation(len(split.docs)):
        if len(stream) >= need:
            break
        shard, start, end = split.docs[int(i)]
        stream.extend(split.tokens[shard][start:end].tolist())
        stream.append(tok.eot_id)
    usable = len(stream) // (seq_len + 1) // batch_size * batch_size
    if usable == 0:
        raise DataError(f"the validation split has only {len(stream)} tokens; need at least "
                        f"{batch_size * (seq_len + 1)}.")
    arr = np.asarray(stream[:usable * (seq_len + 1)], dtype=np.int64)
    arr = arr.reshape(-1, batch_size, seq_len + 1)
    return list(arr[:n_batches])
