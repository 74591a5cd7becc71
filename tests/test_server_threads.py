"""The model's work stays on one thread (server/threads.py), checked in-process: the real
pygls protocol reading real LSP frames from an asyncio stream, the tiny model loaded the
way `python -m server` loads it."""

from __future__ import annotations

import asyncio
import json
import threading

from server.cli import load_engine, parse_args
from server.lsp import build_server
from server.threads import new_model_thread, on_own_thread
from server.transport import read_messages
from tests.test_server_smoke import frame


class Collected:
    """The server's output stream, kept in memory and split into messages."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def messages(self) -> list[dict]:
        out, rest = [], self.data
        while rest:
            head, _, rest = rest.partition(b"\r\n\r\n")
            n = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
            out.append(json.loads(rest[:n]))
            rest = rest[n:]
        return out


async def test_the_model_is_loaded_warmed_and_served_on_one_thread(tiny_model_dir):
    """Loading, the warm-up and every request run on the model's one thread; the compile
    runs on another thread, which is gone once it is done (its OpenMP team with it)."""
    model_thread = new_model_thread()
    loader = model_thread.submit(threading.get_ident).result()
    engine, error = model_thread.submit(load_engine, parse_args(
        ["--model", str(tiny_model_dir), "--compile", "on"])).result()
    assert error is None
    ran: dict[str, set[int]] = {}

    def recording(name: str):
        method = getattr(engine, name)

        def recorded(*a, **k):
            ran.setdefault(name, set()).add(threading.get_ident())
            return method(*a, **k)
        return recorded
    for name in ("warmup", "compile_step", "complete"):
        setattr(engine, name, recording(name))
    server = build_server(engine, None, model_thread)
    out = Collected()
    server.protocol.set_writer(out)
    reader = asyncio.StreamReader()
    uri, text = "file:///ws/a.py", "def total(values):\n    return sum(val"
    for msg in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"capabilities": {}, "rootUri": "file:///ws"}},
            {"jsonrpc": "2.0", "method": "initialized", "params": {}},
            {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": uri, "languageId": "python", "version": 1, "text": text}}},
            {"jsonrpc": "2.0", "id": 2, "method": "textDocument/completion", "params": {
                "textDocument": {"uri": uri}, "position": {"line": 1, "character": 18}}}):
        reader.feed_data(frame(msg))
    serving = asyncio.ensure_future(read_messages(threading.Event(), reader, server))
    for _ in range(1200):                    # the compile of the tiny model: a few seconds
        await asyncio.sleep(0.05)
        if server.warmup_task is not None and server.warmup_task.done() \
                and any(m.get("id") == 2 for m in out.messages()):
            break
    reader.feed_data(frame({"jsonrpc": "2.0", "id": 3, "method": "textDocument/completion",
                            "params": {"textDocument": {"uri": uri},
                                       "position": {"line": 1, "character": 18}}}))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if any(m.get("id") == 3 for m in out.messages()):
            break
    reader.feed_eof()
    await serving
    answered = {m["id"]: m for m in out.messages() if "id" in m}
    assert "result" in answered[2] and "result" in answered[3], answered
    assert engine.decode.startswith("compiled"), engine.decode
    assert ran["warmup"] == ran["complete"] == {loader}
    (compiler,) = ran["compile_step"]
    assert compiler != loader
    assert compiler not in {t.ident for t in threading.enumerate()}
    model_thread.shutdown()


async def test_on_own_thread_runs_on_a_thread_that_then_ends():
    ident = await on_own_thread(threading.get_ident, "codecomplete-test")
    assert ident != threading.get_ident()
    assert ident not in {t.ident for t in threading.enumerate()}
