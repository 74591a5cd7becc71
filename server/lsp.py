"""pygls wiring: translate LSP requests into engine calls and engine results into LSP types.

Nothing here generates text; the engine does, in a worker thread, so the event loop keeps
answering other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Executor
from typing import Any

from lsprotocol import types
from pygls import uris
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from completion.settings import update_settings
from server import identifiers
from server.engine import Completion, CompletionEngine
from server.interpreter import workspace_interpreter
from server.threads import new_model_thread, on_own_thread
from server.workspace import Workspace

log = logging.getLogger("codecomplete")

STATUS_METHOD = "codecomplete/status"


class AnsweringProtocol(LanguageServerProtocol):
    """pygls 2.1 drops a request whose params fail validation (a negative position, a
    missing field) without answering, and the client waits forever. This protocol
    answers such a request with -32602 (invalid params) and goes on."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                detail = str(cause).splitlines()[0] if cause else exc.message
                self._send_response(data["id"], error=types.ResponseError(
                    code=types.ErrorCodes.InvalidParams,
                    message=f"invalid params for {data['method']}: {detail}"))
            return None

    def handle_message(self, message):
        if message is None:        # already answered by structure_message
            return None
        return super().handle_message(message)


class CodecompleteServer(LanguageServer):
    def __init__(self, engine: CompletionEngine | None, load_error: str | None = None,
                 model_thread: Executor | None = None):
        super().__init__("codecomplete", "0.1.0", protocol_cls=AnsweringProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.engine = engine
        self.load_error = load_error
        # The one thread that runs the model (server/threads.py): the one that loaded it.
        self.model_thread = model_thread or new_model_thread()
        # The newest request per document and kind (inline or not); an older one still
        # running is told to stop.
        self.running: dict[tuple[str, bool], threading.Event] = {}
        self.warmup_task: asyncio.Future | None = None
        self.pending_problems: list[str] = []   # refused initializationOptions, shown
        #                                         once the client is initialized
        self.files = Workspace()               # repository context (server/workspace.py)


def apply_settings(ls: CodecompleteServer, options: Any) -> list[str]:
    """Apply settings from the client; returns a sentence per refused value."""
    if ls.engine is None:
        return []
    return update_settings(ls.engine.settings, options,
                           ls.engine.loaded.context)


def report_problems(ls: CodecompleteServer, problems: list[str]) -> None:
    """Tell the user once, in the editor, which settings were refused."""
    if problems:
        message = "codecomplete: " + " ".join(problems)
        log.warning(message)
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning, message))


def cursor_context(ls: CodecompleteServer, uri: str, position: types.Position
                   ) -> tuple[str, str] | None:
    """(prefix, suffix) around the cursor, or None for unknown documents or positions."""
    doc = ls.workspace.text_documents.get(uri)
    if doc is None:
        return None
    lines = doc.lines
    if position.line < 0 or position.character < 0 or position.line > len(lines):
        return None
    if position.line == len(lines) and position.character > 0:
        return None
    if position.line < len(lines):
        # A character past the end of the line means the line's end (pygls clamps the
        # last line, which has no newline, one character short: inside the last word).
        line = lines[position.line].rstrip("\r\n")
        width = doc.position_codec.client_num_units(line)
        if position.character > width:
            position = types.Position(line=position.line, character=width)
    offset = doc.offset_at_position(position)
    source = doc.source
    return source[:offset], source[offset:]


def workspace_folders(ls: CodecompleteServer) -> tuple[str, ...]:
    """The editor's workspace folders (and root) as paths."""
    roots = [uris.to_fs_path(u) for u in ls.workspace.folders if u.startswith("file:")]
    roots.append(ls.workspace.root_path)
    return tuple(dict.fromkeys(r for r in roots if r))


def fs_path(uri: str) -> str:
    """A document's file path, or its URI when it is not a file (untitled buffers)."""
    return (uris.to_fs_path(uri) or uri) if uri.startswith("file:") else uri


def is_python(uri: str, language_id: str | None) -> bool:
    return language_id == "python" or uri.endswith(".py")


