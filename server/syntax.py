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
