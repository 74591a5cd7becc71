"""The `server` entry point over real stdio, driven by a real LSP client (pygls)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient


def frame(msg: dict) -> bytes:
    """One JSON-RPC message as LSP frames it on the wire."""
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def session(text: str, *requests: dict) -> bytes:
    """A whole client session, framed, to write at once: initialize, open `text` as
    file:///t/s.py, `requests`, shutdown (id 99) and exit."""
    return b"".join(frame(m) for m in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"capabilities": {}, "processId": None}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///t/s.py", "languageId": "python", "version": 1, "text": text}}},
        *requests,
        {"jsonrpc": "2.0", "id": 99, "method": "shutdown", "params": None},
        {"jsonrpc": "2.0", "method": "exit", "params": None}))


TEXT = ("class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
        "    def get_value(self):\n        return self.va")


async def start(model_dir, *extra: str) -> tuple[LanguageClient, list[str]]:
    """A server over stdio; `--compile none` unless `extra` says otherwise (compiling in
    the background only slows the other tests down; one test below is about it)."""
    extra = extra if "--compile" in extra else (*extra, "--compile", "none")
    client = LanguageClient("test", "0")
    shown: list[str] = []
    client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: shown.append(p.message))
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda p: None)
    await client.start_io(sys.executable, "-m", "server", "--model", str(model_dir),
                          "--temperature", "0", *extra)
    result = await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), process_id=None))
    assert result.capabilities.inline_completion_provider is not None
    assert result.capabilities.completion_provider is not None
    client.initialized(types.InitializedParams())
    return client, shown


async def stop(client: LanguageClient) -> None:
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


@pytest.mark.parametrize("extra", [(), ("--quantize", "int8")])
async def test_inline_and_classic_completion_over_stdio(tiny_model_dir, extra):
    client, shown = await start(tiny_model_dir, *extra)
    try:
        uri = "file:///t/node.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=TEXT)))
        pos = types.Position(line=5, character=len("        return self.va"))
        doc = types.TextDocumentIdentifier(uri)
        inline = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=doc, position=pos,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        assert inline.items and inline.items[0].insert_text.startswith("lue")
        classic = await client.text_document_completion_async(
            types.CompletionParams(text_document=doc, position=pos))
        assert classic.items[0].text_edit.new_text.startswith("lue")
        assert classic.items[0].label.startswith("value")     # the whole name is shown
        unknown = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier("file:///nope.py"), position=pos,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
        assert len(unknown.items) == 0
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.requests == 2 and status.device == "cpu"
        assert not shown
    finally:
        await stop(client)


