"""Reading JSON-RPC messages off a byte stream without ever getting stuck.

pygls 2.1's read loop trusts every header: a body longer than its `Content-Length` leaves
bytes that are read as a header line, the next message's header is then not recognised
(it does not start the line), and the server waits for a newline that never comes, so it
answers nothing again. Nor does it answer a body that is not JSON. This loop:

- finds a `Content-Length` header anywhere in a line, so the stream resynchronises at the
  next message after garbage;
- answers a body that is not JSON (or not UTF-8) with -32700 and one that is JSON but no
  JSON-RPC message with -32600, both with id null as JSON-RPC 2.0 says, and goes on;
- skips a body larger than `MAX_BODY` (a huge document is a few MB) instead of holding it;
- never lets an exception from one message end the loop.

`serve_stdio` and `serve_tcp` start a pygls server on this loop (the same steps as pygls's
own `start_io` and `start_tcp`, which cannot be given another loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Awaitable
from typing import Any, Protocol

from pygls.io_ import StdinAsyncReader, StdoutWriter
from pygls.lsp.server import LanguageServer

log = logging.getLogger("codecomplete")

CONTENT_LENGTH = re.compile(rb"Content-Length:[ \t]*(\d+)\r?\n$", re.IGNORECASE)
MAX_BODY = 256 * 1024 * 1024
MAX_DIGITS = 12
DISCARD_CHUNK = 1024 * 1024
PARSE_ERROR, INVALID_REQUEST = -32700, -32600


class Reader(Protocol):
    """pygls's StdinAsyncReader or an asyncio.StreamReader."""

    def readline(self) -> Awaitable[bytes]: ...

    def readexactly(self, n: int) -> Awaitable[bytes]: ...


async def read_messages(stop: threading.Event, reader: Reader, server: LanguageServer) -> None:
    """Hand every well-formed message to the server's protocol until EOF or `stop`."""
    length: int | None = None
    while not stop.is_set():
        try:
            line = await reader.readline()
        except ValueError:          # an over-long line on a TCP stream: it was dropped
            continue
        if not line:
            return
        header = CONTENT_LENGTH.search(line)
        if header:
            digits = header.group(1).lstrip(b"0") or b"0"
            if len(digits) > MAX_DIGITS:    # past any real body (and Python's int limit)
                log.warning("skipped a Content-Length of %d digits", len(digits))
                reply_error(server, INVALID_REQUEST,
                            f"Content-Length of {len(digits)} digits is too large")
                length = None
                continue
            length = int(digits)
            continue
        if line.strip() or length is None:
            continue                # another header, or garbage before the next header
        body_length, length = length, None
        if body_length > MAX_BODY:
            log.warning("skipped a message of %d bytes (more than %d)", body_length, MAX_BODY)
            if not await discard(reader, body_length):
                return
            reply_error(server, INVALID_REQUEST, f"message of {body_length} bytes is too large")
            continue
        body = await read_body(reader, body_length)
        if len(body) < body_length:
            return                  # EOF inside a body
        handle_body(server, body)


async def read_body(reader: Reader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        return e.partial


async def discard(reader: Reader, n: int) -> bool:
    while n > 0:
        chunk = await read_body(reader, min(n, DISCARD_CHUNK))
        if not chunk:
            return False
        n -= len(chunk)
    return True


def handle_body(server: LanguageServer, body: bytes) -> None:
    """Parse one body and give it to the protocol; an odd body gets a JSON-RPC error."""
    protocol = server.protocol
    try:
        message = json.loads(body, object_hook=protocol.structure_message)
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError is a ValueError
        log.warning("a message body is not JSON: %s", e)
        reply_error(server, PARSE_ERROR, f"the message body is not valid JSON: {e}")
        return
    except Exception as e:          # a structuring error pygls could not answer
        log.warning("a message could not be read: %s", e)
        reply_error(server, INVALID_REQUEST, f"the message could not be read: {e}")
        return
    if message is None:             # answered already (see lsp.AnsweringProtocol)
        return
    if not hasattr(message, "jsonrpc"):
        msg_id = message.get("id") if isinstance(message, dict) else None
        reply_error(server, INVALID_REQUEST, "the message is not a JSON-RPC 2.0 request, "
                    "notification or response", msg_id if is_id(msg_id) else None)
        return
    try:
        protocol.handle_message(message)
    except Exception:
        log.exception("handling a message failed")


def is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def reply_error(server: LanguageServer, code: int, message: str,
                msg_id: int | str | None = None) -> None:
    """Send an error response; pygls's own would leave out a null id, which JSON-RPC
    requires for errors that cannot be tied to a request."""
    server.protocol._send_data({"jsonrpc": "2.0", "id": msg_id,
                                "error": {"code": code, "message": message}})


async def stdin_reader(server: LanguageServer) -> Reader:
    """asyncio's own reader of stdin where stdin is a pipe or a socket (as an editor
    starts the server): pygls's reader hands every read to a thread pool, three thread
    hops a message before a request starts. Elsewhere (a terminal, whose non-blocking
    mode the shell would inherit; a file; Windows) pygls's."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        mode = 0
    if sys.platform != "win32" and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        reader = asyncio.StreamReader()
        try:
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
            log.info("stdin: read by the event loop")
            return reader
        except (OSError, ValueError) as e:
            log.info("stdin: %s", e)
    log.info("stdin: read through threads")
    return StdinAsyncReader(sys.stdin.buffer, server.thread_pool)


def serve_stdio(server: LanguageServer) -> None:
    """Serve over this process's stdin/stdout until EOF or `exit`."""
    stop = server._stop_event = threading.Event()
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))

    async def main() -> None:
        await read_messages(stop, await stdin_reader(server), server)
    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("the client closed the connection")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def serve_tcp(server: LanguageServer, host: str, port: int) -> None:
    """Serve one client at a time on HOST:PORT until the process is stopped."""
    stop = server._stop_event = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)
        try:
            await read_messages(stop, reader, server)
        finally:                    # this client is gone; the next one may connect
            writer.close()

    async def main() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        log.info("serving on %s:%d", host, port)
        async with server._server:
            await server._server.serve_forever()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())