def follow_workspace(ls: CodecompleteServer) -> None:
    """Index the workspace folders when repository context or the project memory is on
    (again if they changed)."""
    if ls.engine is None:
        return
    s = ls.engine.settings
    if s.memory and ls.files.tokenizer is None:       # turned on: count what is indexed
        ls.files.tokenizer = ls.engine.loaded.tokenizer
        ls.files.folders = ()                          # so that the folders are walked again
    elif not s.memory and ls.files.tokenizer is not None:
        ls.files.tokenizer = None
        ls.files.memory.clear()
    if s.workspace_context or s.memory:
        ls.files.set_folders(workspace_folders(ls))


def watch_python_files(ls: CodecompleteServer) -> None:
    """Ask the client to report created, changed and deleted Python files, where it can
    (dynamic registration), so an edit outside the editor reaches the index."""
    caps = ls.client_capabilities.workspace
    watched = caps.did_change_watched_files if caps else None
    if not (watched and watched.dynamic_registration):
        return
    options = types.DidChangeWatchedFilesRegistrationOptions(
        watchers=[types.FileSystemWatcher(glob_pattern="**/*.py")])
    ls.client_register_capability(types.RegistrationParams(registrations=[
        types.Registration(id="codecomplete-python-files",
                           method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                           register_options=options)]))


def module_roots(uri: str, folders: tuple[str, ...]) -> tuple[str, ...]:
    """Folders where the user's own modules live: the document's, then the workspace's."""
    roots = [os.path.dirname(uris.to_fs_path(uri))] if uri.startswith("file:") else []
    return tuple(dict.fromkeys(r for r in (*roots, *folders) if r))


