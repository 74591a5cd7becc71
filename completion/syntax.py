"""Where comments and strings are in Python text: one small scanner (`pieces`) and its uses.

`cursor_region`: is the cursor inside a comment or a string? For the `comments` /
`strings` settings (some users want no ghost text while writing prose) and the open-string
filter. The scan starts at most `WINDOW` characters back, at a line start, so a huge file
costs a bounded amount of work; a triple-quoted string opened before that window is not
seen (then the answer is "code", the permissive choice).

`own_depths`: which brackets a completion opened itself (the auto-closed-bracket filters).

`left_open`: whether a bracket or string is still open at the cursor (the whole-statements
filter).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator

WINDOW = 20_000
CODE, COMMENT, STRING = "code", "comment", "string"
SPECIAL = re.compile(r"[#'\"]")      # what starts a comment or a string


def pieces(text: str) -> Iterator[tuple[str, int, int, int]]:
    """Python source as (kind, start, inner_end, end), left to right, the one place that
    knows where comments and strings begin and end:
    - "code": a run of characters outside comments and strings (inner_end == end);
    - "comment": from `#` up to, not including, the line end (or the text's end);
    - "string": from its opening quote; inner_end is where the closing quote starts (or,
      for a one-quote string left open, the line end that ends it), end is after it;
    - "open string": a string still open at the text's end (inner_end == end == len).
    Escapes inside strings are skipped; triple quotes are one delimiter."""
    i, n = 0, len(text)
    while i < n:
        m = SPECIAL.search(text, i)
        if m is None or m.start() > i:
            end = n if m is None else m.start()
            yield "code", i, end, end
            i = end
            continue
        if text[i] == "#":
            nl = text.find("\n", i)
            end = n if nl == -1 else nl
            yield "comment", i, end, end
            i = end
            continue
        quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else text[i]
        j, piece = i + len(quote), None
        while j < n:
            if text[j] == "\\":
                j += 2
            elif text.startswith(quote, j):
                piece = ("string", i, j, j + len(quote))
                break
            elif text[j] == "\n" and len(quote) == 1:
                piece = ("string", i, j, j + 1)   # an unterminated one-line string
                break
            else:
                j += 1
        piece = piece or ("open string", i, n, n)
        yield piece
        i = piece[3]


def window(prefix: str) -> str:
    """The end of `prefix` that the scans read: at most WINDOW characters, from a line
    start."""
    start = max(0, len(prefix) - WINDOW)
    if start:
        nl = prefix.find("\n", start)
        start = nl + 1 if nl != -1 else len(prefix)
    return prefix[start:]


def cursor_region(prefix: str) -> str:
    """CODE, COMMENT or STRING: where the end of `prefix` (the cursor) is."""
    text = window(prefix)
    tail = deque(pieces(text), maxlen=1)
    if not tail:
        return CODE
    last = tail[0]
    if last[0] == "open string":
        return STRING
    return COMMENT if last[0] == "comment" and last[3] == len(text) else CODE


OPENERS = {"(": ")", "[": "]", "{": "}"}
BRACKETS = re.compile(r"[()\[\]{}]")


def left_open(prefix: str) -> bool:
    """Whether a bracket or a string opened in the scanned end of `prefix` is still open
    at its end (the cursor). Only bracket characters are visited, so the full window
    costs well under a millisecond; a closer with nothing open (its opener lies before
    the window) counts nothing, as in `own_depths`."""
    text = window(prefix)
    stack: list[str] = []
    for kind, start, _, end in pieces(text):
        if kind == "open string":
            return True
        if kind == "code":
            for m in BRACKETS.finditer(text, start, end):
                c = m.group()
                if c in OPENERS:
                    stack.append(OPENERS[c])
                elif stack and c == stack[-1]:
                    stack.pop()
    return bool(stack)


def own_depths(text: str) -> list[int]:
    """How many brackets and strings that `text` itself opened are still open before each
    of its positions (len(text) + 1 values). A closer or a quote that closes something
    opened before `text` began (the prefix's `(`, an auto-closed quote) counts nothing, so
    depth 0 at a position means: everything right of it that closes, closes the prefix's.

    Used to tell a completion's own balanced `len(x)` from a trailing `)` that duplicates
    the editor's auto-closed bracket. Comments run to the line end; escapes are skipped."""
    depths = [0] * (len(text) + 1)
    stack: list[str] = []          # closers expected, innermost last
    for kind, start, inner, end in pieces(text):
        if kind == "code":
            for j in range(start, end):
                c = text[j]
                if c in OPENERS:
                    stack.append(OPENERS[c])
                elif stack and c == stack[-1]:
                    stack.pop()
                depths[j + 1] = len(stack)
        elif kind == "comment":
            depths[start + 1:end + 1] = [len(stack)] * (end - start)
        else:                      # inside the string one deeper, after its closing quote not
            depths[start + 1:inner + 1] = [len(stack) + 1] * (inner - start)
            depths[inner + 1:end + 1] = [len(stack)] * (end - inner)
    return depths
