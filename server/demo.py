"""Show one completion end to end: start `server` over stdio as an editor would, open a
Python document, ask for an inline completion at the cursor and print it.

    python -m server.demo [--model DIR] [--file FILE]   (cursor at the end of FILE)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

SAMPLE = "def fibonacci(n):\n    "


async def demo(text: str, model: str | None) -> str:
    client = LanguageClient("codecomplete-demo", "0.1")
    cmd = [sys.executable, "-m", "server"] + (["--model", model] if model else [])
    messages: list[str] = []
    client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: messages.append(p.message))
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda p: None)
    await client.start_io(*cmd)
    try:
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), process_id=None))
        client.initialized(types.InitializedParams())
        uri = "file:///demo/example.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        lines = text.split("\n")
        pos = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
        result = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri), position=pos,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
        status = await client.protocol.send_request_async("codecomplete/status", {})
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        await client.stop()
    if messages:
        raise SystemExit(messages[0])
    items = result.items if result else []
    completion = items[0].insert_text if items else ""
    print(f"model: {status.model} ({status.device}, {status.dtype}), "
          f"{status.latency_p50_ms} ms", file=sys.stderr)
    return completion if isinstance(completion, str) else completion.value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--file", type=Path)
    args = ap.parse_args(argv)
    text = args.file.read_text(encoding="utf-8") if args.file else SAMPLE
    completion = asyncio.run(demo(text, args.model))
    print("----- prompt " + "-" * 40)
    print(text, end="")
    print("\033[2m" + completion + "\033[0m" if sys.stdout.isatty() else completion)
    print("-" * 53)
    print("(completion was empty)" if not completion.strip() else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
