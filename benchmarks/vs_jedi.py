"""First-suggestion identifier accuracy: codecomplete vs jedi-language-server.

    python -m benchmarks.vs_jedi [--model DIR] [--data data/NAME] [--cases 200]

On held-out files, pick identifiers that start a token inside code (not in comments or
strings, at least 4 characters, not a keyword) and type their first character. The case
counts as right for a server when its first suggestion completes exactly that identifier:
for both, the first `textDocument/completion` item must complete exactly that identifier
(codecomplete inserts the name's rest at the cursor, jedi the whole name). Both
servers see the same document (everything after the cursor removed, as while typing).
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


async def run(args: argparse.Namespace) -> dict:
    files = held_out_files(args.data, args.files, args.seed)
    todo = cases(files, args.cases, args.seed)
    ours_cmd = [sys.executable, "-m", "server", "--temperature", "0"] + (
        ["--model", args.model] if args.model else [])
    jedi_cmd = [str(Path(sys.executable).with_name("jedi-language-server"))]
    results = {}
    for name, cmd in (("codecomplete", ours_cmd), ("jedi-language-server", jedi_cmd)):
        client = await start(cmd)
        while name == "codecomplete" and (await client.protocol.send_request_async(
                "codecomplete/status", {})).decode in ("compile pending", "compiling"):
            await asyncio.sleep(0.1)           # timed as served once warm (docs/server.md)
        right, times = 0, []
        for i, (doc, ident) in enumerate(todo):
            uri = f"file:///bench/case{i}.py"
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
            pos = position_at(doc, len(doc))
            t0 = time.perf_counter()
            res = await client.text_document_completion_async(types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri), position=pos))
            items = (res.items if hasattr(res, "items") else res) or []
            first = items[0] if items else None
            text = ((first.text_edit.new_text if first and first.text_edit else None)
                    or (first.insert_text if first else None)
                    or (first.label if first else ""))
            # ours inserts the name's rest at the cursor, jedi the whole name
            guess = ident[0] + IDENT_REST.match(text).group(0) if name == "codecomplete" \
                else text
            times.append((time.perf_counter() - t0) * 1000)
            right += guess == ident
            client.text_document_did_close(types.DidCloseTextDocumentParams(
                types.TextDocumentIdentifier(uri)))
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        times.sort()
        results[name] = {"accuracy": right / max(1, len(todo)), "cases": len(todo),
                         "p50_ms": times[len(times) // 2] if times else None}
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
              f"({v['cases']} cases), p50 {v['p50_ms']:.0f} ms")
    ours, jedi = r["codecomplete"]["accuracy"], r["jedi-language-server"]["accuracy"]
    print(f"ratio {ours / jedi if jedi else float('inf'):.2f} (target: at least 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
