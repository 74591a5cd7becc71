"""Repository context: the retriever, the prompt layout, the workspace index (real files on
disk: loops, binaries, huge files, buffers over disk text) and the training examples."""

from __future__ import annotations

import logging
import os
import random
import time

import pytest

from completion.prompt import assemble, context_ids, header_ids
from completion.retrieval import WindowIndex, file_windows, query_words
from completion.settings import EngineSettings, context_budget
from model.tokenizer import SPM
from server.workspace import Limits, Workspace
from training.fim import pick_middle
from training.repo_context import choose_span, copyable, retrieval_example

GEOMETRY = "\n".join([
    "import math", "", "", "class Vector:",
    "    def __init__(self, x, y):", "        self.x = x", "        self.y = y", "",
    "    def length(self):", "        return math.hypot(self.x, self.y)", ""]
    + [f"UNRELATED_{i} = {i}" for i in range(40)])
NOISE = "\n".join(f"print({i})" for i in range(50))
QUERY = ("from geometry import Vector\n\n\ndef norm(v: Vector):\n"
         "    x, y = v.x, v.y\n    return math.hypot(v.x, v.y) / v.len")


def test_windows_overlap_by_half_and_cover_the_file():
    text = "\n".join(f"line_{i}" for i in range(45))
    ws = file_windows("a.py", text)
    assert [(w.start, w.end) for w in ws] == [(0, 20), (10, 30), (20, 40), (30, 45)]
    assert "line_44" in ws[-1].text and "line_0" in ws[0].text


def test_the_query_leaves_out_the_line_being_typed():
    assert query_words(QUERY) == query_words(QUERY + "gth()")
    assert "len" not in query_words(QUERY) and "norm" in query_words(QUERY)


def test_search_ranks_the_similar_window_first_and_never_the_document_itself():
    index = WindowIndex()
    index.set_file("geometry.py", GEOMETRY)
    index.set_file("noise.py", NOISE)
    index.set_file("me.py", QUERY)
    hits = index.search(query_words(QUERY), exclude="me.py")
    assert hits and hits[0][1].path == "geometry.py" and hits[0][1].start == 0
    assert all(w.path != "me.py" for _, w in hits)
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)
    spans = [(w.start, w.end) for _, w in hits if w.path == "geometry.py"]
    assert all(a[1] <= b[0] or b[1] <= a[0] for a in spans for b in spans if a != b)
    assert index.search(query_words("zzz = 1\nqqq = 2\nq"), exclude="me.py") == []
    index.set_file("geometry.py", "nothing = 'here'\n")            # replaced
    assert all(w.path != "geometry.py" for _, w in index.search(query_words(QUERY)))
    index.remove_file("noise.py")
    assert index.paths() == ["me.py", "geometry.py"] or set(index.paths()) == {
        "me.py", "geometry.py"}


def test_context_layout_is_exact_best_last_and_within_budget(tokenizer):
    chunks = [("pkg/best.py", "def best():\n    pass"), ("pkg/second.py", "X = 2")]
    ids = context_ids(tokenizer, chunks, "pkg/me.py", 1000)
    fs = tokenizer.file_sep_id
    expected = ([fs, *tokenizer.encode("pkg/second.py\n"), *tokenizer.encode("X = 2\n"),
                 fs, *tokenizer.encode("pkg/best.py\n"),
                 *tokenizer.encode("def best():\n    pass\n"),
                 fs, *tokenizer.encode("pkg/me.py\n")])
    assert ids == expected
    assert header_ids(tokenizer, "a.py") == [fs, *tokenizer.encode("a.py\n")]
    # The budget takes the best first: with room for one chunk, the best one is kept.
    best = header_ids(tokenizer, "pkg/best.py") + tokenizer.encode("def best():\n    pass\n")
    one = context_ids(tokenizer, chunks, "pkg/me.py", len(best))
    assert one == best + header_ids(tokenizer, "pkg/me.py")
    assert context_ids(tokenizer, chunks, "pkg/me.py", 3) == []
    prompt = assemble(tokenizer, SPM, ids, tokenizer.encode("a = "), tokenizer.encode("\n"))
    assert prompt[:len(ids)] == ids and prompt[len(ids)] == tokenizer.fim_prefix_id


def test_context_budget_leaves_the_file_most_of_the_window():
    s = EngineSettings(workspace_context=True)
    assert context_budget(s, 1024) == 384
    assert context_budget(s, 512) == int((512 - 64) * 0.4)
    assert context_budget(EngineSettings(), 1024) == 0          # off by default


def write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def indexed(ws: Workspace) -> set[str]:
    assert ws.done.wait(30)
    return {os.path.basename(p) for p in ws.index.paths()}


