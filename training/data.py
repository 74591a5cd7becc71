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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from completion.prompt import header_ids
from model.tokenizer import Tokenizer
from training.fim import SPANS, context_fim, document_tokens
from training.prepare import MANIFEST, TOKENIZER
from training.prose import CODE, STATES, end_state, row_prose
from training.repo_context import RepoIndexes, retrieval_example


class DataError(ValueError):
    """A prepared data folder is missing or inconsistent."""


@dataclass
class Split:
    """All documents of one split as (shard array, start, end) views, memory-mapped."""
    tokens: list[np.memmap]
    docs: list[tuple[int, int, int]]   # (shard index, start, end) — end excludes EOT
    n_tokens: int
    n_bytes: int
    names: list[tuple[str, str]] | None = None   # (repository, path) per document, from
    #                                              data prepared since format 2


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
        names: list[tuple[str, str]] | None = []
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
            names = _doc_names(data_dir / f"{shard['name']}.docs.json", len(starts), names)
        splits[name] = Split(arrays, docs, info["tokens"], info["bytes"], names)
    return tok, manifest, splits


def held_out_repos(data: str | Path) -> dict[str, dict[str, str]]:
    """{repository: {path: text}} of the validation split (whole repositories the model
    never trained on)."""
    tok, _, splits = load_dataset(data)
    val = splits.get("val")
    if val is None or val.names is None:
        raise DataError(f"{data} has no validation split with repository names: re-run "
                        f"training.prepare.")
    repos: dict[str, dict[str, str]] = {}
    for (repo, path), (shard, a, b) in zip(val.names, val.docs, strict=True):
        repos.setdefault(repo, {})[path] = tok.decode(val.tokens[shard][a:b].tolist())
    return repos


def _doc_names(path: Path, count: int, names: list[tuple[str, str]] | None
               ) -> list[tuple[str, str]] | None:
    """`names` extended by one shard's (repository, path) list; None once a shard has none
    (data prepared before format 2: repository context cannot be trained on it)."""
    if names is None or not path.is_file():
        return None
    try:
        shard = [(str(r), str(p)) for r, p in json.loads(path.read_text())]
    except (ValueError, TypeError) as e:
        raise DataError(f"{path} is not a list of [repository, path] pairs ({e}).") from None
    if len(shard) != count:
        raise DataError(f"{path} names {len(shard)} documents but its shard has {count}.")
    return names + shard


FIM_LEVELS = ("document", "context")


@dataclass
class Lane:
    """One batch row's own stream under repository packing: the repository it is reading,
    how many of that repository's files it has packed, and the tokens not yet in a window.

    Each row reads its own repository, so a step's rows come from as many repositories as
    the batch has rows. With one stream for the whole batch a step was 16 windows of one
    package, and a long sitting trained on one package for an hour at a time (an eighth
    sitting got worse that way: docs/default-model.md)."""
    repo: str | None = None
    next_file: int = 0
    buffer: list[int] = field(default_factory=list)
    prose: str = CODE       # where its stream stands (training/prose.py), with track_prose


