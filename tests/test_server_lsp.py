"""The language server end to end: pytest-lsp's checking client over real stdio."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import make_test_lsp_client

NODE = ("class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
        "    def get_value(self):\n        return self.va")
BODY = "def compute(items):\n    "


async def start(model_dir, init: dict | None = None, encodings=None, slow: float = 0.0):
    client = make_test_lsp_client()
    env = dict(os.environ, CODECOMPLETE_TEST_SLOW_TOKENS_S=str(slow)) if slow else None
    # --stdio as vscode-languageclient passes it (the other suites start without it).
    await client.start_io(sys.executable, "-m", "server", "--stdio", "--model",
                          str(model_dir), "--temperature", "0", "--compile", "none", env=env)
    caps = types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings)
        if encodings else None)
    result = await client.initialize_session(types.InitializeParams(
        capabilities=caps, process_id=None, initialization_options=init))
    return client, result


async def stop(client) -> None:
    await client.shutdown_session()


def open_doc(client, uri: str, text: str) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))


def inline_params(uri: str, line: int, character: int, invoked: bool = False
                  ) -> types.InlineCompletionParams:
    kind = types.InlineCompletionTriggerKind
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(
            trigger_kind=kind.Invoked if invoked else kind.Automatic))


def end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2


async def inline(client, uri: str, text: str):
    return await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, *end_of(text))), 60)


async def generating(client) -> None:
    """Wait until the server reports a generation in progress (it answers status
    requests while generating)."""
    for _ in range(200):
        status = await asyncio.wait_for(
            client.protocol.send_request_async("codecomplete/status", {}), 10)
        if status.generating:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the server never started generating")


async def test_cancel_request_gets_32800_and_the_next_is_served(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 400}, slow=0.2)
    try:
        uri = "file:///t/body.py"
        open_doc(client, uri, BODY)
        msg_id = "long-one"
        # pytest-lsp's client sends when awaited: run it as a task so it goes out now.
        fut = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4), msg_id=msg_id))
        await generating(client)
        client.protocol.notify("$/cancelRequest", types.CancelParams(id=msg_id))
        with pytest.raises(JsonRpcException) as exc:
            await asyncio.wait_for(fut, 30)
        assert exc.value.code == -32800
        open_doc(client, "file:///t/node.py", NODE)
        t0 = time.perf_counter()
        result = await inline(client, "file:///t/node.py", NODE)
        assert result.items and time.perf_counter() - t0 < 10
    finally:
        await stop(client)


async def test_newer_request_supersedes_older(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 400}, slow=0.2)
    try:
        uri = "file:///t/body.py"
        open_doc(client, uri, BODY)
        first = asyncio.ensure_future(
            client.text_document_inline_completion_async(inline_params(uri, 1, 4)))
        await generating(client)
        second = asyncio.ensure_future(
            client.text_document_inline_completion_async(inline_params(uri, 1, 4)))
        older, newer = await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert not older.items
        assert newer.items and newer.items[0].insert_text.strip()
    finally:
        await stop(client)


async def test_a_completion_list_does_not_cancel_the_ghost_text(tiny_model_dir):
    """VS Code asks for inline completions and a completion list at the same keystroke:
    the list supersedes only an older list, so both are answered."""
    client, _ = await start(tiny_model_dir, {"max_tokens": 8}, slow=0.3)
    try:
        uri = "file:///t/node.py"
        open_doc(client, uri, NODE)
        ghost = asyncio.ensure_future(inline(client, uri, NODE))
        await generating(client)
        listed = await asyncio.wait_for(client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri),
                                   position=types.Position(*end_of(NODE)))), 60)
        shown = await ghost
        assert shown.items and shown.items[0].insert_text.startswith("lue")
        assert listed.items and listed.items[0].label.startswith("value")
    finally:
        await stop(client)


async def test_settings_change_takes_effect(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"codecomplete": {"enable": False}})
    try:
        uri = "file:///t/node.py"
        open_doc(client, uri, NODE)
        assert not (await inline(client, uri, NODE)).items
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"enable": True, "max_tokens": 2}}))
        items = (await inline(client, uri, NODE)).items
        assert items and items[0].insert_text.startswith("lue")
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.requests == 1              # the disabled request never reached it
        comment = "# the value of the node is self.va"
        open_doc(client, "file:///t/c.py", comment)
        assert (await inline(client, "file:///t/c.py", comment)).items
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"comments": False}}))
        assert not (await inline(client, "file:///t/c.py", comment)).items
    finally:
        await stop(client)


async def test_inside_a_word_only_when_asked(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 4})
    try:
        uri = "file:///t/word.py"
        text = NODE + "lue_of_node\n"         # the cursor will sit in "self.va|lue_of_node"
        open_doc(client, uri, text)
        line, col = end_of(NODE)

        async def ask(invoked: bool):
            await asyncio.wait_for(client.text_document_inline_completion_async(
                inline_params(uri, line, col, invoked)), 60)
            status = await client.protocol.send_request_async("codecomplete/status", {})
            return status.requests

        assert await ask(invoked=False) == 0     # typing: no ghost text inside a word
        assert await ask(invoked=True) == 1      # an explicit request reaches the model
    finally:
        await stop(client)


async def test_names_of_the_users_own_module_next_to_the_document(tiny_model_dir, tmp_path):
    """`helpers.zq|` in main.py: the sibling helpers.py (never imported by the server)
    defines the only name the completion may lead with."""
    (tmp_path / "helpers.py").write_text(
        "raise SystemExit('the server must not import this')\n"
        "def zqx_unique_function(a):\n    return a\n")
    client, _ = await start(tiny_model_dir, {"max_tokens": 8})
    try:
        uri = (tmp_path / "main.py").as_uri()
        text = "import helpers\n\nzqa_local = 1\nzqa_local += 2\nvalue = helpers.zq"
        open_doc(client, uri, text)
        result = await inline(client, uri, text)
        assert result and result.items[0].insert_text.startswith("x_unique_function"), result
    finally:
        await stop(client)


@pytest.mark.parametrize("encoding", [None, types.PositionEncodingKind.Utf8,
                                      types.PositionEncodingKind.Utf32])
async def test_positions_in_each_encoding_with_non_ascii(tiny_model_dir, encoding):
    client, result = await start(tiny_model_dir, encodings=[encoding] if encoding else None)
    try:
        negotiated = result.capabilities.position_encoding or "utf-16"
        assert negotiated == (encoding or "utf-16")
        line = '        label = "日本😀é"; return self.va'
        text = NODE.rsplit("\n", 1)[0] + "\n" + line
        uri = "file:///t/uni.py"
        open_doc(client, uri, text)
        units = {"utf-8": len(line.encode("utf-8")),
                 "utf-16": len(line.encode("utf-16-le")) // 2, "utf-32": len(line)}[negotiated]
        items = (await asyncio.wait_for(client.text_document_inline_completion_async(
            inline_params(uri, 5, units)), 60)).items
        assert items and items[0].insert_text.startswith("lue")
    finally:
        await stop(client)


async def test_bad_inputs_get_answers_and_the_server_survives(tiny_model_dir):
    client, _ = await start(tiny_model_dir)
    try:
        uri = "file:///t/node.py"
        open_doc(client, uri, NODE)
        # unknown document, position far past the end, character past the line end
        for u, line, ch in (("file:///none.py", 0, 0), (uri, 999, 0), (uri, 5, 999)):
            res = await asyncio.wait_for(client.text_document_inline_completion_async(
                inline_params(u, line, ch)), 60)
            assert isinstance(res.items, (list, tuple))
        # a lone surrogate (valid JSON, not valid UTF-8) and a huge document
        weird = "x = '\ud800'\n" + NODE
        open_doc(client, "file:///t/weird.py", weird)
        assert isinstance((await inline(client, "file:///t/weird.py", weird)).items, (list, tuple))
        # A huge document is completed from its tail, soon. What the tiny model writes there
        # is not the point (it differs with the CPU the model was trained on): the request
        # was not refused, because its prompt filled the whole budget.
        huge = "value = 1\n" * 300_000 + NODE
        open_doc(client, "file:///t/huge.py", huge)
        t0 = time.perf_counter()
        assert isinstance((await inline(client, "file:///t/huge.py", huge)).items, (list, tuple))
        assert time.perf_counter() - t0 < 10
        status = await asyncio.wait_for(
            client.protocol.send_request_async("codecomplete/status", {}), 10)
        assert status.requests >= 3
        assert status.last_prompt_tokens >= 700        # the budget (768), not NODE's ~40
    finally:
        await stop(client)


async def test_typed_ahead_and_lru_answer_without_the_model(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 8})
    try:
        uri = "file:///t/node.py"
        open_doc(client, uri, NODE)
        first = (await inline(client, uri, NODE)).items[0].insert_text
        assert len(first) >= 2
        typed = NODE + first[0]
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=typed)]))
        second = (await inline(client, uri, typed)).items[0].insert_text
        assert second == first[1:]
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.cache_hit_rate == 0.5
    finally:
        await stop(client)


class RawClient:
    """JSON-RPC over the server's stdio with nothing in between, for malformed input."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def send(self, payload: dict | bytes) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await self.proc.stdin.drain()

    async def receive(self, msg_id) -> dict:
        """The response to `msg_id` (notifications in between are skipped)."""
        while True:
            length = 0
            while (line := await self.proc.stdout.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            msg = json.loads(await self.proc.stdout.readexactly(length))
            if "id" in msg and msg["id"] == msg_id and "method" not in msg:
                return msg


async def test_malformed_messages_get_json_rpc_errors(tiny_model_dir):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--model", str(tiny_model_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    raw = RawClient(proc)
    try:
        await raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                        "params": {"capabilities": {}, "processId": None}})
        assert "capabilities" in (await asyncio.wait_for(raw.receive(1), 60))["result"]
        await raw.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        uri = "file:///t/node.py"
        await raw.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
            "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": NODE}}})
        cases = {
            2: ("textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                "position": {"line": -1, "character": 0}, "context": {"triggerKind": 1}}),
            3: ("textDocument/completion", {"textDocument": {"uri": uri}}),
            4: ("textDocument/inlineCompletion", "not an object"),
        }
        for msg_id, (method, params) in cases.items():
            await raw.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
            reply = await asyncio.wait_for(raw.receive(msg_id), 30)
            assert reply["error"]["code"] == -32602, reply
            assert method in reply["error"]["message"]
        await raw.send(b"{this is not json")
        await raw.send({"jsonrpc": "2.0", "id": 5, "method": "no/such/method", "params": {}})
        assert (await asyncio.wait_for(raw.receive(5), 30))["error"]["code"] == -32601
        await raw.send({"jsonrpc": "2.0", "id": 6, "method": "codecomplete/status",
                        "params": {}})
        assert (await asyncio.wait_for(raw.receive(6), 30))["result"]["device"] == "cpu"
    finally:
        proc.kill()
        await proc.wait()


async def test_odd_settings_are_refused_once_and_requests_keep_working(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": None, "candidates": 0})
    try:
        uri = "file:///t/node.py"
        open_doc(client, uri, NODE)
        assert (await inline(client, uri, NODE)).items
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert len(warnings) == 1 and "max_tokens=None" in warnings[0] \
            and "candidates=0" in warnings[0]
        before = [i.insert_text for i in (await inline(client, uri, NODE + " ")).items]
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"enable": None, "top_p": 2, "temperature": -1,
                                       "max_tokens": 100_000}}))
        # every value refused, so the settings, and the answer, are what they were
        after = (await inline(client, uri, NODE + " ")).items
        assert [i.insert_text for i in after] == before
        assert (await inline(client, uri, NODE)).items       # still enabled, still working
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"max_tokens": 2, "enable": True}}))
        open_doc(client, "file:///t/other.py", NODE)
        items = (await inline(client, "file:///t/other.py", NODE)).items
        assert items and len(items[0].insert_text) <= 12      # two tokens at most
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert len(warnings) == 2 and "enable=None" in warnings[1]
    finally:
        await stop(client)