def test_workspace_skips_what_is_not_the_users_code(tmp_path, caplog, monkeypatch):
    write(tmp_path / "pkg" / "geometry.py", GEOMETRY)
    write(tmp_path / "pkg" / "sub" / "deep.py", "def deep_helper():\n    return 1\n")
    write(tmp_path / ".git" / "hook.py", "X = 1\n")
    write(tmp_path / "node_modules" / "x.py", "X = 1\n")
    write(tmp_path / "myenv" / "pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path / "myenv" / "lib" / "site.py", "X = 1\n")
    write(tmp_path / "latin1.py", "name = 'caf\xe9'\n".encode("latin-1"))
    write(tmp_path / "binary.py", b"\x00\x01\x02 binary")
    write(tmp_path / "huge.py", "x = 1\n" * 200_000)            # 1.2 MB
    write(tmp_path / "notes.txt", "not python\n")
    os.symlink(tmp_path, tmp_path / "pkg" / "loop")             # a symlink loop
    os.symlink(tmp_path / "pkg" / "geometry.py", tmp_path / "link.py")
    (tmp_path / "locked").mkdir()
    write(tmp_path / "locked" / "secret.py", "X = 1\n")
    os.chmod(tmp_path / "locked", 0)
    if os.geteuid() == 0:
        # root reads any folder: a denied listing cannot happen here, so it is simulated
        # (the one mock of this test) as the OSError os.scandir raises for other users.
        from server import workspace as workspace_module
        real = os.scandir

        def scandir(path):
            if os.path.basename(path) == "locked":
                raise PermissionError(13, "Permission denied", path)
            return real(path)
        monkeypatch.setattr(workspace_module.os, "scandir", scandir)
    try:
        ws = Workspace()
        with caplog.at_level(logging.INFO, logger="codecomplete"):
            ws.set_folders((str(tmp_path),))
            assert indexed(ws) == {"geometry.py", "deep.py"}
            assert ws.skipped["unreadable_folders"] == 1
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "workspace index: " in message and "binary or non utf8 files" in message
    assert "files over the size limit" in message and "symbolic links" in message
    assert message.count("workspace index: ") == 1             # said once


def test_workspace_limits_bound_a_huge_tree(tmp_path):
    for i in range(300):
        write(tmp_path / f"d{i % 7}" / f"m{i}.py", f"def f_{i}():\n    return {i}\n")
    ws = Workspace(Limits(files=50))
    t0 = time.monotonic()
    ws.set_folders((str(tmp_path),))
    assert len(indexed(ws)) == 50 and time.monotonic() - t0 < 10
    assert ws.skipped["files_past_the_file_limit"] == 250


def test_buffers_replace_disk_text_and_the_target_line_never_leaks(tmp_path, tokenizer):
    """The benchmark's promise: the line being completed reaches the prompt from nowhere,
    even when the disk copy of the document still has it (a stale file) and another file
    is open with unsaved edits (indexed on the workspace's thread after the request that
    finds them, for the requests after it)."""
    target = "    return math.hypot(self.x, self.y) * SECRET_SCALE"
    me = tmp_path / "me.py"
    write(me, GEOMETRY.replace("        return math.hypot(self.x, self.y)", target))
    write(tmp_path / "other.py", GEOMETRY.replace("UNRELATED", "OTHER"))
    ws = Workspace()
    ws.set_folders((str(tmp_path),))
    assert indexed(ws) == {"me.py", "other.py"}
    buffer = GEOMETRY.split("    def length")[0] + "    def length(self):\n        return "
    ws.set_document(str(me), buffer)
    ws.set_document(str(tmp_path / "other.py"), "def unsaved_helper_name():\n    pass\n"
                    + GEOMETRY)
    first = tokenizer.decode(ws.context(tokenizer, buffer, str(me), 400))
    assert "SECRET_SCALE" not in first and "unsaved_helper_name" not in first
    assert ws.wait_for_events(10)
    ids = ws.context(tokenizer, buffer, str(me), 400)
    text = tokenizer.decode(ids)
    assert ids and "SECRET_SCALE" not in text and "unsaved_helper_name" in text
    assert ids[-len(header_ids(tokenizer, "me.py")):] == header_ids(tokenizer, "me.py")
    assert ws.context(tokenizer, buffer + "math.hy", str(me), 400) is ids   # cached
    ws.close_document(str(tmp_path / "other.py"))
    assert ws.wait_for_events(10)                       # the disk text is read off the loop
    text = tokenizer.decode(ws.context(tokenizer, buffer, str(me), 400))
    assert "unsaved_helper_name" not in text and "OTHER_1" in text       # disk again


def test_file_events_update_the_index_and_a_vanished_folder_is_no_error(tmp_path):
    write(tmp_path / "a.py", GEOMETRY)
    ws = Workspace()
    ws.set_folders((str(tmp_path),))
    assert indexed(ws) == {"a.py"}
    write(tmp_path / "b.py", NOISE)
    ws.file_changed(str(tmp_path / "b.py"))
    assert {os.path.basename(p) for p in ws.index.paths()} == {"a.py", "b.py"}
    (tmp_path / "a.py").unlink()
    ws.file_changed(str(tmp_path / "a.py"))
    ws.file_changed("/elsewhere/c.py")                         # outside the workspace
    assert {os.path.basename(p) for p in ws.index.paths()} == {"b.py"}
    ws.set_folders((str(tmp_path / "gone"),))
    assert indexed(ws) == set()


def test_a_file_indexed_again_counts_once_and_an_old_walk_adds_nothing(tmp_path):
    """The walk and the file events may index the same path from two threads: its bytes
    count once toward the limits, and a walk whose folders changed meanwhile adds no
    file of the old folders."""
    write(tmp_path / "a.py", GEOMETRY)
    write(tmp_path / "b.py", NOISE)
    ws = Workspace()
    ws.set_folders((str(tmp_path),))
    assert indexed(ws) == {"a.py", "b.py"}
    size = (tmp_path / "a.py").stat().st_size
    total = ws._bytes
    for _ in range(3):
        ws._index_disk_file(str(tmp_path / "a.py"), size)
        ws.file_changed(str(tmp_path / "a.py"))
    assert ws._bytes == total and len(ws._sizes) == 2
    ws.file_changed(str(tmp_path / "sub" / ".." / "a.py"))      # the same file, spelled so
    assert ws._bytes == total and len(ws._sizes) == 2
    old = ws._scan
    ws.set_folders((str(tmp_path / "other"),))
    assert ws.done.wait(10) and indexed(ws) == set()
    ws._index_disk_file(str(tmp_path / "b.py"), size, scan=old)   # the old walk, late
    assert indexed(ws) == set() and ws._bytes == 0


@pytest.mark.parametrize("seed", range(20))
def test_training_examples_are_server_prompts_with_the_middle(tokenizer, seed):
    index = WindowIndex()
    index.set_file("geometry.py", GEOMETRY)
    index.set_file("noise.py", NOISE)
    text = QUERY + "gth()\n\nprint(norm(Vector(1, 2)))\n"
    index.set_file("me.py", text)
    rng = random.Random(seed)
    a, b = pick_middle(text, random.Random(seed))
    assert text[a:b].strip() and "\n" not in text[a:a + 1]
    ids = retrieval_example(tokenizer, text, "me.py", index, rng, 512, 200, spm_rate=1.0)
    assert 0 < len(ids) <= 513
    fs = tokenizer.file_sep_id
    me = header_ids(tokenizer, "me.py")
    if fs in ids:          # context, then the document's header, then the FIM prompt
        start = ids.index(tokenizer.fim_prefix_id)
        assert ids[start - len(me):start] == me and ids[0] == fs
        assert "geometry.py" in tokenizer.decode(ids[:start]) or "noise.py" in \
            tokenizer.decode(ids[:start])
    middle = ids[ids.index(tokenizer.fim_middle_id) + 1:]
    # SPM: prefix then middle then <|endoftext|>; together they end where the middle does.
    assert middle[-1] == tokenizer.eot_id
    assert text[:b].endswith(tokenizer.decode(middle[:-1]))


def test_several_tries_prefer_middles_the_context_can_supply(tokenizer):
    """repo_tries: of many cursors, the kept one's middle is in the retrieved windows far
    more often than a single draw's."""
    index = WindowIndex()
    index.set_file("geometry.py", GEOMETRY)
    text = GEOMETRY.replace("UNRELATED", "OWN") + "\n"
    index.set_file("me.py", text)
    hits = index.search(query_words(text[:200]), exclude="me.py")
    assert copyable("        return math.hypot(self.x, self.y)", hits)
    assert not copyable("print(nothing_like_it)", hits)

    def share(tries: int) -> float:
        spans = [choose_span(text, "me.py", index, random.Random(seed), tries)
                 for seed in range(60)]
        return sum(copyable(text[a:b], found) for a, b, found in spans) / len(spans)

    assert share(6) > share(1) + 0.2


def test_changing_one_file_again_and_again_does_not_use_up_the_limits(tmp_path):
    """The limits count files and bytes indexed now, not indexing events: a file saved a
    hundred times is one file."""
    write(tmp_path / "a.py", GEOMETRY)
    write(tmp_path / "b.py", NOISE)
    ws = Workspace(Limits(files=2))
    ws.set_folders((str(tmp_path),))
    assert indexed(ws) == {"a.py", "b.py"}
    for _ in range(100):
        ws.file_changed(str(tmp_path / "a.py"))
    (tmp_path / "b.py").unlink()
    ws.file_changed(str(tmp_path / "b.py"))
    write(tmp_path / "c.py", NOISE)
    ws.file_changed(str(tmp_path / "c.py"))
    assert {os.path.basename(p) for p in ws.index.paths()} == {"a.py", "c.py"}
    assert ws.skipped["files_past_the_file_limit"] == 0