def build_server(engine: CompletionEngine | None, load_error: str | None = None,
                 model_thread: Executor | None = None) -> CodecompleteServer:
    """The server; `model_thread` is the executor whose one thread loaded the engine's
    model (server/threads.py), a new one if not given."""
    server = CodecompleteServer(engine, load_error, model_thread)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: CodecompleteServer, params: types.InitializeParams) -> None:
        ls.pending_problems = apply_settings(ls, params.initialization_options)

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: CodecompleteServer, params: types.InitializedParams) -> None:
        report_problems(ls, ls.pending_problems)
        ls.pending_problems = []
        if ls.load_error:
            ls.window_show_message(types.ShowMessageParams(types.MessageType.Error,
                                                           ls.load_error))
        elif ls.engine is not None:
            info = ls.engine.describe()
            ls.window_log_message(types.LogMessageParams(
                types.MessageType.Info,
                f"codecomplete ready: {info['model']} on {info['device']} ({info['dtype']})"))
            ls.warmup_task = asyncio.ensure_future(warm(ls))
            follow_workspace(ls)
            try:
                watch_python_files(ls)
            except Exception as e:   # a client that refuses still gets completions
                log.warning("could not register file watchers: %s", e)

    async def warm(ls: CodecompleteServer) -> None:
        """Warm the model up off the event loop, on the model's thread (requests that
        come meanwhile wait for it, which is no slower than a cold first request), then
        build the native kernels where they are missing and compile, each on a thread of
        its own while requests are served."""
        try:
            loop = asyncio.get_running_loop()
            seconds = await loop.run_in_executor(ls.model_thread, ls.engine.warmup)
            log.info("warm-up generation took %.0f ms", seconds * 1000)
            await on_own_thread(ls.engine.native_kernel, "codecomplete-kernel")
            if ls.engine.int8_kernel:
                log.info("int8 kernel: %s", ls.engine.int8_kernel)
            log.info("attention kernel: %s", ls.engine.attention_kernel)
            if ls.engine.float_products:
                log.info("float products: %s", ls.engine.float_products)
            seconds = await on_own_thread(ls.engine.compile_step, "codecomplete-compile")
            if seconds is not None:
                log.info("decode step after %.1f s: %s", seconds, ls.engine.decode)
        except Exception as e:  # a failed warm-up must not take the server down
            log.warning("warm-up failed: %s", e)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: CodecompleteServer, params: types.DidChangeTextDocumentParams) -> None:
        """The document moved on: a completion still running (or waiting for the model) for
        it would answer for text the user no longer has, so it stops before its next
        token and answers nothing. (pygls has already applied the change.)"""
        uri = params.text_document.uri
        for names in (False, True):                    # inline, and a completion list
            running = ls.running.get((uri, names))
            if running is not None:
                running.set()
        doc = ls.workspace.text_documents.get(uri)
        if doc is not None and is_python(uri, doc.language_id):
            ls.files.set_document(fs_path(uri), doc.source)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def on_open(ls: CodecompleteServer, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        if is_python(doc.uri, doc.language_id):
            ls.files.set_document(fs_path(doc.uri), doc.text)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: CodecompleteServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.files.close_document(fs_path(params.text_document.uri))

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def on_files(ls: CodecompleteServer, params: types.DidChangeWatchedFilesParams) -> None:
        if ls.engine is None or not (ls.engine.settings.workspace_context
                                     or ls.engine.settings.memory):
            return                      # nothing is indexed: nothing to update
        for change in params.changes:
            if change.uri.startswith("file:"):
                ls.files.queue_file_event(fs_path(change.uri))

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def on_folders(ls: CodecompleteServer,
                   params: types.DidChangeWorkspaceFoldersParams) -> None:
        follow_workspace(ls)     # pygls has already updated ls.workspace.folders

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_config(ls: CodecompleteServer, params: types.DidChangeConfigurationParams) -> None:
        report_problems(ls, apply_settings(ls, params.settings))
        follow_workspace(ls)

    async def run_engine(ls: CodecompleteServer, uri: str, position: types.Position,
                         invoked: bool = True, names: bool = False
                         ) -> tuple[str, list[Completion]]:
        """Generate on the model's thread. `$/cancelRequest` cancels this task (pygls then
        answers -32800) and a newer request of the same kind (inline, or a completion
        list) for the same document supersedes it; either way the stop event makes
        generation end before its next token. The kinds are kept apart because VS Code
        asks for both at a keystroke: the list must not cancel the ghost text. Returns the
        text before the cursor and the completions."""
        if ls.engine is None:
            return "", []
        ctx = cursor_context(ls, uri, position)
        if ctx is None:
            return "", []
        stop = threading.Event()
        slot = (uri, names)
        older = ls.running.get(slot)
        if older is not None:
            older.set()
        ls.running[slot] = stop
        try:
            folders = workspace_folders(ls)
            interpreter = workspace_interpreter(folders, ls.engine.settings.python)
            engine, files = ls.engine, ls.files
            budget = engine.context_budget()

            def work():
                path = fs_path(uri)
                with files.serving():          # the workspace's threads wait meanwhile
                    context = files.context(engine.loaded.tokenizer, ctx[0], path, budget) \
                        if budget else None
                    memory = files.memory_counts(path) if engine.settings.memory else None
                    return engine.complete(*ctx, stop.is_set, invoked, context,
                                           module_roots(uri, folders), interpreter, memory,
                                           names)
            return ctx[0], await asyncio.get_running_loop().run_in_executor(ls.model_thread, work)
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            if ls.running.get(slot) is stop:
                del ls.running[slot]

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: CodecompleteServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        _, results = await run_engine(ls, params.text_document.uri, params.position, invoked)
        where = types.Range(params.position, params.position)
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=c.text, range=where) for c in results])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(ls: CodecompleteServer, params: types.CompletionParams
                         ) -> types.CompletionList:
        # After a partly typed name the list holds the likeliest names (their rests are
        # inserted at the cursor; the label shows the whole name), else the line's rest.
        prefix, results = await run_engine(ls, params.text_document.uri, params.position,
                                           names=True)
        partial = identifiers.partial_word(prefix)
        where = types.Range(params.position, params.position)
        items = [types.CompletionItem(
            label=(partial + c.text).strip().split("\n", 1)[0][:80] or c.text,
            kind=types.CompletionItemKind.Text,
            detail="codecomplete",
            text_edit=types.TextEdit(where, c.text),
            sort_text=f"{i:04d}") for i, c in enumerate(results)]
        return types.CompletionList(is_incomplete=True, items=items)

    @server.feature(STATUS_METHOD)
    def status(ls: CodecompleteServer, params: Any) -> dict[str, Any]:
        if ls.engine is None:
            return {"error": ls.load_error}
        return ls.engine.describe() | ls.files.describe()

    return server
