"""What the rest of the repository adds, measured as a user gets it: the real server over
stdio, held-out repositories opened as the workspace, the rest of a line scored.

    python -m benchmarks.repo_context [--model DIR] [--data data/local-16384] [--cases 400]
        [--feature memory|workspace_context] [--arms off,on,lone]

The feature compared is the project memory (`memory`, completion/cache_lm.py: the
workspace's and the document's own tokens blended into every token) or repository context
in the prompt (`workspace_context`); the other one is off in every arm. Arms: `off`, `on`,
and `lone` (on, but no workspace folder: the document is its own memory).

Cases: files drawn uniformly from the held-out repositories (the validation split of a
prepared dataset: whole repositories the model never trained on) that have at least two
Python files; in each, a random non-blank line and a cursor in it after its indentation or
after a non-identifier character (never inside a word); the target is the rest of the line.

Each repository is written to a temporary folder and becomes the server's workspace
(didChangeWorkspaceFolders). For a case, the edited file (the rest of the line removed)
is written to disk, reported (didChangeWatchedFiles), opened with the same text, and one
automatic inline completion is asked at the cursor; then the original is restored. So
the line being completed exists nowhere the server can read. The same cases run in each
arm, each arm its own server. Prints exact match (the suggestion's first line equals the
rest of the line, trailing blanks aside), edit similarity, apart for cursors after the
indentation (the whole line removed: single-line FIM) and inside a line, the difference,
latency per arm, and the machine; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from benchmarks.latency import drain_stderr, params, pct, position_at
from benchmarks.machine import describe
from completion.words import IDENTIFIER
from training.data import held_out_repos
from training.evaluate import edit_similarity


def cursor_points(line: str) -> list[int]:
    """Columns where a cursor may sit: after the indentation, or after a character that
    cannot continue a name; always with something left to complete."""
    indent = len(line) - len(line.lstrip())
    body_end = len(line.rstrip())
    points = [indent] if indent < body_end else []
    points += [i for i in range(indent + 1, body_end)
               if not IDENTIFIER.match(line[i - 1]) and not line[i - 1].isdigit()]
    return points


def sample_cases(repos: dict[str, dict[str, str]], n: int, seed: int
                 ) -> list[dict[str, object]]:
    rng = random.Random(seed)
    files = [(repo, path) for repo, members in sorted(repos.items()) if len(members) >= 2
             for path in sorted(members)]
    cases = []
    while len(cases) < n and files:
        repo, path = rng.choice(files)
        text = repos[repo][path]
        lines = text.split("\n")
        rows = [i for i, line in enumerate(lines) if len(line.strip()) >= 4]
        if not rows:
            continue
        row = rng.choice(rows)
        points = cursor_points(lines[row])
        if not points:
            continue
        col = rng.choice(points)
        start = sum(len(line) + 1 for line in lines[:row])
        offset = start + col
        end = start + len(lines[row])
        indent = len(lines[row]) - len(lines[row].lstrip())
        cases.append({"repo": repo, "path": path, "offset": offset, "end": end,
                      "target": text[offset:end].rstrip(),
                      "kind": "line" if col == indent else "mid"})
    return cases


def repo_dir(root: Path, repo: str) -> Path:
    return root / repo.replace(":", "_").replace("/", "_")


def write_repos(root: Path, repos: dict[str, dict[str, str]]) -> None:
    for repo, members in repos.items():
        for path, text in members.items():
            out = repo_dir(root, repo) / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")


async def status(client: LanguageClient):
    return await client.protocol.send_request_async("codecomplete/status", {})


async def wait_indexed(client: LanguageClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (await status(client)).workspace_indexing:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not finish indexing the workspace")


def file_event(path: Path, kind: types.FileChangeType) -> types.DidChangeWatchedFilesParams:
    return types.DidChangeWatchedFilesParams(changes=[types.FileEvent(path.as_uri(), kind)])


async def run_arm(args: argparse.Namespace, root: Path, repos: dict[str, dict[str, str]],
                  cases: list[dict], arm: str) -> dict:
    client = LanguageClient("repo-context-bench", "0")
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda p: None)
    client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: print(p.message, file=sys.stderr))
    cmd = [sys.executable, "-m", "server", "--dtype", args.dtype,
           *(["--quantize", args.quantize] if args.quantize else []), "--log-level", "INFO"] + (
        ["--model", args.model] if args.model else [])
    await client.start_io(*cmd)
    stderr_task = drain_stderr(client, Path(f"{args.server_log}.{arm}"))
    options = {"workspace_context": False, "memory": False, "rerank": not args.no_rerank,
               args.feature: arm != "off"}
    if args.memory_weight is not None:
        options["memory_weight"] = args.memory_weight
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
            workspace_folders=True)), process_id=None, initialization_options=options))
    client.initialized(types.InitializedParams())
    by_repo: dict[str, list[int]] = defaultdict(list)
    for i, case in enumerate(cases):
        by_repo[case["repo"]].append(i)
    results: list[dict] = [{} for _ in cases]
    current: types.WorkspaceFolder | None = None
    for repo in sorted(by_repo):
        if arm != "lone":
            folder = types.WorkspaceFolder(uri=repo_dir(root, repo).as_uri(), name=repo)
            client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
                event=types.WorkspaceFoldersChangeEvent(
                    added=[folder], removed=[current] if current else [])))
            current = folder
            await wait_indexed(client)
        for n, i in enumerate(by_repo[repo]):
            case = cases[i]
            text = repos[repo][case["path"]]
            edited = text[:case["offset"]] + text[case["end"]:]
            path = repo_dir(root, repo) / case["path"]
            path.write_text(edited, encoding="utf-8")
            client.workspace_did_change_watched_files(
                file_event(path, types.FileChangeType.Changed))
            if arm != "off":
                await wait_indexed(client)   # a save is not a keystroke: settle, then ask
            uri = path.as_uri()
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=edited)))
            t0 = time.perf_counter()
            answer = await client.text_document_inline_completion_async(
                params(uri, position_at(edited, case["offset"])))
            ms = (time.perf_counter() - t0) * 1000
            used = (await status(client)).last_context_tokens
            path.write_text(text, encoding="utf-8")
            client.text_document_did_close(types.DidCloseTextDocumentParams(
                types.TextDocumentIdentifier(uri)))
            client.workspace_did_change_watched_files(
                file_event(path, types.FileChangeType.Changed))
            items = answer.items if answer else []
            first = items[0].insert_text.split("\n", 1)[0] if items else ""
            results[i] = {"prediction": first, "ms": ms, "context_tokens": used,
                          "exact": first.rstrip() == case["target"],
                          "edit_similarity": edit_similarity(first.rstrip(), case["target"])}
            if args.verbose and n == 0:
                print(f"  {repo}: {case['target']!r} -> {first!r}", file=sys.stderr)
    final = await status(client)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    stderr_task.cancel()
    return {"results": results, "server": {k: getattr(final, k, None) for k in (
        "model", "device", "dtype", "kv_reuse_rate", "latency_p50_ms", "latency_p95_ms",
        "memory_used_rate", "memory_tokens", "memory_files")}}


def summary(arm: dict, cases: list[dict]) -> dict:
    rs = arm["results"]
    ms = [r["ms"] for r in rs]
    by_kind = {}
    for kind in ("line", "mid"):
        kept = [r for r, c in zip(rs, cases, strict=True) if c.get("kind") == kind]
        if kept:
            by_kind[kind] = {"cases": len(kept),
                             "exact_match": sum(r["exact"] for r in kept) / len(kept),
                             "edit_similarity": statistics.mean(r["edit_similarity"]
                                                                for r in kept)}
    return {"exact_match": sum(r["exact"] for r in rs) / len(rs),
            "edit_similarity": statistics.mean(r["edit_similarity"] for r in rs),
            "by_kind": by_kind,
            "empty": sum(not r["prediction"] for r in rs) / len(rs),
            "with_context": sum(r["context_tokens"] > 0 for r in rs) / len(rs),
            "context_tokens_mean": statistics.mean(r["context_tokens"] for r in rs),
            "latency_p50_ms": pct(ms, 0.5), "latency_p95_ms": pct(ms, 0.95)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the shipped one)")
    ap.add_argument("--data", default="data/local-16384",
                    help="prepared dataset whose validation repositories are the cases")
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantize", default=None, choices=("none", "int8"),
                    help="the server's --quantize (default: the server's default)")
    ap.add_argument("--memory-weight", type=float, default=None,
                    help="the server's memory_weight (default: its own)")
    ap.add_argument("--no-rerank", action="store_true", help="turn identifier re-ranking off")
    ap.add_argument("--feature", default="memory", choices=("memory", "workspace_context"))
    ap.add_argument("--arms", default="off,on,lone",
                    help="off, on, lone (on without a workspace folder)")
    ap.add_argument("--server-log", default="logs/repo-context-server.log")
    ap.add_argument("--out", default=None, help="write all cases and results as JSON here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    repos = held_out_repos(args.data)
    cases = sample_cases(repos, args.cases, args.seed)
    used = {c["repo"] for c in cases}
    print(f"{len(cases)} cases from {len(used)} held-out repositories of {args.data}",
          file=sys.stderr)
    arms: dict[str, dict] = {}
    root = Path(tempfile.mkdtemp(prefix="codecomplete-repos-"))
    try:
        write_repos(root, {r: repos[r] for r in used})
        for arm in args.arms.split(","):
            t0 = time.time()
            arms[arm] = asyncio.run(run_arm(args, root, repos, cases, arm))
            arms[arm]["summary"] = summary(arms[arm], cases)
            print(f"arm {arm}: {json.dumps(arms[arm]['summary'])} in {time.time() - t0:.0f} s",
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = describe()
    print(f"\n{args.feature}, {len(cases)} cases from {len(used)} held-out repositories, "
          f"{machine}")
    print(f"{'arm':<5} {'exact':>7} {'edit sim':>9} {'line EM':>8} {'mid EM':>7} {'empty':>7} "
          f"{'w/ ctx':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for name, arm in arms.items():
        s = arm["summary"]
        kinds = s["by_kind"]
        print(f"{name:<5} {s['exact_match']:7.3f} {s['edit_similarity']:9.3f} "
              f"{kinds.get('line', {}).get('exact_match', float('nan')):8.3f} "
              f"{kinds.get('mid', {}).get('exact_match', float('nan')):7.3f} {s['empty']:7.3f} "
              f"{s['with_context']:7.3f} {s['latency_p50_ms']:7.0f} {s['latency_p95_ms']:7.0f}")
    off = arms.get("off", {}).get("summary")
    for name in ("on", "lone"):
        if off and name in arms:
            s = arms[name]["summary"]
            print(f"{name} adds {100 * (s['exact_match'] - off['exact_match']):+.1f} points of "
                  f"exact match, {100 * (s['edit_similarity'] - off['edit_similarity']):+.1f} "
                  f"of edit similarity")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine, "cases": cases,
                                              "arms": arms}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
