"""The training pipeline on a small corpus made here: prepare, train, resume, guard, DDP."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scraper.store import CorpusStore
from training.config import load_config
from training.data import DataError, PackedLoader, load_dataset
from training.fim import CLOSERS, choose_middle, reassemble
from training.prepare import PrepareConfig, prepare, split_repos
from training.train import train

ROOT = Path(__file__).resolve().parents[1]
# Small and single-threaded: deterministic, and fair to a machine with 2 cores.
TINY = {"threads": "1", "sample_every_eval": "0", "log_every": "5"}


def tiny_config(data: Path, runs: Path, **overrides):
    values = TINY | {"data": str(data), "runs_dir": str(runs)}
    values |= {k: str(v) for k, v in overrides.items()}
    return load_config("cpu-tiny", values)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_prepare_split_lossless_and_idempotent(small_corpus_db, small_dataset):
    tok, manifest, splits = load_dataset(small_dataset)
    train_repos = set(manifest["splits"]["train"]["repos"])
    val_repos = set(manifest["splits"]["val"]["repos"])
    assert train_repos and val_repos and not train_repos & val_repos
    with CorpusStore(small_corpus_db) as store:
        originals = {f.content for f in store.iter_files()}
    decoded = {tok.decode(s.tokens[i][a:b].tolist())
               for s in splits.values() for i, a, b in s.docs}
    assert decoded == originals          # tokenizer is lossless, nothing lost or added
    mtime = (small_dataset / "manifest.json").stat().st_mtime_ns
    prepare(small_corpus_db, small_dataset, PrepareConfig(vocab_size=1024, val_fraction=0.2),
            log=lambda s: None)
    assert (small_dataset / "manifest.json").stat().st_mtime_ns == mtime


def test_split_repos_holds_out_whole_repos():
    sizes = {f"r{i}": 100 + i for i in range(50)}
    val = split_repos(sizes, 0.1, seed=0)
    held = sum(sizes[r] for r in val) / sum(sizes.values())
    assert 0.08 <= held <= 0.16
    assert split_repos(sizes, 0.1, seed=1) != val


def test_fim_examples_from_the_loader_reassemble(small_dataset):
    tok, _, splits = load_dataset(small_dataset)
    loader = PackedLoader(splits["train"], tok, 64, 1, seed=3, fim_rate=1.0, spm_rate=0.5,
                          fim_level="document")
    for doc_index in random.Random(0).sample(range(len(splits["train"].docs)), 10):
        shard, a, b = splits["train"].docs[doc_index]
        original = tok.decode(splits["train"].tokens[shard][a:b].tolist())
        ids = loader._document(doc_index)
        assert ids[0] == tok.fim_prefix_id
        assert reassemble(tok, ids) == original


def test_context_fim_keeps_each_example_inside_its_window(small_dataset):
    """Context-level FIM: the same packed windows as left-to-right training, each piece
    (up to an <|endoftext|>) turned into a whole FIM example inside the window."""
    tok, _, splits = load_dataset(small_dataset)
    plain = PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=0.0, spm_rate=0.5)
    fim = PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=1.0, spm_rate=0.5)
    checked = starts = windows = 0
    while checked < 3 and windows < 4000:   # long stdlib files: few <|endoftext|> per window
        windows += 4
        for before, after in zip(plain.next_batch().tolist(), fim.next_batch().tolist(),
                                 strict=True):
            assert len(after) == 97
            starts += after[0] == tok.fim_prefix_id
            cuts = [i + 1 for i, t in enumerate(before) if t == tok.eot_id]
            pieces = [before[a:b] for a, b in zip([0, *cuts], cuts, strict=False)]
            done = [i + 1 for i, t in enumerate(after) if t == tok.eot_id]
            examples = [after[a:b] for a, b in zip([0, *done], done, strict=False)]
            # every piece came back whole, as one example, in order (the sentinels make
            # the window longer, so the last ones may be cut off at its end; the piece the
            # window cut ends with <|endoftext|> too, see the next test)
            assert len(pieces) - 2 <= len(examples) <= len(pieces) + 1
            for piece, example in zip(pieces, examples, strict=False):
                assert reassemble(tok, example) == tok.decode(piece[:-1])
                checked += 1
            # each example's sentinels are in the window, before its middle
            for example in [*examples, after[sum(map(len, examples)):]]:
                if example and example[0] == tok.fim_prefix_id:
                    assert tok.fim_suffix_id in example and tok.fim_middle_id in example
    assert checked > 0
    assert starts >= 0.7 * windows      # at rate 1, all but pieces whose middle does not fit
    # resuming mid-stream gives the same windows (the window count is part of the state)
    state = fim.state()
    expected = fim.next_batch()
    again = PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=1.0, spm_rate=0.5)
    again.load_state(state)
    assert (again.next_batch() == expected).all()
    with pytest.raises(DataError, match="fim_level 'line' is not one of document, context"):
        PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=0.5, spm_rate=0.5,
                     fim_level="line")


def test_context_fim_examples_end_inside_their_window(small_dataset):
    """Every FIM example ends with <|endoftext|> inside its window, also the one made from
    the piece the window cut, whose suffix gives up its tail for it; and each example's
    text is text of its window. Without `fim_ends` most examples had no end."""
    tok, _, splits = load_dataset(small_dataset)

    def examples_and_ends(ends: bool) -> tuple[int, int]:
        plain = PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=0.0, spm_rate=0.5)
        fim = PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=1.0, spm_rate=0.5,
                           fim_ends=ends)
        total = ended = 0
        for _ in range(50):
            for before, after in zip(plain.next_batch().tolist(), fim.next_batch().tolist(),
                                     strict=True):
                assert len(after) == 97
                for m in (i for i, t in enumerate(after) if t == tok.fim_middle_id):
                    total += 1
                    ended += tok.eot_id in after[m + 1:]
                if not ends:
                    continue
                # each example (the last one's suffix shortened) is text of its window
                cuts = [i + 1 for i, t in enumerate(after) if t == tok.eot_id]
                window = tok.decode(before)
                for a, b in zip([0, *cuts], cuts, strict=False):
                    if after[a] == tok.fim_prefix_id:
                        assert reassemble(tok, after[a:b]) in window
        return total, ended

    total, ended = examples_and_ends(True)
    assert total >= 100 and ended == total
    total, ended = examples_and_ends(False)
    assert ended < 0.6 * total


SAMPLE = ("import os\n\n\nclass Store:\n    def __init__(self, root):\n"
          "        self.root = os.path.abspath(root)\n        self.items = {}\n\n"
          "    def get(self, key, default=None):\n"
          "        return self.items.get(key, default)\n")


def test_line_spans_cut_middles_where_editors_ask():
    """fim_spans "line": the cursor is never inside a line's indentation, and the middle
    ends at a line's end, just before the brackets/colon that close it, or lines later."""
    kinds = set()
    for seed in range(400):
        a, b = choose_middle(SAMPLE, random.Random(seed), "line")
        start = SAMPLE.rfind("\n", 0, a) + 1
        line = SAMPLE[start:SAMPLE.find("\n", start)]
        assert SAMPLE[start:a].strip() or a - start == len(line) - len(line.lstrip())
        assert SAMPLE[a:b].strip()
        rest = SAMPLE[b:SAMPLE.find("\n", b)]
        assert rest == "" or not rest.strip(CLOSERS), (SAMPLE[a:b], rest)
        kinds.add("lines" if "\n" in SAMPLE[a:b] else "closers" if rest else "line")
    assert kinds == {"line", "closers", "lines"}
    mixed = {SAMPLE[b:b + 1] for b in (choose_middle(SAMPLE, random.Random(s), "mix")[1]
                                        for s in range(100))}
    assert len(mixed - set(CLOSERS) - {"\n", ""}) > 3      # half are cut anywhere
    with pytest.raises(ValueError, match="fim_spans 'ast' is not one of char, line, mix"):
        choose_middle(SAMPLE, random.Random(0), "ast")