def frame(body: bytes, length: int | None = None) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


async def test_odd_traffic_leaves_the_server_answering_every_request(tiny_model_dir):
    """A fuzz of what a broken or hostile client may send; after each, a status request
    must be answered, and each odd request gets its JSON-RPC error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--model", str(tiny_model_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    raw = RawClient(proc)

    async def write(data: bytes) -> None:
        proc.stdin.write(data)
        await proc.stdin.drain()

    probe_id = 1000

    async def answers() -> None:
        nonlocal probe_id
        probe_id += 1
        await raw.send({"jsonrpc": "2.0", "id": probe_id, "method": "codecomplete/status",
                        "params": {}})
        assert "result" in await asyncio.wait_for(raw.receive(probe_id), 30)

    try:
        await raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                        "params": {"capabilities": {}, "processId": None}})
        await asyncio.wait_for(raw.receive(1), 60)
        await raw.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        uri = "file:///t/node.py"
        await raw.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
            "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": NODE}}})
        # Bodies that are not JSON-RPC requests: each answered with id null.
        for body, code in ((b"{not json}", -32700), (b"\xff\xfe{}", -32700),
                           (b"[1, 2]", -32600), (b'"text"', -32600), (b"{}", -32600)):
            await write(frame(body))
            reply = await asyncio.wait_for(raw.receive(None), 30)
            assert reply["error"]["code"] == code and reply["id"] is None, (body, reply)
            await answers()
        # A body longer than its Content-Length (the rest looks like a header line), a
        # header with no body separator, a blank line alone, a header of another kind.
        await write(frame(b'{"jsonrpc": "2.0"} and then some', length=18))
        await answers()
        await write(b"Content-Type: application/vscode-jsonrpc\r\n" + frame(b"{}"))
        await asyncio.wait_for(raw.receive(None), 30)
        await answers()
        await write(b"\r\n\r\ngarbage without a newline")
        await answers()
        # A Content-Length of 5,000 digits (past Python's int-string limit): refused.
        await write(b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n")
        assert (await asyncio.wait_for(raw.receive(None), 30))["error"]["code"] == -32600
        await answers()
        # Numbers no setting can take: 1e999 parses as infinity, a seed past 64 bits.
        await write(frame(b'{"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", '
                          b'"params": {"settings": {"max_tokens": 1e999, "temperature": 1e999,'
                          b' "seed": 1e20, "context_tokens": -1e999}}}'))
        await answers()
        await raw.send({"jsonrpc": "2.0", "id": "inf", "method": "textDocument/inlineCompletion",
                        "params": {"textDocument": {"uri": uri},
                                   "position": {"line": 5, "character": 25},
                                   "context": {"triggerKind": 1}}})
        assert (await asyncio.wait_for(raw.receive("inf"), 60))["result"]["items"]
        # File events for paths that leave every folder through `..`, or are not files.
        await raw.send({"jsonrpc": "2.0", "method": "workspace/didChangeWatchedFiles",
                        "params": {"changes": [{"uri": "file:///ws/../elsewhere/x.py", "type": 2},
                                               {"uri": "file:///dev/null", "type": 1}]}})
        await answers()
        # Requests with a string id: unknown method, bad params, odd positions.
        await raw.send({"jsonrpc": "2.0", "id": "s1", "method": "no/such", "params": {}})
        assert (await asyncio.wait_for(raw.receive("s1"), 30))["error"]["code"] == -32601
        for n, params in enumerate([
                None, [], {"textDocument": {"uri": uri}},
                {"textDocument": {"uri": uri}, "position": {"line": 0, "character": "x"},
                 "context": {"triggerKind": 1}}]):
            await raw.send({"jsonrpc": "2.0", "id": f"p{n}",
                            "method": "textDocument/inlineCompletion", "params": params})
            assert (await asyncio.wait_for(raw.receive(f"p{n}"), 30))["error"]["code"] \
                == -32602
        for n, (line, ch) in enumerate([(10**9, 0), (5, 10**9), (0, 2**31 - 1)]):
            await raw.send({"jsonrpc": "2.0", "id": f"q{n}",
                            "method": "textDocument/inlineCompletion", "params": {
                                "textDocument": {"uri": uri},
                                "position": {"line": line, "character": ch},
                                "context": {"triggerKind": 1}}})
            assert "result" in await asyncio.wait_for(raw.receive(f"q{n}"), 60)
        # Notifications about documents never opened, odd settings, huge text.
        await raw.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": "file:///never.py", "version": 2},
            "contentChanges": [{"text": "x"}]}})
        await raw.send({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {
            "textDocument": {"uri": "file:///never.py"}}})
        await raw.send({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration",
                        "params": {"settings": {"max_tokens": None, "candidates": "two",
                                                "enable": None}}})
        await raw.send({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration",
                        "params": {"settings": None}})
        await answers()
        huge = "x = 1\n" * 200_000 + "def f(value):\n    return val"
        await raw.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
            "textDocument": {"uri": "file:///t/huge.py", "languageId": "python",
                             "version": 1, "text": huge}}})
        await raw.send({"jsonrpc": "2.0", "id": "h", "method": "textDocument/inlineCompletion",
                        "params": {"textDocument": {"uri": "file:///t/huge.py"},
                                   "position": {"line": 200_001, "character": 14},
                                   "context": {"triggerKind": 1}}})
        assert (await asyncio.wait_for(raw.receive("h"), 60))["result"]["items"]
        await raw.send({"jsonrpc": "2.0", "id": "n", "method": "textDocument/inlineCompletion",
                        "params": {"textDocument": {"uri": uri},
                                   "position": {"line": 5, "character": 25},
                                   "context": {"triggerKind": 1}}})
        assert (await asyncio.wait_for(raw.receive("n"), 60))["result"]["items"]
        # Thousands of edits in a burst (a paste replayed key by key, a macro): one write
        # of 3,000 didChange notifications, then a request at the end of what they typed.
        burst, line = [], 6
        for k in range(3000):
            ch = "\n" if k % 20 == 19 else "x"
            burst.append(frame(json.dumps({
                "jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                    "textDocument": {"uri": uri, "version": 10 + k},
                    "contentChanges": [{"range": {"start": {"line": line, "character": 0},
                                                  "end": {"line": line, "character": 0}},
                                        "text": ch}]}}).encode()))
            line += ch == "\n"
        started = time.monotonic()
        await write(b"".join(burst))
        await answers()
        assert time.monotonic() - started < 30
        await raw.send({"jsonrpc": "2.0", "id": "b", "method": "textDocument/inlineCompletion",
                        "params": {"textDocument": {"uri": uri},
                                   "position": {"line": 5, "character": 25},
                                   "context": {"triggerKind": 1}}})
        assert "result" in await asyncio.wait_for(raw.receive("b"), 60)
        await raw.send({"jsonrpc": "2.0", "id": "end", "method": "shutdown"})
        assert "result" in await asyncio.wait_for(raw.receive("end"), 30)
    finally:
        proc.kill()
        await proc.wait()


async def test_a_change_to_the_document_stops_its_running_completion(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 400}, slow=0.2)
    try:
        uri = "file:///t/body.py"
        open_doc(client, uri, BODY)
        fut = asyncio.ensure_future(
            client.text_document_inline_completion_async(inline_params(uri, 1, 4)))
        await generating(client)
        t0 = time.perf_counter()
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=BODY + "x")]))
        result = await asyncio.wait_for(fut, 30)
        assert not result.items                      # 400 slow tokens would take 80 s
        assert time.perf_counter() - t0 < 10
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.generating == 0
    finally:
        await stop(client)


async def test_multiline_setting_never_and_always(tiny_model_dir):
    client, _ = await start(tiny_model_dir, {"max_tokens": 24, "multiline": "never"})
    try:
        uri = "file:///t/body.py"
        open_doc(client, uri, BODY)
        items = (await inline(client, uri, BODY)).items
        assert all("\n" not in i.insert_text for i in items)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"multiline": "sometimes"}}))   # refused, kept
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.requests == 1
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert any("multiline='sometimes'" in w for w in warnings)
    finally:
        await stop(client)


async def test_workspace_context_follows_folders_files_and_the_setting(tiny_model_dir,
                                                                        tmp_path):
    """Repository context over real stdio: the workspace of `initialize` is indexed, its
    windows reach the prompt, file events and folder changes update it, the setting turns
    it off."""
    from tests.test_repo_context import GEOMETRY, QUERY

    (tmp_path / "geometry.py").write_text(GEOMETRY)
    client = make_test_lsp_client()
    registered: list[types.RegistrationParams] = []

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def on_register(params: types.RegistrationParams) -> None:
        registered.append(params)
    await client.start_io(sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                          "--temperature", "0", "--compile", "none")
    caps = types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
        workspace_folders=True,
        did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(
            dynamic_registration=True)))
    root = tmp_path.as_uri()
    await client.initialize_session(types.InitializeParams(
        capabilities=caps, process_id=None, root_uri=root,
        workspace_folders=[types.WorkspaceFolder(uri=root, name="w")],
        initialization_options={"workspace_context": True}))

    async def status():
        return await asyncio.wait_for(
            client.protocol.send_request_async("codecomplete/status", {}), 10)

    async def settled(files: int):
        for _ in range(100):
            s = await status()
            if not s.workspace_indexing and s.workspace_files >= files:
                return s
            await asyncio.sleep(0.05)
        raise AssertionError(f"the workspace never had {files} files indexed: {s}")

    try:
        uri = (tmp_path / "me.py").as_uri()
        open_doc(client, uri, QUERY)
        assert (await settled(2)).workspace_files == 2     # geometry.py and the open me.py
        assert registered[0].registrations[0].method == \
            types.WORKSPACE_DID_CHANGE_WATCHED_FILES
        await inline(client, uri, QUERY)
        st = await status()
        assert st.last_context_tokens > 0
        assert st.last_prompt_tokens > st.last_context_tokens     # the FIM prompt follows
        (tmp_path / "extra.py").write_text("def extra():\n    return Vector(0, 0)\n")
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=(tmp_path / "extra.py").as_uri(),
                                     type=types.FileChangeType.Created)]))
        await settled(3)
        other = tmp_path.parent / (tmp_path.name + "-second")
        other.mkdir()
        (other / "more.py").write_text("MORE = 1\n")
        client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(
                added=[types.WorkspaceFolder(uri=other.as_uri(), name="o")], removed=[])))
        await settled(4)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codecomplete": {"workspace_context": False}}))
        await inline(client, uri, QUERY + "g")
        assert (await status()).last_context_tokens == 0
    finally:
        await stop(client)


async def test_a_hostile_workspace_is_indexed_within_bounds_and_requests_keep_answering(
        tiny_model_dir, tmp_path):
    """100,000 files, a 50 MB Python file, a symlink loop, an unreadable folder, then the
    folder disappears: every request is answered, the index stops at its bounds, and the
    log says once what was skipped."""
    from tests.test_repo_context import GEOMETRY, QUERY

    for d in range(100):
        folder = tmp_path / f"d{d:03d}"
        folder.mkdir()
        for f in range(1000):
            (folder / f"m{f}.py").write_bytes(b"X = 1\n")
    (tmp_path / "big.py").write_bytes(b"x = 1\n" * 9_000_000)        # 54 MB
    (tmp_path / "a_geometry.py").write_text(GEOMETRY)
    os.symlink(tmp_path, tmp_path / "loop")
    (tmp_path / "locked").mkdir(mode=0)
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                          "--temperature", "0", "--log-level", "INFO",
                          "--compile", "none")
    root = tmp_path.as_uri()
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), process_id=None, root_uri=root,
        initialization_options={"max_tokens": 4, "workspace_context": True}))
    try:
        uri = "file:///elsewhere/me.py"
        open_doc(client, uri, QUERY)
        answered = 0
        deadline = time.monotonic() + 180     # walking 100,000 files takes 3-60 s here
        while time.monotonic() < deadline:
            await inline(client, uri, QUERY)           # each within inline()'s 60 s
            answered += 1
            status = await client.protocol.send_request_async("codecomplete/status", {})
            if not status.workspace_indexing:
                break
            await asyncio.sleep(0.05)
        assert answered and not status.workspace_indexing
        assert status.workspace_files <= 5001                 # the file limit (+ me.py)
        skipped = status.workspace_skipped
        assert skipped.files_past_the_file_limit > 90_000
        assert skipped.files_over_the_size_limit == 1
        assert skipped.symbolic_links == 1
        files = status.workspace_files
        shutil.rmtree(tmp_path)                                 # the folder disappears
        client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=f"{root}/a_geometry.py",
                                     type=types.FileChangeType.Deleted)]))
        assert isinstance((await inline(client, uri, QUERY + "g")).items, (list, tuple))
        for _ in range(100):                    # the event is handled off the request path
            status = await client.protocol.send_request_async("codecomplete/status", {})
            if status.workspace_files == files - 1:
                break
            await asyncio.sleep(0.05)
        assert status.workspace_files == files - 1              # a_geometry.py forgotten
    finally:
        await stop(client)
        if tmp_path.exists():
            os.chmod(tmp_path / "locked", 0o755)
