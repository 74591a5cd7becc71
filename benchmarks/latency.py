"""Completion latency of the real server over stdio, driven like an editor drives it.

    python -m benchmarks.latency [--model DIR] [--files N] [--keys N] [--interval 0.08]

(a) typing: replays held-out Python files keystroke by keystroke (incremental didChange),
    asking for an inline completion after every keystroke and cancelling the previous
    request if it is still pending, as VS Code does; latency is measured for requests
    that were answered (not cancelled).
(b) cold: random positions in freshly opened files, one request each, of three kinds in
    turn: the end of a line, mid-line (code after the cursor), and a blank line whose
    code was removed (a "block body" when the line above opens a block: multi-line).
(c) responsiveness: how long a status request takes while a generation is running.
Also the server's CPU seconds per 100 replayed keystrokes (Linux); `--multiline` sets the
server's multiline setting (auto, never, always), `--debounce` models an editor that waits
before asking (a request is sent only when no key follows within it), and `--human-gaps`
draws the gaps between keys like a person types instead of a fixed `--interval`;
`--context-tokens N` caps the file's prompt (the server's context_tokens setting).
`--workspace DIR` makes DIR the workspace; `--context` turns repository context on (off by
default, as in the server; without a workspace the opened files are the context).
`--while-indexing` times cold requests while the server walks the workspace (its own row,
with the walk's seconds) before the rest, which runs on the finished index.
Files come from the validation split of a prepared dataset (`--data`), else from the
standard library. Prints p50/p95/p99, the server's cache hit rate and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from benchmarks.machine import describe


def held_out_files(data: str | None, n: int, seed: int) -> list[str]:
    if data:
        from training.evaluate import validation_texts
        texts = validation_texts(data)
    else:
        root = Path(sysconfig.get_paths()["stdlib"])
        texts = [p.read_text(encoding="utf-8", errors="replace")
                 for p in sorted(root.glob("*.py"))[:200]]
    texts = [t for t in texts if 2_000 < len(t) < 60_000]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


def position_at(text: str, offset: int) -> types.Position:
    """LSP position (UTF-16 units, the default encoding) of a character offset."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return types.Position(line=line, character=len(text[start:offset].encode("utf-16-le")) // 2)


COLD_KINDS = ("line end", "mid-line", "blank line")


def cold_case(text: str, kind: str, rng: random.Random) -> tuple[str, int, str]:
    """A document, a cursor offset in it and the request's kind ("block body" for a blank
    line under a line ending with a colon), at a random line past the first quarter."""
    starts = [i + 1 for i, c in enumerate(text) if c == "\n" and i >= len(text) // 4]
    for _ in range(100):
        start = rng.choice(starts)
        end = text.find("\n", start)
        end = len(text) if end == -1 else end
        line = text[start:end]
        content = line.lstrip(" \t")
        if len(content) >= 2:
            break
    indent = start + len(line) - len(content)
    if kind == "line end":
        return text, end, kind
    if kind == "mid-line":
        return text, indent + rng.randrange(1, len(content)), kind
    doc = text[:indent] + text[end:]
    above = text[:start].rstrip().rsplit("\n", 1)[-1]
    return doc, indent, "block body" if above.rstrip().endswith(":") else kind


def params(uri: str, pos: types.Position) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri), position=pos,
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic))