def test_loader_with_line_spans_makes_whole_examples_whose_suffix_starts_at_a_line_end(
        small_dataset):
    tok, _, splits = load_dataset(small_dataset)
    suffix_starts = {}
    for spans in ("char", "line"):
        loader = PackedLoader(splits["train"], tok, 256, 4, seed=5, fim_rate=1.0,
                              spm_rate=0.5, fim_spans=spans)
        starts = []
        for _ in range(10):
            for row in loader.next_batch().tolist():
                done = [i + 1 for i, t in enumerate(row) if t == tok.eot_id]
                for x, y in zip([0, *done], [*done, len(row)], strict=True):
                    ex = row[x:y]       # whole examples, and the last, maybe cut off
                    if ex and ex[0] == tok.fim_prefix_id:
                        assert tok.fim_middle_id in ex
                        s = ex.index(tok.fim_suffix_id)
                        starts.append(tok.decode(ex[s + 1:ex.index(tok.fim_middle_id)])[:1])
        suffix_starts[spans] = starts
    line = suffix_starts["line"]
    assert len(line) >= 10 and all(c in "\n" + CLOSERS for c in line)
    char = suffix_starts["char"]
    assert sum(c not in "\n" + CLOSERS for c in char) > len(char) / 2
    with pytest.raises(DataError, match="fim_spans 'word' is not one of char, line, mix"):
        PackedLoader(splits["train"], tok, 96, 4, seed=3, fim_rate=0.5, spm_rate=0.5,
                     fim_spans="word")


def _lane_files(tok, split, stream: list[int]) -> list[tuple[str, str, bool]]:
    """(repository, path, closed by <|endoftext|>) of each whole file in one row's stream,
    each checked to be that file's tokens under its header."""
    files = []
    cuts = [i for i, t in enumerate(stream) if t == tok.file_sep_id]
    by_name = {name: i for i, name in enumerate(split.names)}
    for a, b in itertools.pairwise(cuts):
        chunk = stream[a + 1:b]
        head = tok.decode(chunk).split("\n", 1)[0]
        repo = next(r for r, p in split.names if p == head)
        shard, s0, s1 = split.docs[by_name[(repo, head)]]
        body = split.tokens[shard][s0:s1].tolist()
        closed = chunk[-1] == tok.eot_id
        assert chunk[-len(body) - closed:][:len(body)] == body
        files.append((repo, head, closed))
    return files


