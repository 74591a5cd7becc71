"""First-suggestion identifier accuracy: codecomplete vs jedi-language-server.

    python -m benchmarks.vs_jedi [--model DIR] [--data data/NAME] [--cases 200]

On held-out files, pick identifiers that start a token inside code (not in comments or
strings, at least 4 characters, not a keyword) and type their first character. The case
counts as right for a server when its first suggestion completes exactly that identifier:
for both, the first `textDocument/completion` item must complete exactly that identifier
(codecomplete inserts the name's rest at the cursor, jedi the whole name). Both
servers see the same document (everything after the cursor removed, as while typing),
and take turns by batches of cases, so that a machine's drift in speed hits both alike.
Needs `pip install jedi-language-server`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import keyword
import random
import re
import sys
import time
import tokenize
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from benchmarks.latency import held_out_files, position_at
from benchmarks.machine import describe

IDENT_REST = re.compile(r"\w*")


def cases(files: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """(document up to and including the identifier's first character, identifier)."""
    rng = random.Random(seed)
    out = []
    for text in files:
        try:
            toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                    if t.type == tokenize.NAME and len(t.string) >= 4
                    and not keyword.iskeyword(t.string)]
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        lines = text.split("\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        for t in rng.sample(toks, min(len(toks), max(1, n // max(1, len(files))))):
            start = offsets[t.start[0] - 1] + t.start[1]
            out.append((text[:start + 1], t.string))
    rng.shuffle(out)
    return out[:n]


async def start(cmd: list[str]) -> LanguageClient:
    client = LanguageClient("vs-jedi", "0")
    for method in (types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE,
                   types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS):
        client.feature(method)(lambda p: None)
    await client.start_io(*cmd)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), process_id=None, root_uri="file:///bench"))
    client.initialized(types.InitializedParams())
    return client


BATCH = 10      # cases a server answers before the other takes its turn
PAUSE_S = 0.3   # between turns: the server that just answered goes idle (its threads stop
#                 spinning) before the other is timed


async def ask(client: LanguageClient, uri: str, doc: str) -> tuple[str, float]:
    """Open `doc`, ask for completions at its end, close it: (first item's text, ms). An
    error answer (jedi raises on some code) counts as no suggestion."""
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
    pos = position_at(doc, len(doc))
    t0 = time.perf_counter()
    try:
        res = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=pos))
    except JsonRpcException:          # the server failed on this case: no suggestion
        res = None
    ms = (time.perf_counter() - t0) * 1000
    items = (res.items if hasattr(res, "items") else res) or []
    first = items[0] if items else None
    text = ((first.text_edit.new_text if first and first.text_edit else None)
            or (first.insert_text if first else None)
            or (first.label if first else ""))
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        types.TextDocumentIdentifier(uri)))
    return text, ms


async def run(args: argparse.Namespace) -> dict:
    """Both servers answer the same cases, taking turns by BATCH cases (the first to go
    alternates): a machine whose speed drifts over minutes (a shared host's 2 cores
    here) slows both alike, where timing one server's run after the other's did not."""
    files = held_out_files(args.data, args.files, args.seed)
    todo = cases(files, args.cases, args.seed)
    ours_cmd = [sys.executable, "-m", "server", "--temperature", "0"] + (
        ["--model", args.model] if args.model else [])
    jedi_cmd = [str(Path(sys.executable).with_name("jedi-language-server"))]
    clients = {"codecomplete": await start(ours_cmd),
               "jedi-language-server": await start(jedi_cmd)}
    while (await clients["codecomplete"].protocol.send_request_async(
            "codecomplete/status", {})).decode in ("compile pending", "compiling"):
        await asyncio.sleep(0.1)               # timed as served once warm (docs/server.md)
    right = dict.fromkeys(clients, 0)
    times: dict[str, list[float]] = {name: [] for name in clients}
    for turn, at in enumerate(range(0, len(todo), BATCH)):
        order = list(clients) if turn % 2 == 0 else list(reversed(clients))
        for name in order:
            for i in range(at, min(at + BATCH, len(todo))):
                doc, ident = todo[i]
                text, ms = await ask(clients[name], f"file:///bench/case{i}.py", doc)
                # ours inserts the name's rest at the cursor, jedi the whole name
                guess = ident[0] + IDENT_REST.match(text).group(0) \
                    if name == "codecomplete" else text
                times[name].append(ms)
                right[name] += guess == ident
            await asyncio.sleep(PAUSE_S)
    for client in clients.values():
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
    results = {}
    for name in clients:
        ms = sorted(times[name])
        results[name] = {"accuracy": right[name] / max(1, len(todo)), "cases": len(todo),
                         "p50_ms": ms[len(ms) // 2] if ms else None,
                         "p95_ms": ms[int(0.95 * len(ms))] if ms else None}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = asyncio.run(run(args))
    print(f"machine: {describe()}")
    for name, v in r.items():
        print(f"{name:<22} first-suggestion identifier accuracy {v['accuracy']:.3f} "
              f"({v['cases']} cases), p50 {v['p50_ms']:.0f} ms, p95 {v['p95_ms']:.0f} ms")
    ours, jedi = r["codecomplete"]["accuracy"], r["jedi-language-server"]["accuracy"]
    print(f"ratio {ours / jedi if jedi else float('inf'):.2f} (target: at least 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
