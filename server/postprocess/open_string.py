"""Never leave the user inside a string the completion opened: a multi-line completion
that ends inside a string it started (typically a docstring cut off by the token limit)
is cut back to the last line end outside any string, and dropped if nothing is left.

Single-line completions are left alone: an editor often auto-closes the quote, and the
rest of the line is checked by other rules."""

from __future__ import annotations

from server.postprocess.context import CompletionContext
from server.syntax import CODE, cursor_region


def apply(text: str, ctx: CompletionContext) -> str | None:
    if not ctx.multiline or cursor_region(ctx.prefix) != CODE:
        return text
    # The prefix ends in plain code, so scanning the completion alone from a fresh state
    # gives the same answer as scanning the prefix and the completion together.
    if cursor_region(text) == CODE:
        return text
    ends = [i for i, c in enumerate(text) if c == "\n"]
    for end in reversed(ends):
        if cursor_region(text[:end]) == CODE:
            return text[:end] if text[:end].strip() else None
    return None