def test_repository_packing_keeps_each_repository_together_under_file_headers(
        small_dataset):
    tok, _, splits = load_dataset(small_dataset)
    train_split = splits["train"]
    loader = PackedLoader(train_split, tok, 128, 4, seed=5, fim_rate=0.0, spm_rate=0.5,
                          repo_packing=True)
    batches = [loader.next_batch() for _ in range(train_split.n_tokens * 2 // (4 * 129))]
    # Each row is its own stream: cut it at the headers. A repository's files come
    # together, in path order, the last one closed by <|endoftext|>.
    every_repo = {r for r, _ in train_split.names}
    read: set[str] = set()
    for row in range(4):
        stream = [t for b in batches for t in b[row].tolist()]
        files = _lane_files(tok, train_split, stream)
        ends = [i + 1 for i, (_, _, closed) in enumerate(files) if closed]
        # (each row starts at a header; its tail may still be being read)
        for a, b in itertools.pairwise([0, *ends]):
            repo = files[a][0]
            assert [r for r, _, _ in files[a:b]] == [repo] * (b - a)
            paths = [p for _, p, _ in files[a:b]]
            assert paths == sorted(p for r, p in train_split.names if r == repo)
            read.add(repo)
    assert read == every_repo


def test_repository_packing_mixes_repositories_within_a_step(small_dataset):
    """One stream for all rows made a step 4 (in training 16) windows of one package, and
    a long sitting trained on one package for an hour: each row reads its own."""
    tok, _, splits = load_dataset(small_dataset)
    train_split = splits["train"]
    assert len({r for r, _ in train_split.names}) >= 4
    loader = PackedLoader(train_split, tok, 128, 4, seed=5, fim_rate=0.0, spm_rate=0.5,
                          repo_packing=True)
    batch = loader.next_batch()
    assert len({lane.repo for lane in loader.lanes}) == 4
    for lane, row in zip(loader.lanes, batch, strict=True):
        headed = [tok.decode(row[i + 1:i + 40].tolist()).split("\n", 1)[0]
                  for i in np.flatnonzero(row == tok.file_sep_id)]
        assert headed and {r for r, p in train_split.names if p in headed} == {lane.repo}
    loader.next_batch()
    assert len({lane.repo for lane in loader.lanes}) == 4


def test_repository_packing_resumes_each_row_and_old_single_stream_positions(
        small_dataset):
    tok, _, splits = load_dataset(small_dataset)
    def make():
        return PackedLoader(splits["train"], tok, 96, 4, seed=2, fim_rate=0.5, spm_rate=0.5,
                            repo_packing=True)
    a = make()
    for _ in range(5):
        a.next_batch()
    state = json.loads(json.dumps(a.state()))     # as a checkpoint stores it
    expected = [a.next_batch() for _ in range(3)]
    b = make()
    b.load_state(state)
    assert all((b.next_batch() == x).all() for x in expected)
    # A position saved when all rows shared one stream (cursor in documents): the first
    # row carries on inside the repository that stream was reading.
    order = a._permutation(0)
    first = order[0]
    old = {"epoch": 0, "cursor": 2, "windows": 7, "buffer": [5, 6]}
    c = make()
    c.load_state(old)
    assert (c.lanes[0].repo, c.lanes[0].next_file, c.lanes[0].buffer) == (first, 2, [5, 6])
    assert all(lane.repo is None for lane in c.lanes[1:])
    c.next_batch()
    assert len({lane.repo for lane in c.lanes}) == 4 and c.lanes[0].repo == first
    bad = dict(state, lanes=[{"repo": "nobody/else", "next_file": 0, "buffer": []}])
    with pytest.raises(DataError, match="'nobody/else'"):
        make().load_state(bad)


def test_retrieval_windows_are_deterministic_resumable_and_need_named_data(
        small_dataset, tmp_path):
    tok, _, splits = load_dataset(small_dataset)
    def make():
        return PackedLoader(splits["train"], tok, 512, 4, seed=7, fim_rate=0.5, spm_rate=0.5,
                            repo_packing=True, repo_rate=1.0, repo_context_tokens=300)
    a, b = make(), make()
    batches = [a.next_batch() for _ in range(3)]
    assert all((x == b.next_batch()).all() for x in batches)
    assert all(x.shape == (4, 513) for x in batches)
    rows = [r.tolist() for x in batches for r in x]
    # every window starts with a retrieval example: (context, the file's header,) FIM
    assert all(r[0] in (tok.file_sep_id, tok.fim_prefix_id) for r in rows)
    with_context = [r for r in rows if r[0] == tok.file_sep_id]
    assert with_context, "no example found a similar window in its repository"
    for r in with_context:
        start = r.index(tok.fim_prefix_id)
        assert r[:start].count(tok.file_sep_id) >= 2   # a window's header and the file's
    state = a.state()
    expected = a.next_batch()
    again = make()
    again.load_state(state)
    assert (again.next_batch() == expected).all()
    # Data prepared before repository names were recorded cannot be packed by repository.
    for f in small_dataset.glob("*.docs.json"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
        f.rename(f.with_suffix(".hidden"))
    try:
        _, _, unnamed = load_dataset(small_dataset)
        assert unnamed["train"].names is None
        with pytest.raises(DataError, match=r"re-run training\.prepare"):
            PackedLoader(unnamed["train"], tok, 64, 1, seed=0, fim_rate=0.5, spm_rate=0.5,
                         repo_rate=0.5)
    finally:
        for f in small_dataset.glob("*.docs.hidden"):
            f.rename(f.with_suffix(".json"))


def test_context_fim_leaves_file_headers_outside_the_examples(small_dataset):
    tok, _, splits = load_dataset(small_dataset)
    loader = PackedLoader(splits["train"], tok, 512, 2, seed=1, fim_rate=1.0, spm_rate=1.0,
                          repo_packing=True)
    found = 0
    for _ in range(20):
        for row in loader.next_batch().tolist():
            for i, t in enumerate(row):
                if t == tok.file_sep_id and i + 1 < len(row):
                    header = tok.decode(row[i + 1:i + 8]).split("\n", 1)[0]
                    assert header.endswith(".py"), header
                    found += 1
    assert found


def test_cpu_tiny_learns(tmp_path, small_dataset):
    run_dir = train(tiny_config(small_dataset, tmp_path, max_steps=200, eval_every=100),
                    log=lambda s: None)
    evals = [m["val_loss"] for m in metrics(run_dir) if "val_loss" in m]
    assert evals[-1] < evals[0] - 1.0, evals    # nats per token, from ln(1024) = 6.93
    assert (run_dir / "best" / "model.safetensors").exists()
    from model.checkpoint import load_model_dir
    assert load_model_dir(run_dir / "best", device="cpu").meta.provenance["step"] == 200


def _train_cmd(cfg_overrides: dict, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "training.train", "--config", "cpu-tiny"]
    for k, v in cfg_overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_then_resume_gives_identical_weights(tmp_path, small_dataset):
    common = TINY | {"data": small_dataset, "max-steps": 60, "checkpoint-every": 10,
                     "eval-every": 30}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_train_cmd(common | {"runs-dir": tmp_path / "a"}), check=True, cwd=ROOT,
                   env=env, capture_output=True, timeout=300)
    # Kill the second run twice at checkpoints, resume until it finishes.
    b = common | {"runs-dir": tmp_path / "b"}
    latest = tmp_path / "b" / "cpu-tiny" / "checkpoints" / "latest.json"
    for kill_after in (20, 40):
        proc = subprocess.Popen(_train_cmd(b, resume=latest.exists()), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            if latest.exists() and json.loads(latest.read_text())["step"] >= kill_after:
                break
            time.sleep(0.05)
        time.sleep(random.Random(kill_after).uniform(0, 0.3))   # somewhere mid-step
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(_train_cmd(b, resume=True), check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=300)
    final = "checkpoints/step_0000060/model.safetensors"
    wa = load_file(tmp_path / "a" / "cpu-tiny" / final)
    wb = load_file(tmp_path / "b" / "cpu-tiny" / final)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_injected_nan_is_skipped_and_repeated_nans_roll_back(tmp_path, small_dataset):
    run_dir = train(tiny_config(small_dataset, tmp_path / "one", max_steps=30,
                                debug_nan_steps="12"), log=lambda s: None)
    m = metrics(run_dir)
    assert max(r.get("skipped_steps", 0) for r in m) == 1
    final = load_file(run_dir / "checkpoints" / "step_0000030" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())
    run_dir = train(tiny_config(small_dataset, tmp_path / "three", max_steps=40,
                                checkpoint_every=10, debug_nan_steps="21,22,23"),
                    log=lambda s: None)
    m = metrics(run_dir)
    rollbacks = [r for r in m if r.get("event") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["lr_factor"] == 0.5
    assert m[-1]["val_loss"] < m[0]["val_loss"]


def test_torchrun_two_processes_match_single_process(tmp_path, small_dataset):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = TINY | {"data": small_dataset, "max-steps": 80, "eval-every": 40,
                     "checkpoint-every": 80}
    subprocess.run(_train_cmd(common | {"runs-dir": tmp_path / "single", "batch-size": 8}),
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    import socket
    with socket.socket() as sock:             # a free port, not a fixed one that may be taken
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={port}", *_train_cmd(
                            common | {"runs-dir": tmp_path / "ddp", "batch-size": 4})[1:]],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # torchrun's own summary hides the worker's error: show the workers' lines instead.
    worker_lines = [ln for ln in r.stderr.splitlines() if "torch/distributed/elastic" not in ln]
    assert r.returncode == 0, "\n".join(worker_lines)[-4000:]
    single = metrics(tmp_path / "single" / "cpu-tiny")
    ddp = metrics(tmp_path / "ddp" / "cpu-tiny")
    assert json.loads((tmp_path / "ddp" / "cpu-tiny" / "config.json").read_text())[
        "world_size"] == 2
    s_val = [m["val_loss"] for m in single if "val_loss" in m]
    d_val = [m["val_loss"] for m in ddp if "val_loss" in m]
    assert len(s_val) == len(d_val) == 3
    assert s_val[0] == pytest.approx(d_val[0], abs=1e-4)       # same init, same val set
    for a, b in zip(s_val[1:], d_val[1:], strict=True):
        assert abs(a - b) < 0.05 * a, (s_val, d_val)
    s_train = [m["train_loss"] for m in single if "train_loss" in m]
    d_train = [m["train_loss"] for m in ddp if "train_loss" in m]
    assert abs(sum(s_train) / len(s_train) - sum(d_train) / len(d_train)) < 0.15


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, small_dataset):
    runs = tmp_path / "runs"
    args = TINY | {"data": small_dataset, "runs-dir": runs, "max-steps": 10,
                   "checkpoint-every": 10, "eval-every": 10}
    subprocess.run(_train_cmd(args), check=True, cwd=ROOT, capture_output=True, timeout=300)
    state = runs / "cpu-tiny" / "checkpoints" / "step_0000010" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    r = subprocess.run(_train_cmd(args | {"max-steps": 20}, resume=True), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert f"checkpoint state {state} is corrupt" in r.stderr and "Traceback" not in r.stderr
    weights = state.with_name("model.safetensors")
    state.unlink()
    weights.write_bytes(b"\x00" * 64)
    r = subprocess.run(_train_cmd(args | {"max-steps": 20}, resume=True), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "state.pt is missing" in r.stderr


def test_init_from_a_checkpoint_or_a_model_dir_starts_from_its_weights(tmp_path,
                                                                        small_dataset):
    from training.checkpoints import CheckpointError
    a = train(tiny_config(small_dataset, tmp_path / "a", max_steps=30, eval_every=30,
                          checkpoint_every=30), log=lambda s: None)
    a_final = [m["val_loss"] for m in metrics(a) if "val_loss" in m][-1]
    # A checkpoint of the same data and seed: its weights and its place in the data.
    said: list[str] = []
    b = train(tiny_config(small_dataset, tmp_path / "b", max_steps=5, eval_every=5,
                          init_from=a / "checkpoints" / "step_0000030"), log=said.append)
    assert next(m["val_loss"] for m in metrics(b) if "val_loss" in m) == \
        pytest.approx(a_final, abs=1e-5)
    assert any("continuing its data order" in s for s in said), said
    from training.plot import tokens_before
    a_tokens = next(m["tokens"] for m in metrics(a) if m["step"] == 30 and "tokens" in m)
    assert tokens_before(b) == a_tokens > 0        # the loss plot continues a's curve
    # A model directory (fine-tuning the shipped model works this way): weights only.
    said.clear()
    c = train(tiny_config(small_dataset, tmp_path / "c", max_steps=5, eval_every=5,
                          init_from=a / "best", seed=1), log=said.append)
    assert next(m["val_loss"] for m in metrics(c) if "val_loss" in m) == \
        pytest.approx(a_final, abs=1e-5)
    assert not any("continuing" in s for s in said), said
    with pytest.raises(CheckpointError, match=r"another model shape.*num_hidden_layers"):
        train(tiny_config(small_dataset, tmp_path / "d", max_steps=5, num_hidden_layers=1,
                          init_from=a / "best"), log=lambda s: None)


def test_config_errors_name_the_setting(small_dataset):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ValueError, match="unknown setting --learning-rate"):
        load_config("cpu-tiny", {"learning-rate": "1"})
    with pytest.raises(ValueError, match="--lr 'fast' is not a valid float"):
        load_config("cpu-tiny", {"lr": "fast"})
    r = subprocess.run(_train_cmd({"data": "/nonexistent/data"}), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "/nonexistent/data has no manifest.json" in r.stderr


def test_evaluation_cases_and_metrics():
    from training.evaluate import compressor_bpb, edit_similarity, fim_cases, line_cases
    assert edit_similarity("return x", "return x") == 1.0
    assert edit_similarity("return y", "return x") == pytest.approx(1 - 1 / 8)
    assert edit_similarity("", "abc") == 0.0
    text = "import os\n\n\ndef f(a, b):\n    total = a + b\n    return total * 2\n"
    for prefix, target, suffix in line_cases([text], 20, random.Random(0)):
        assert text.startswith(prefix + target) and text.endswith(suffix)
        assert prefix + target + suffix == text
        assert "\n" not in target and target.strip()
    for prefix, line, suffix in fim_cases([text], 20, random.Random(0)):
        assert prefix + line + suffix == text and "\n" not in line
    b = compressor_bpb([text * 20])
    assert 0 < b["xz"] < 8 and 0 < b["gzip"] < 8


def test_a_body_shown_looping_is_counted():
    from training.evaluate import shows_loop
    assert shows_loop("    self.x = x\n        self.y = y\n        self.y = y")
    assert shows_loop("    d = {1: True, 1: True, 1: True, 1: True, 1: True, 1: True}")
    assert not shows_loop("    self.x = x\n        self.y = y\n\n\n        return")
    assert not shows_loop("    x = [0, 0, 0, 0, 0, 0, 0, 0]")


def test_evaluate_cli_on_a_trained_run(tmp_path, small_dataset):
    run_dir = train(tiny_config(small_dataset, tmp_path, max_steps=60, eval_every=30),
                    log=lambda s: None)
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "training.evaluate", "--model",
                        str(run_dir / "best"), "--data", str(small_dataset), "--max-files", "5",
                        "--line-cases", "10", "--fim-cases", "10", "--fim-bpb-cases", "6",
                        "--parse-cases", "3", "--memory-files", "3", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert "validation bits/byte (model)" in r.stdout
    res = json.loads(out.read_text())
    assert 0 < res["bits_per_byte"]["model"] < 10
    assert res["bits_per_byte"]["code"] > 0 and res["bits_per_byte"]["prose"] > 0
    assert "model on code / on prose" in r.stdout
    assert res["line_completion"]["cases"] == 10 and res["fim_single_line"]["cases"] == 10
    assert 0 <= res["parse"]["parse_rate"] <= 1 and 0 <= res["parse"]["loops"] <= 1
    # the whole-statements cut only ever turns a body that does not parse into one that does
    assert res["parse"]["parse_rate"] >= res["parse"]["parse_rate_uncut"] >= 0
    assert "before the whole-statements cut" in r.stdout
    assert "sampled bodies shown looping" in r.stdout
    # every body counted as looping is kept to be read
    looping = res["parse"]["looping_samples"]
    assert len(looping) == round(res["parse"]["loops"] * res["parse"]["cases"])
    assert res["fim_bits_per_byte"]["cases"] == 6 and res["fim_bits_per_byte"]["model"] > 0
    assert "FIM middle bits/byte (model)" in r.stdout
    mem = res["memory_bits_per_byte"]
    assert mem["files"] == 3 and mem["tokens"] > 0 and 0 < mem["workspace"] < 10
    assert "with project memory" in r.stdout
    # Only the middle and the <|endoftext|> closing it are scored: with uniform logits each
    # scored token costs log2(vocab) bits, so the total tells how many tokens were counted.
    from model.checkpoint import load_model_dir
    from training.evaluate import fim_bits_per_byte, validation_texts
    lm = load_model_dir(run_dir / "best", device="cpu", dtype="fp32")
    vocab = lm.config.vocab_size

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, vocab)

    lm.model = Uniform()
    texts = validation_texts(str(small_dataset))[:3]
    fb = fim_bits_per_byte(lm, texts, 6, random.Random(7))
    rng, tok, scored = random.Random(7), lm.tokenizer, 0
    window = lm.config.max_position_embeddings * 3 // 4
    for i in range(6):          # the same cases, counted by hand
        ids = tok.encode(texts[i % 3])
        start = rng.randrange(max(1, len(ids) - window + 1))
        piece = tok.decode(ids[start:start + window])
        a, b = sorted(rng.randrange(len(piece) + 1) for _ in range(2))
        scored += len(tok.encode(piece[a:b])) + 1
    assert fb["cases"] == 6
    assert fb["model"] * fb["bytes"] == pytest.approx(scored * math.log2(vocab))
    r = subprocess.run([sys.executable, "-m", "training.evaluate", "--model",
                        str(tmp_path / "nope"), "--data", str(small_dataset)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_muon_trains_and_tensorboard_gets_scalars_and_samples(tmp_path, small_dataset):
    run_dir = train(tiny_config(small_dataset, tmp_path, max_steps=60, eval_every=30,
                                optimizer="muon", sample_every_eval=1), log=lambda s: None)
    evals = [m for m in metrics(run_dir) if "val_loss" in m]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert evals[-1]["samples"] and "completion" in evals[-1]["samples"][0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_s",
            "skipped_steps"} <= tags, tags
    assert any(t.startswith("sample/") for t in acc.Tags()["tensors"])


def test_compiled_loss_matches_eager_and_falls_back_without_a_compiler(small_dataset,
                                                                       monkeypatch):
    import training.train as tt
    from model.transformer import Transformer
    cfg = tiny_config(small_dataset, Path("unused"), compile="true")
    tok, _, _ = load_dataset(small_dataset)
    torch.manual_seed(0)
    model = Transformer(tt.model_config(cfg, tok))
    batch = torch.randint(0, tok.vocab_size, (2, 33))
    eager = tt.NextTokenLoss(model)(batch)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused = tt.compiled(tt.NextTokenLoss(model), cfg, torch.device("cpu"))(batch)
    fused.backward()
    assert torch.allclose(fused, eager, atol=1e-5)
    pairs = zip(model.parameters(), grads, strict=True)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in pairs)
    said = []
    monkeypatch.setattr(tt.shutil, "which", lambda name: None)
    net = tt.NextTokenLoss(model)
    assert tt.compiled(net, cfg, torch.device("cpu"), said.append) is net
    assert said and "C++ compiler" in said[0]


def test_ab_benchmark_gives_both_arms_the_same_seconds(small_dataset):
    from dataclasses import replace

    from benchmarks.ab_gpt2 import GPT2, run
    from model.transformer import Transformer
    from training.train import model_config
    class SlowsDown(torch.nn.Module):
        """Steps ten times slower once the benchmark's 8 calibration steps are over: a
        step count fixed from the calibration would run far past the budget."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 8:
                time.sleep(0.1)
            return self.inner(ids)

    cfg = tiny_config(small_dataset, Path("unused"))
    tok, _, _ = load_dataset(small_dataset)
    ours = run("ours", SlowsDown(Transformer(model_config(cfg, tok))), cfg,
               str(small_dataset), 0.1)
    vocab = model_config(cfg, tok).vocab_size
    base = run("gpt2", GPT2(vocab, cfg.hidden_size, cfg.num_hidden_layers,
                            cfg.num_attention_heads, cfg.seq_len),
               replace(cfg, lr=6e-4, schedule="cosine"), str(small_dataset), 0.1)
    for r in (ours, base):
        assert 6.0 <= r["train_seconds"] < 7.5, r     # the budget, plus at most one step
        assert r["steps"] > 8 and 0 < r["val_bpb"] < 20, r


def test_fim_rate_benchmark_continues_one_checkpoint_per_arm(tmp_path, small_dataset):
    """Each arm starts from the same weights and differs only in its FIM settings."""
    base = train(tiny_config(small_dataset, tmp_path, max_steps=10, eval_every=10,
                             checkpoint_every=10), log=lambda s: None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "benchmarks.fim_rate", "--config", "cpu-tiny",
                        "--init-from", str(base / "checkpoints" / "step_0000010"),
                        "--data", str(small_dataset), "--arms", "context:1,document:1",
                        "--steps", "6", "--runs-dir", str(tmp_path / "arms"),
                        "--eval-args", "--max-files 3 --line-cases 4 --fim-cases 4 "
                        "--fim-bpb-cases 4 --parse-cases 1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| fim-ctx100 | context | 1.0 |" in r.stdout
    report = json.loads((tmp_path / "arms" / "fim_rate.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["fim-ctx100", "fim-doc100"]
    for arm in ("fim-ctx100", "fim-doc100"):
        cfg = json.loads((tmp_path / "arms" / arm / "config.json").read_text())["train"]
        assert cfg["init_from"].endswith("step_0000010") and cfg["fim_rate"] == 1.0
        assert cfg["fim_level"] == arm[4:7].replace("ctx", "context").replace(
            "doc", "document")
    assert all(a["fim_bpb"] > 0 for a in report["arms"])


def test_train_help_lists_every_setting_with_its_default_and_meaning():
    import dataclasses

    from training.config import TrainConfig
    r = subprocess.run([sys.executable, "-m", "training.train", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for f in dataclasses.fields(TrainConfig):
        line = next((x for x in r.stdout.splitlines()
                     if x.strip().startswith(f"--{f.name.replace('_', '-')} ")), None)
        assert line is not None, f.name
        assert "(default: " in line and f.metadata["help"] in line
    assert "cpu-default" in r.stdout


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pack_and_unpack_restore_the_data_exactly_and_refuse_bad_input(small_dataset,
                                                                         tmp_path):
    from training.pack import PackError, pack, unpack

    packed = tmp_path / "data.pack"
    size = pack(small_dataset, packed, log=lambda s: None)
    original = sum(p.stat().st_size for p in small_dataset.iterdir() if p.is_file())
    assert 0 < size < original and any(p.name.endswith(".bin.xz") for p in packed.iterdir())
    restored = unpack(packed, tmp_path / "restored", log=lambda s: None)
    for p in small_dataset.iterdir():
        if p.is_file():
            assert (restored / p.name).read_bytes() == p.read_bytes()
    _, _, splits = load_dataset(restored)
    assert sum(len(s.docs) for s in splits.values()) > 0
    assert unpack(packed, restored, log=lambda s: None) == restored     # again: left as is
    assert restored.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # as mkdir makes it
    # a pack whose index names a path outside the target folder is refused, nothing written
    evil = tmp_path / "evil.pack"
    shutil.copytree(packed, evil)
    index = json.loads((evil / "PACK.json").read_text())
    entry = next(iter(index.values()))
    (evil / "PACK.json").write_text(json.dumps({"../escaped.bin": entry}))
    with pytest.raises(PackError, match=r"'\.\./escaped\.bin'.*not a plain file name"):
        unpack(evil, tmp_path / "evil-out", log=lambda s: None)
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / "evil-out").exists()
    with pytest.raises(PackError, match="already exists"):
        pack(small_dataset, packed, log=lambda s: None)
    with pytest.raises(PackError, match=r"more than 0\.001 MiB"):
        pack(small_dataset, tmp_path / "small.pack", limit_mib=0.001, log=lambda s: None)
    assert not (tmp_path / "small.pack").exists()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(PackError, match="not this pack's data"):
        unpack(packed, user, log=lambda s: None)
    assert (user / "notes.txt").read_text() == "keep me"
    shard = next(p for p in packed.iterdir() if p.name.endswith(".bin.xz"))
    shard.write_bytes(shard.read_bytes()[:-40] + b"\0" * 40)
    with pytest.raises(PackError, match=shard.name):
        unpack(packed, tmp_path / "broken", log=lambda s: None)
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_time_budget_ends_the_run_with_its_schedule_decayed_and_a_checkpoint(
        tmp_path, small_dataset):
    from training.optim import lr_scale

    cfg = load_config("cpu-tiny", {"max_steps": "1000", "warmup_steps": "10",
                                   "schedule": "wsd", "decay_fraction": "0.2",
                                   "min_lr_ratio": "0.1", "time_budget_min": "1"})
    assert lr_scale(100, cfg, wall_s=30) == 1.0                 # half the time: stable
    assert lr_scale(100, cfg, wall_s=54) == pytest.approx(0.55)  # halfway through the decay
    assert lr_scale(100, cfg, wall_s=60) == pytest.approx(0.1)
    untimed = load_config("cpu-tiny", {"max_steps": "1000"})
    assert lr_scale(100, untimed, wall_s=1e6) == lr_scale(100, untimed)   # no budget
    lines = []
    run_dir = train(tiny_config(small_dataset, tmp_path, max_steps=100000, eval_every=100000,
                                checkpoint_every=100000, schedule="wsd", warmup_steps=5,
                                time_budget_min=0.1), log=lines.append)
    m = metrics(run_dir)
    steps = [r["step"] for r in m if "train_loss" in r]
    last = max(steps)
    assert 10 < last < 100000
    assert (run_dir / "checkpoints" / f"step_{last:07d}").is_dir()
    assert [r["step"] for r in m if "val_loss" in r][-1] == last     # evaluated at the end
    lrs = [r["lr"] for r in m if "lr" in r]
    assert lrs[-1] < 0.3 * max(lrs)                                    # decayed in time
    assert any("time budget of 0.1 min reached" in line for line in lines)


def test_gpu_script_runs_end_to_end_in_its_cpu_check(small_dataset, tmp_path):
    """scripts/train_gpu.sh with CHECK=1: the pack unpacked, the real gpu-small model
    trained a few steps on CPU, exported, loaded and evaluated, as on the GPU."""
    from model.checkpoint import load_model_dir
    from training.pack import pack

    pack(small_dataset, tmp_path / "data.pack", log=lambda s: None)
    env = dict(os.environ, CHECK="1", PY=sys.executable, PACK=str(tmp_path / "data.pack"),
               RUNS=str(tmp_path / "runs"), OUT=str(tmp_path / "out"),
               DATA=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    r = subprocess.run([str(ROOT / "scripts" / "train_gpu.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (512, 8)
    assert config["max_position_embeddings"] >= 1024
    assert load_model_dir(tmp_path / "out" / "model", device="cpu").context == 1024
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert math.isfinite(result["bits_per_byte"]["model"])
    assert (tmp_path / "out" / "metrics.jsonl").stat().st_size > 0
    # As on a lent GPU machine: the results as parts of a tar, which put back together
    # give the same model directory.
    env |= {"BUNDLE_MIB": "1", "OUT": str(tmp_path / "bundled"), "NAME": "again"}
    r = subprocess.run([str(ROOT / "scripts" / "train_gpu.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # the model and metrics bundled first; the evaluation beside them, as it may not finish
    out = sorted(p.name for p in (tmp_path / "bundled").iterdir())
    parts = sorted((tmp_path / "bundled").glob("bundle.tar.*"))
    assert len(parts) > 1 and out == sorted([*(p.name for p in parts), "eval.json"])
    assert all(p.stat().st_size <= 2**20 for p in parts)
    joined = tmp_path / "joined"
    joined.mkdir()
    subprocess.run(f"cat {' '.join(str(p) for p in parts)} | tar -xf - -C {joined}",
                   shell=True, check=True)
    assert load_model_dir(joined / "model", device="cpu").context == 1024
    assert (joined / "metrics.jsonl").stat().st_size > 0
    assert json.loads((tmp_path / "bundled" / "eval.json").read_text())["bits_per_byte"]


def _variant_with_base_weights(switches: dict):
    """A recipe-A/B variant and a plain model holding the same shared weights."""
    from benchmarks.ab_recipe import Variant
    from model.config import ModelConfig
    from model.transformer import Transformer

    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=160,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    base = Transformer(cfg)
    variant = Variant(cfg, **switches)
    state = {k.replace("v_proj.proj.", "v_proj."): v for k, v in variant.state_dict().items()}
    missing = [k for k in state if k not in base.state_dict()]
    with torch.no_grad():
        for k, v in base.state_dict().items():
            v.copy_(state[k])
    return base, variant, missing


def test_recipe_ab_variants_change_only_what_they_name():
    ids = torch.randint(0, 512, (2, 24))
    base, softcap, _ = _variant_with_base_weights({"softcap": 15.0})
    logits = base(ids)
    assert logits.abs().max() > 0.1
    assert torch.allclose(softcap(ids), 15 * torch.tanh(logits / 15), atol=1e-5)
    base, gated, missing = _variant_with_base_weights({"relu2_gated": True})
    assert missing == []               # the same weights under the same names as Llama's
    x = torch.randn(3, 64)
    mlp = base.layers[0].mlp
    expected = mlp.down_proj(torch.relu(mlp.gate_proj(x)).square() * mlp.up_proj(x))
    assert torch.allclose(gated.layers[0].mlp(x), expected, atol=1e-6)
    assert not torch.allclose(gated(ids), base(ids), atol=1e-4)

    for switches, extra in (({"unet": True}, "skip_weights"),
                            ({"value_embed": True}, "value_embed.weight")):
        base, variant, missing = _variant_with_base_weights(switches)
        assert missing == [extra]
        variant(ids).float().square().mean().backward()
        param = variant.get_parameter(extra)
        assert param.grad is not None and param.grad.abs().sum() > 0, extra
        assert not torch.allclose(variant(ids), base(ids), atol=1e-4), extra
        with torch.no_grad():        # with the new path switched off, the plain model again
            param.zero_()
        assert torch.allclose(variant(ids), base(ids), atol=1e-5), extra


def test_recipe_ab_same_size_arms_are_the_same_size():
    """relu2 and deep claim the base model's parameter count at the shipped vocabulary."""
    from benchmarks.ab_recipe import ARMS, Variant
    from model.config import ModelConfig
    from model.transformer import Transformer

    shipped = load_config("cpu-default", {})
    def size(overrides: dict, switches: dict) -> int:
        c = load_config("cpu-default", overrides)
        cfg = ModelConfig(vocab_size=16384, hidden_size=c.hidden_size,
                          intermediate_size=c.intermediate_size,
                          num_hidden_layers=c.num_hidden_layers,
                          num_attention_heads=c.num_attention_heads,
                          num_key_value_heads=c.num_key_value_heads,
                          tie_word_embeddings=c.tie_word_embeddings)
        model = Variant(cfg, **switches) if switches else Transformer(cfg)
        return sum(p.numel() for p in model.parameters())

    base = size({}, {})
    for arm in ("relu2", "deep"):
        assert abs(size(ARMS[arm][1], ARMS[arm][2]) / base - 1) < 0.03, arm
    assert size(ARMS["untied"][1], {}) - base == 16384 * shipped.hidden_size


def test_recipe_ab_merges_arms_run_separately(tmp_path, small_dataset):
    from benchmarks.ab_recipe import main

    out = tmp_path / "ab.json"
    common = ["--data", str(small_dataset), "--config", "cpu-tiny", "--minutes", "0.05",
              "--out", str(out)]
    assert main([*common, "--arms", "base"]) == 0
    assert main([*common, "--arms", "unet,softcap"]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["base", "softcap", "unet"]
    assert all(r["steps"] > 8 and 0 < r["val_bpb"] < 20 for r in results.values())
    layers = load_config("cpu-tiny", {}).num_hidden_layers
    assert results["unet"]["params"] == results["base"]["params"] + layers // 2
    with pytest.raises(SystemExit):
        main([*common, "--arms", "vocab8k"])        # no --data-8k
    with pytest.raises(SystemExit):
        main([*common, "--arms", "nonesuch"])


def test_time_budget_is_agreed_on_the_processs_own_device(monkeypatch):
    """Under torchrun every process must agree when the budget is spent; with NCCL the
    all-reduce takes only tensors on the process's GPU (a CPU tensor fails at the first
    check). No second process or GPU can exist here, so the all-reduce is replaced by one
    that records what it was given, and the trainer's device is the meta device: any
    tensor made on the CPU instead is caught."""
    from types import SimpleNamespace

    from training.train import Trainer

    class Reduced(Exception):
        pass

    given = []

    def all_reduce(tensor, op=None):
        given.append(tensor.device)
        raise Reduced

    monkeypatch.setattr("training.train.dist.all_reduce", all_reduce)
    trainer = SimpleNamespace(cfg=SimpleNamespace(time_budget_min=1.0),
                              rs=SimpleNamespace(wall=30.0),
                              dd=SimpleNamespace(world=2), device=torch.device("meta"))
    with pytest.raises(Reduced):
        Trainer.out_of_time(trainer)
    assert given == [torch.device("meta")]
    trainer.dd.world = 1                      # one process: nothing to agree on
    assert Trainer.out_of_time(trainer) is False
    trainer.rs.wall = 61.0
    assert Trainer.out_of_time(trainer) is True
