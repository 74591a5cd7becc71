"""Small models loop: the same line again and again, or the same few characters. Cut the
completion where a line repeats for the third time in a row, and drop single-line text
that is one short pattern repeated."""

from __future__ import annotations

import re

from server.postprocess.context import CompletionContext

SHORT_LOOP = re.compile(r"(.{1,8}?)\1{5,}")


def apply(text: str, ctx: CompletionContext) -> str | None:
    lines = text.split("\n")
    for i in range(2, len(lines)):
        if lines[i].strip() and lines[i] == lines[i - 1] == lines[i - 2]:
            text = "\n".join(lines[:i])
            break
    m = SHORT_LOOP.search(text)
    if m:
        if not text[:m.start()].strip():
            return None                         # nothing but the loop
        text = text[:m.start() + len(m.group(1))]
    return text if text.strip() else None