def key_gap(args: argparse.Namespace, rng: random.Random) -> float:
    """Seconds until the next keystroke: fixed (`--interval`), or with `--human-gaps` drawn
    like a person types (log-normal around `--interval`, with pauses, 30 ms to 1.5 s)."""
    if not args.human_gaps:
        return args.interval
    return min(1.5, max(0.03, rng.lognormvariate(math.log(args.interval), 0.6)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_stderr(client: LanguageClient, path: Path) -> asyncio.Task:
    """Copy the server's stderr to `path`. pygls's client pipes it and never reads it, so
    a server that logs more than a pipe buffer (64 KB) would block on its next write."""
    async def pump() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            while line := await client._server.stderr.readline():
                out.write(line)
    return asyncio.ensure_future(pump())


async def cold_request(client: LanguageClient, uri: str, doc: str, offset: int) -> float:
    """Open `doc` as a fresh file and time one inline completion at `offset` (ms)."""
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
    t0 = time.perf_counter()
    await client.text_document_inline_completion_async(params(uri, position_at(doc, offset)))
    return (time.perf_counter() - t0) * 1000


async def run(args: argparse.Namespace) -> dict:
    client = LanguageClient("latency-bench", "0")
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda p: None)
    client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: print(p.message, file=sys.stderr))
    cmd = [sys.executable, "-m", "server", "--dtype", args.dtype,
           *(["--quantize", args.quantize] if args.quantize else []),
           *(["--compile", args.compile] if args.compile else [])] + (
        ["--model", args.model] if args.model else [])
    await client.start_io(*cmd)
    stderr_task = drain_stderr(client, Path(args.server_log))
    root = Path(args.workspace).resolve().as_uri() if args.workspace else None
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), process_id=None, root_uri=root,
        workspace_folders=[types.WorkspaceFolder(uri=root, name="w")] if root else None,
        initialization_options={"multiline": args.multiline,
                                "workspace_context": args.context,
                                "memory": not args.no_memory,
                                **({"context_tokens": args.context_tokens}
                                   if args.context_tokens else {})}))
    client.initialized(types.InitializedParams())
    rng = random.Random(args.seed)
    files = held_out_files(args.data, args.files, args.seed)
    # Measured once the server has compiled its decode step (a few seconds after start,
    # during which requests are answered by the eager model; docs/server.md), except
    # while a walk is measured, which starts at once.
    while not args.while_indexing and (await client.protocol.send_request_async(
            "codecomplete/status", {})).decode in ("compile pending", "compiling"):
        await asyncio.sleep(0.1)
    walk_started = time.perf_counter()
    while_indexing: list[float] = []     # cold requests answered while the walk ran
    n = 0
    while root and (await client.protocol.send_request_async(
            "codecomplete/status", {})).workspace_indexing:
        if not args.while_indexing:
            await asyncio.sleep(0.1)
            continue
        uri = f"file:///bench/walking{n}.py"
        doc, offset, _ = cold_case(files[n % len(files)], COLD_KINDS[n % len(COLD_KINDS)], rng)
        while_indexing.append(await cold_request(client, uri, doc, offset))
        n += 1
    walk_seconds = time.perf_counter() - walk_started
    typing, status_ms, context_tokens, prompt_tokens = [], [], [], []
    cold: dict[str, list[float]] = {}
    typing_cpu = 0.0            # the server's CPU seconds while keystrokes are replayed
    sent_requests = 0
    for i, text in enumerate(files):
        # (b) cold: open the file, ask once; each a freshly opened file
        for j in range(args.cold):
            uri = f"file:///bench/cold{i}-{j}.py"
            doc, offset, kind = cold_case(text, COLD_KINDS[j % len(COLD_KINDS)], rng)
            cold.setdefault(kind, []).append(await cold_request(client, uri, doc, offset))
            st = await client.protocol.send_request_async("codecomplete/status", {})
            context_tokens.append(st.last_context_tokens)
            prompt_tokens.append(st.last_prompt_tokens)
        # (a) typing: start at a random line, type the rest of the line and the next ones
        uri = f"file:///bench/typed{i}.py"
        start = text.find("\n", rng.randrange(len(text) // 4, len(text) * 3 // 4)) + 1
        doc = text[:start]
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
        pending: tuple[asyncio.Future, float, str] | None = None
        version = 1
        cpu_before = cpu_seconds(client._server.pid)
        for ch in text[start:start + args.keys]:
            pos = position_at(doc, len(doc))
            doc += ch
            version += 1
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(pos, pos), text=ch)]))
            if pending and not pending[0].done():
                client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=pending[2]))
            gap = key_gap(args, rng)
            if args.debounce and gap < args.debounce:
                await asyncio.sleep(gap)         # the next key comes first: nothing is sent
                continue
            await asyncio.sleep(args.debounce)
            msg_id = f"typed-{i}-{version}"
            fut = client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params(uri, position_at(doc, len(doc))),
                msg_id=msg_id)
            sent_requests += 1
            sent = time.perf_counter()
            fut.add_done_callback(lambda f, s=sent: typing.append(
                (time.perf_counter() - s) * 1000) if not f.exception() else None)
            pending = (fut, sent, msg_id)
            await asyncio.sleep(gap - args.debounce)
        if pending:
            with contextlib.suppress(JsonRpcException):
                await pending[0]
        typing_cpu += cpu_seconds(client._server.pid) - cpu_before
        # (c) a status request while a long generation runs
        body_uri = f"file:///bench/body{i}.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=body_uri, language_id="python", version=1,
                                   text="def process(items):\n    ")))
        gen = client.text_document_inline_completion_async(params(body_uri,
                                                                  types.Position(1, 4)))
        await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        await client.protocol.send_request_async("codecomplete/status", {})
        status_ms.append((time.perf_counter() - t0) * 1000)
        await gen
    status = await client.protocol.send_request_async("codecomplete/status", {})
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    stderr_task.cancel()
    cancelled = sent_requests - len(typing)
    return {"typing": typing, "cold": cold, "status_ms": status_ms, "cancelled": cancelled,
            "while_indexing": while_indexing, "walk_seconds": walk_seconds,
            "cold_context_tokens": statistics.mean(context_tokens) if context_tokens else 0,
            "cold_prompt_tokens": statistics.mean(prompt_tokens) if prompt_tokens else 0,
            "server": status, "sent": sent_requests, "cpu_per_100_keys": typing_cpu * 100 / max(
                1, len(files) * args.keys)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the shipped one)")
    ap.add_argument("--data", default=None, help="prepared dataset for held-out files")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--keys", type=int, default=60, help="keystrokes typed per file")
    ap.add_argument("--interval", type=float, default=0.08, help="seconds between keys")
    ap.add_argument("--cold", type=int, default=3, help="cold requests per file")
    ap.add_argument("--dtype", default="auto", help="the server's --dtype")
    ap.add_argument("--quantize", default=None, choices=("none", "int8"),
                    help="the server's --quantize (default: the server's default)")
    ap.add_argument("--compile", default=None, choices=("auto", "on", "none"),
                    help="the server's --compile (default: the server's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--debounce", type=float, default=0.0,
                    help="seconds an editor waits after a key before asking (0: ask at once)")
    ap.add_argument("--human-gaps", action="store_true",
                    help="variable gaps between keys instead of a fixed --interval")
    ap.add_argument("--multiline", default="auto", choices=("auto", "never", "always"),
                    help="the server's multiline setting")
    ap.add_argument("--workspace", default=None,
                    help="a folder the server indexes as the workspace (repository context)")
    ap.add_argument("--while-indexing", action="store_true",
                    help="with --workspace: time cold requests while the walk runs (a row of "
                         "their own) instead of waiting for it")
    ap.add_argument("--no-memory", action="store_true",
                    help="turn the server's project memory off (on by default)")
    ap.add_argument("--context", action="store_true",
                    help="turn the server's workspace_context on (off by default)")
    ap.add_argument("--context-tokens", type=int, default=None,
                    help="the server's context_tokens (the file's prompt budget; default: "
                         "the server's)")
    ap.add_argument("--server-log", default="logs/latency-server.log",
                    help="the server's stderr")
    args = ap.parse_args(argv)
    r = asyncio.run(run(args))
    s = r["server"]
    print(f"machine: {describe()}")
    print(f"model: {s.model} ({s.device}, {s.dtype}, {s.parameters:,} parameters, "
          f"decode {s.decode}, {s.decode_steps_compiled} compiled steps); "
          f"multiline {args.multiline}; context_tokens {args.context_tokens or 'default'}; "
          f"workspace context "
          f"{'on' if args.context else 'off'} ({args.workspace or 'open files only'}, "
          f"{r['cold_context_tokens']:.0f} context tokens per cold prompt); "
          f"{r['cold_prompt_tokens']:.0f} prompt tokens per cold prompt in all")
    print(f"{'':<28}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}   (ms)")
    kinds = [(f"cold: {kind}", values, "") for kind, values in sorted(r["cold"].items())]
    for name, values, bars in [("typing (answered requests)", r["typing"], "50 / 80"),
                               ("cold (fresh file)",
                                [v for vs in r["cold"].values() for v in vs], "120 / 300"),
                               *kinds,
                               *([(f"cold while indexing ({r['walk_seconds']:.1f} s walk)",
                                   r["while_indexing"], "")] if args.while_indexing else []),
                               ("status during generation", r["status_ms"], "20 (max)")]:
        print(f"{name:<28}{len(values):>6}{pct(values, .5):>9.1f}{pct(values, .95):>9.1f}"
              f"{pct(values, .99):>9.1f}   {'targets p50/p95: ' + bars if bars else ''}")
    print(f"keys {args.files * args.keys}, requests sent {r['sent']} (debounce "
          f"{args.debounce * 1000:.0f} ms, {'human' if args.human_gaps else 'fixed'} gaps); "
          f"typing requests cancelled or superseded: {r['cancelled']}; "
          f"server cache hit rate {s.cache_hit_rate}; KV reuse {s.kv_reuse_rate}; "
          f"mean typing latency {statistics.fmean(r['typing'] or [0]):.1f} ms; server CPU "
          f"{r['cpu_per_100_keys']:.2f} s per 100 keystrokes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
