"""Is the cursor inside a comment or a string? A small scanner over the end of the prefix.

Used for the `comments` / `strings` settings (some users want no ghost text while writing
prose). The scan starts at most `WINDOW` characters back, at a line start, so a huge file
costs a bounded amount of work; a triple-quoted string opened before that window is not
seen (then the answer is "code", the permissive choice).
"""

from __future__ import annotations

WINDOW = 20_000
CODE, COMMENT, STRING = "code", "comment", "string"


def cursor_region(prefix: str) -> str:
    start = max(0, len(prefix) - WINDOW)
    if start:
        nl = prefix.find("\n", start)
        start = nl + 1 if nl != -1 else len(prefix)
    text = prefix[start:]
    i, n = 0, len(text)
    quote: str | None = None       # the open string's delimiter: ' " ''' or """
    while i < n:
        c = text[i]
        if quote is None:
            if c == "#":
                nl = text.find("\n", i)
                if nl == -1:
                    return COMMENT
                i = nl + 1
                continue
            if c in "'\"":
                quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else c
                i += len(quote)
                continue
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if text.startswith(quote, i):
            i += len(quote)
            quote = None
            continue
        if c == "\n" and len(quote) == 1:
            quote = None           # an unterminated one-line string ends at the line end
        i += 1
    return CODE if quote is None else STRING


OPENERS = {"(": ")", "[": "]", "{": "}"}


def own_depths(text: str) -> list[int]:
    """How many brackets and strings that `text` itself opened are still open before each
    of its positions (len(text) + 1 values). A closer or a quote that closes something
    opened before `text` began (the prefix's `(`, an auto-closed quote) counts nothing, so
    depth 0 at a position means: everything right of it that closes, closes the prefix's.

    Used to tell a completion's own balanced `len(x)` from a trailing `)` that duplicates
    the editor's auto-closed bracket. Comments run to the line end; escapes are skipped."""
    depths = [0] * (len(text) + 1)
    stack: list[str] = []          # closers expected, innermost last; a quote for a string
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        top = stack[-1] if stack else None
        step = 1
        if top is not None and top[0] in "'\"":          # inside a string it opened
            if c == "\\":
                step = 2
            elif text.startswith(top, i):
                stack.pop()
                step = len(top)
            elif c == "\n" and len(top) == 1:
                stack.pop()
        elif c == "#":
            nl = text.find("\n", i)
            step = (nl if nl != -1 else n) - i
        elif c in "'\"":
            quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else c
            stack.append(quote)
            step = len(quote)
        elif c in OPENERS:
            stack.append(OPENERS[c])
        elif c in ")]}" and top == c:
            stack.pop()
        for j in range(i + 1, min(n, i + step) + 1):
            depths[j] = len(stack)
        i += step
    return depths