class PackedLoader:
    """Yields (batch, seq_len + 1) int64 arrays of packed documents, forever.

    fim_level "document" turns whole documents into FIM examples before packing;
    "context" packs documents left to right and then makes FIM examples inside each
    window (see `training.fim.context_fim` for why that is the one to use with a short
    context).

    With `repo_packing` the epoch order is a permutation of repositories, each one's files
    in path order, each file opened by its header (`<file_sep>path`, completion/prompt.py)
    and each repository closed by `<|endoftext|>`: the model sees a project's files together,
    as the server shows them. Each batch row is a `Lane` that takes the next repository of
    the permutation when it has packed all of its current one, so one step mixes as many
    repositories as it has rows. With `repo_rate` > 0 that share of windows starts with a
    retrieval example (training/repo_context.py) from its row's repository, the rest of
    the window packed as usual."""

    def __init__(self, split: Split, tok: Tokenizer, seq_len: int, batch_size: int,
                 seed: int, fim_rate: float, spm_rate: float, rank: int = 0, world: int = 1,
                 fim_level: str = "context", repo_packing: bool = False,
                 repo_rate: float = 0.0, repo_context_tokens: int = 256,
                 repo_tries: int = 1, fim_spans: str = "char", fim_ends: bool = True,
                 track_prose: bool = False):
        if not split.docs:
            raise DataError("the training split has no documents.")
        if fim_level not in FIM_LEVELS:
            raise DataError(f"fim_level {fim_level!r} is not one of {', '.join(FIM_LEVELS)}.")
        if (repo_packing or repo_rate > 0) and split.names is None:
            raise DataError("repository packing and context need data prepared with "
                            "repository names (format 2): re-run training.prepare.")
        if fim_spans not in SPANS:
            raise DataError(f"fim_spans {fim_spans!r} is not one of {', '.join(SPANS)}.")
        self.fim_level, self.fim_spans, self.windows = fim_level, fim_spans, 0
        self.fim_ends, self.track_prose = fim_ends, track_prose
        self.prose = CODE        # the shared stream's prose state (training/prose.py)
        self.split, self.tok = split, tok
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.fim_rate, self.spm_rate = seed, fim_rate, spm_rate
        self.rank, self.world = rank, world
        self.repo_packing, self.repo_rate = repo_packing, repo_rate
        self.repo_context_tokens = repo_context_tokens
        self.repo_tries = repo_tries
        self.repos: dict[str, list[int]] = {}
        for i, (repo, _) in enumerate(split.names or []):
            self.repos.setdefault(repo, []).append(i)
        self._indexes = RepoIndexes()
        self.epoch, self.cursor = 0, 0     # cursor: into documents, or repositories
        self.buffer: list[int] = []
        self.lanes = [Lane() for _ in range(batch_size)] if repo_packing else []
        self._order: list = self._permutation(0)

    def _permutation(self, epoch: int) -> list:
        """This rank's reading order for an epoch: document indices, or with repository
        packing repository names."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.repo_packing:
            names = sorted(self.repos)
            perm = [names[i] for i in rng.permutation(len(names))]
            return perm[self.rank::self.world] or perm[:1]
        perm = rng.permutation(len(self.split.docs)).tolist()
        return perm[self.rank::self.world] or perm[:1]

    def _next_in_order(self) -> int | str:
        """The next document (or repository) of the reading order, starting an epoch when
        this one is read."""
        if self.cursor >= len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._permutation(self.epoch)
        self.cursor += 1
        return self._order[self.cursor - 1]

    def _ids(self, doc_index: int) -> np.ndarray:
        shard, start, end = self.split.docs[doc_index]
        return self.split.tokens[shard][start:end]

    def _document(self, doc_index: int) -> list[int]:
        ids = self._ids(doc_index)
        if self.repo_packing:
            repo, path = self.split.names[doc_index]
            last = self.repos[repo][-1] == doc_index
            return [*header_ids(self.tok, path), *ids.tolist(),
                    *([self.tok.eot_id] if last else [])]
        rng = random.Random(f"{self.seed}:{self.epoch}:{doc_index}")
        if (self.fim_level != "document" or self.fim_rate <= 0
                or rng.random() >= self.fim_rate):
            return [*ids.tolist(), self.tok.eot_id]
        # FIM spans are character-level, so go back to text for this document.
        return document_tokens(self.tok, self.tok.decode(ids.tolist()), rng,
                               fim_rate=1.0, spm_rate=self.spm_rate, spans=self.fim_spans)

    def _take(self, row: int, need: int) -> list[int]:
        """The next `need` tokens of row `row`'s stream (the shared one without repository
        packing), taken out of its buffer."""
        buffer = self.lanes[row].buffer if self.repo_packing else self.buffer
        while len(buffer) < need:
            buffer.extend(self._next_document(row))
        out = buffer[:need]
        del buffer[:need]
        return out

    def _next_document(self, row: int) -> list[int]:
        """The next document of row `row`'s stream, as `_document` packs it."""
        if not self.repo_packing:
            return self._document(int(self._next_in_order()))
        lane = self.lanes[row]
        if lane.repo is None or lane.next_file >= len(self.repos[lane.repo]):
            self._start_repository(lane)
        lane.next_file += 1
        return self._document(self.repos[lane.repo][lane.next_file - 1])

    def _start_repository(self, lane: Lane) -> None:
        lane.repo, lane.next_file = str(self._next_in_order()), 0

    def _retrieval(self, row: int, rng: random.Random) -> list[int]:
        """A retrieval example from a random file of the repository row `row` is reading
        (without repository packing: of the document read last)."""
        if self.repo_packing:
            lane = self.lanes[row]
            if lane.repo is None:
                self._start_repository(lane)
            repo = lane.repo
        else:
            repo = self.split.names[int(self._order[max(0, self.cursor - 1)])][0]
        members = self.repos[repo]
        index = self._indexes.get(repo, lambda: (
            (self.split.names[d][1], self.tok.decode(self._ids(d).tolist())) for d in members))
        pick = rng.choice(members)
        return retrieval_example(self.tok, self.tok.decode(self._ids(pick).tolist()),
                                 self.split.names[pick][1], index, rng, self.seq_len,
                                 self.repo_context_tokens, self.spm_rate, self.repo_tries)

    def next_batch(self) -> np.ndarray:
        return self.next_batch_and_prose()[0]

    def next_batch_and_prose(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The next batch and, with `track_prose`, which of its tokens are prose (comment
        text, docstrings: training/prose.py), else None."""
        rows, masks = [], []
        for i in range(self.batch_size):
            rng = random.Random(f"{self.seed}:{self.rank}:window{self.windows + i}")
            head = self._retrieval(i, rng) if self.repo_rate > 0 \
                and rng.random() < self.repo_rate else []
            row = self._take(i, self.seq_len + 1 - len(head))
            if self.track_prose:
                start = self._prose_state(i, row)
            if self.fim_level == "context" and self.fim_rate > 0:
                row = context_fim(self.tok, row, rng, self.fim_rate, self.spm_rate,
                                  self.fim_spans, self.fim_ends)
            if self.track_prose:
                masks.append(np.concatenate([row_prose(self.tok, head),
                                             row_prose(self.tok, row, start)]))
            rows.append(head + row)
        self.windows += len(rows)
        return np.asarray(rows, dtype=np.int64), np.stack(masks) if masks else None

    def _prose_state(self, row: int, window: list[int]) -> str:
        """The prose state `window` (row `row`'s, before FIM) starts in; keeps the one it
        ends in for the row's next window."""
        holder = self.lanes[row] if self.repo_packing else self
        start, holder.prose = holder.prose, end_state(self.tok, window, holder.prose)
        return start

    def state(self) -> dict:
        state = {"epoch": self.epoch, "cursor": self.cursor, "windows": self.windows,
                 "buffer": list(self.buffer), "prose": self.prose}
        if self.repo_packing:
            state["lanes"] = [{"repo": lane.repo, "next_file": lane.next_file,
                               "buffer": list(lane.buffer), "prose": lane.prose}
                              for lane in self.lanes]
        return state

    def load_state(self, state: dict) -> None:
        """Continue from `state()`. A state with more lanes than this batch has rows drops
        the extra ones (their repositories' rest is skipped this epoch); fewer start the
        new rows at the next repository."""
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.windows = int(state.get("windows", 0))   # checkpoints from before fim_level
        self.buffer = [int(t) for t in state["buffer"]]
        self.prose = _saved_prose(state)
        self._order = self._permutation(self.epoch)
        if not self.repo_packing:
            return
        if "lanes" not in state:
            self._lanes_from_one_stream()
            return
        saved = [Lane(lane["repo"], int(lane["next_file"]), [int(t) for t in lane["buffer"]],
                      _saved_prose(lane)) for lane in state["lanes"]]
        for lane in saved:
            if lane.repo is not None and lane.repo not in self.repos:
                raise DataError(f"the saved data position reads repository {lane.repo!r}, "
                                "which this training split does not have.")
        self.lanes = (saved + [Lane() for _ in self.lanes])[:self.batch_size]

    def _lanes_from_one_stream(self) -> None:
        """A position saved when all rows shared one stream (its cursor counts documents
        of the repository-ordered epoch): the first row carries on with the repository
        that stream was in, the others start at the next repositories."""
        docs_cursor, self.cursor = self.cursor, 0
        first = Lane(buffer=self.buffer, prose=self.prose)
        self.buffer = []
        seen = 0
        for repo in self._order:
            files = len(self.repos[repo])
            self.cursor += 1
            if seen + files > docs_cursor:
                first.repo, first.next_file = repo, docs_cursor - seen
                break
            seen += files
        self.lanes = [first] + [Lane() for _ in range(self.batch_size - 1)]


def _saved_prose(saved: dict) -> str:
    """A saved prose state (positions saved before it existed start in code)."""
    prose = saved.get("prose", CODE)
    if prose not in STATES:
        raise DataError(f"the saved data position has prose state {prose!r}, not one of "
                        f"{STATES}.")
    return prose


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