async def test_threads_sets_the_models_thread_count(tiny_model_dir):
    """`--threads 1`: the model runs on one CPU thread (the status request says so, from
    the server's own process) and still answers; a count below 1 is refused in one line
    naming it, before anything loads."""
    client, shown = await start(tiny_model_dir, "--threads", "1")
    try:
        uri = "file:///t/node.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=TEXT)))
        inline = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(line=5, character=len("        return self.va")),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        assert inline is not None                # answered (what, is the model's)
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.threads == 1 and status.requests == 1 and not shown
    finally:
        await stop(client)
    bad = subprocess.run([sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                          "--threads", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'0' is not a whole number of threads" in bad.stderr


async def test_the_server_compiles_its_decode_step_and_answers_the_same(tiny_model_dir):
    """`--compile on`: the status says "compiling" then "compiled"; requests during the
    compile are answered (by the eager model), and those after it (other cursors: the
    answer cache would serve a repeat) are the eager server's, request for request."""
    func = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f."
    early = [TEXT, TEXT[:-2]]
    later = [func, func[:-9], TEXT + "lue\n\n    ", TEXT[:-5]]   # blank lines: greedy

    async def answers(client: LanguageClient, texts: list[str], tag: str) -> list[str]:
        out = []
        for i, text in enumerate(texts):
            uri = f"file:///t/{tag}{i}.py"
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
            lines = text.split("\n")
            r = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(line=len(lines) - 1, character=len(lines[-1])),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
            out.append(r.items[0].insert_text if r.items else "")
            # the buffers left are counted into the project memory on the workspace's
            # thread after an answer: the next request must see the same memory in both
            # servers, not whatever the thread had finished by then
            deadline = time.monotonic() + 60
            while (await client.protocol.send_request_async(
                    "codecomplete/status", {})).workspace_indexing \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return out

    client, shown = await start(tiny_model_dir, "--compile", "on")
    try:
        status = await client.protocol.send_request_async("codecomplete/status", {})
        seen = {status.decode}
        during = await answers(client, early, "early")
        deadline = time.monotonic() + 300
        while not status.decode.startswith(("compiled", "eager:")) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = await client.protocol.send_request_async("codecomplete/status", {})
            seen.add(status.decode)
        assert status.decode.startswith("compiled"), status.decode
        assert seen & {"compile pending", "compiling"}        # it started eager, in the background
        fast = await answers(client, later, "later")
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.decode_steps_compiled > 0      # greedy tokens went through it
    finally:
        await stop(client)
    client, _ = await start(tiny_model_dir, "--compile", "none")
    try:
        plain_early = await answers(client, early, "early")
        plain_later = await answers(client, later, "later")
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.decode == "eager"
    finally:
        await stop(client)
    assert during == plain_early and fast == plain_later, (fast, plain_later)
    assert any(plain_later) and not shown


async def test_unloadable_model_is_reported_to_the_client(tmp_path):
    client, shown = await start(tmp_path / "missing")
    try:
        for _ in range(50):
            if shown:
                break
            await asyncio.sleep(0.1)
        assert len(shown) == 1 and "could not load its model" in shown[0]
        assert str(tmp_path / "missing") in shown[0]
    finally:
        await stop(client)


def test_demo_prints_a_completion(tiny_model_dir):
    out = subprocess.run([sys.executable, "-m", "server.demo", "--model", str(tiny_model_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "def fibonacci(n):" in out.stdout
    assert "completion was empty" not in out.stdout


def test_document_text_stays_out_of_the_log_at_the_default_level(tiny_model_dir):
    """pygls logs each JSON-RPC message at INFO; the server keeps that for DEBUG, so an
    editor's log never holds the user's code (and a pipe nobody reads never fills)."""
    secret = "very_private_identifier_4711 = 1\n"
    r = subprocess.run([sys.executable, "-m", "server", "--model", str(tiny_model_dir)],
                       input=session(secret), capture_output=True, timeout=120)
    assert b'"id": 99' in r.stdout or b'"id":99' in r.stdout     # it answered shutdown
    assert b"very_private_identifier_4711" not in r.stderr
    assert b"inlineCompletionProvider" not in r.stderr           # no message bodies at all


def test_stdin_from_a_file_or_a_pipe_is_served_alike(tiny_model_dir, tmp_path):
    """An editor's stdin is a pipe, read by asyncio itself (server/transport.py); stdin
    redirected from a file cannot be, and is read through pygls's threads. Both answer
    every request of the same messages (all written at once: a completion would be
    cancelled by the shutdown behind it, so the status request stands in)."""
    data = session("def total(values):\n    return sum(val",
                   {"jsonrpc": "2.0", "id": 2, "method": "codecomplete/status", "params": {}})
    (tmp_path / "in.bin").write_bytes(data)
    cmd = [sys.executable, "-m", "server", "--model", str(tiny_model_dir), "--compile", "none"]
    with open(tmp_path / "in.bin", "rb") as f:
        from_file = subprocess.run(cmd, stdin=f, capture_output=True, timeout=120)
    from_pipe = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert b"stdin: read through threads" in from_file.stderr
    assert b"stdin: read by the event loop" in from_pipe.stderr
    for r in (from_file, from_pipe):
        answers = [json.loads(part.split(b"\r\n\r\n", 1)[1])
                   for part in r.stdout.split(b"Content-Length: ")[1:]]
        ids = {a["id"]: a for a in answers if "id" in a}
        assert {1, 2, 99} <= set(ids), r.stderr.decode()[-2000:]
        assert ids[2]["result"]["model"] == str(tiny_model_dir)
        assert r.returncode == 0


def test_quantize_flag_puts_int8_layers_in_the_served_model(tiny_model_dir):
    from model.quantize import Int8Linear, int8_activations_pay
    from server.cli import load_engine, parse_args

    dynamic = int8_activations_pay() is None        # where it runs and pays (measured)
    for flag, per_layer, head in (("none", 0, 0), ("int8", 4, 1),    # q/k/v, gate/up fused
                                  ("int8-dynamic", 4, 1)):
        engine, error = load_engine(parse_args(["--model", str(tiny_model_dir),
                                                "--quantize", flag]))
        assert error is None
        layers = [m for m in engine.loaded.model.modules() if isinstance(m, Int8Linear)]
        assert len(layers) == per_layer * engine.loaded.config.num_hidden_layers + head
        assert all((m.key is not None) == (flag == "int8-dynamic" and dynamic)
                   for m in layers)


def test_latency_benchmark_reports_what_it_measured(tiny_model_dir, tmp_path):
    """benchmarks.latency drives the real server as an editor does; its table must count
    the requests it really made (2 files: 2 x 2 cold requests, one at a line's end and
    one mid-line in each, 2 status probes)."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.latency", "--model",
                        str(tiny_model_dir), "--files", "2", "--keys", "12", "--cold", "2",
                        "--interval", "0.03", "--server-log", str(tmp_path / "server.log")],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("machine: ")
    rows = {line[:28].strip(): line[28:].split() for line in r.stdout.splitlines()
            if line.startswith(("typing", "cold", "status"))}
    assert int(rows["typing (answered requests)"][0]) >= 1
    assert float(rows["typing (answered requests)"][1]) > 0       # p50 in ms
    assert int(rows["cold (fresh file)"][0]) == 4
    assert int(rows["cold: line end"][0]) == int(rows["cold: mid-line"][0]) == 2
    assert int(rows["status during generation"][0]) == 2
    prompt_tokens = r.stdout.split(" prompt tokens per cold prompt")[0].rsplit(" ", 1)[1]
    assert int(prompt_tokens) > 0
    assert "keys 24, requests sent" in r.stdout


def test_tcp_server_serves_the_next_client_after_one_disconnects(tiny_model_dir):
    """`--tcp` serves one client at a time until the process is stopped: a client that
    leaves without shutdown (an editor window closed) must not take the server down."""
    import socket

    def answer(sock: socket.socket, msg_id: int) -> dict:
        """Read framed messages until the response to `msg_id`."""
        stream = sock.makefile("rb")
        while True:
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert length, "the server closed the connection without answering"
            msg = json.loads(stream.read(length))
            if msg.get("id") == msg_id and "method" not in msg:
                return msg

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                             "--tcp", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"capabilities": {}, "processId": None}}
    try:
        for _ in range(600):                      # the server binds once its model is loaded
            try:
                first = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        else:
            raise AssertionError("the TCP server never listened")
        with first:
            first.sendall(frame(init))
            assert "capabilities" in answer(first, 1)["result"]
        # the first client is gone (no shutdown, no exit); the next one is served
        with socket.create_connection(("127.0.0.1", port), timeout=60) as second:
            second.sendall(frame(init))
            assert "capabilities" in answer(second, 1)["result"]
            second.sendall(frame({"jsonrpc": "2.0", "id": 2, "method": "codecomplete/status",
                                  "params": {}}))
            assert answer(second, 2)["result"]["model"]
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=30)
