"""Never leave the user inside a string the completion opened: a multi-line completion
that ends inside a string it started (typically a docstring cut off by the token limit)
is cut back to the last line end outside any string, and dropped if nothing is left.
A block body that is nothing but such a docstring keeps its first paragraph instead,
closed with the same quotes on a line of its own: a small model's docstrings run long,
and an empty suggestion in a new function body helps no one.

Single-line completions are left alone: an editor often auto-closes the quote, and the
rest of the line is checked by other rules."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext
from completion.syntax import CODE, cursor_region


def apply(text: str, ctx: CompletionContext) -> str | None:
    if not ctx.multiline or cursor_region(ctx.prefix) != CODE:
        return text
    # The prefix ends in plain code, so scanning the completion alone from a fresh state
    # gives the same answer as scanning the prefix and the completion together.
    if cursor_region(text) == CODE:
        return text
    closed = first_paragraph_closed(text, ctx)
    if closed is not None:
        return closed
    ends = [i for i, c in enumerate(text) if c == "\n"]
    for end in reversed(ends):
        if cursor_region(text[:end]) == CODE:
            return text[:end] if text[:end].strip() else None
    return None


def first_paragraph_closed(text: str, ctx: CompletionContext) -> str | None:
    """A completion that opens a docstring at the cursor and never closes it, cut after
    the docstring's first paragraph (complete lines only) and closed; None otherwise."""
    quotes = text[:3]
    if quotes not in ('"""', "'''") or quotes in text[3:] or ctx.current_line.strip():
        return None
    lines = text.split("\n")[:-1]            # the last line may be cut mid-word
    kept = []
    for line in lines:
        if not line.strip() and any(k.strip(" \t" + quotes) for k in kept):
            break
        kept.append(line)
    if not any(k.strip(" \t" + quotes) for k in kept):
        return None
    return "\n".join(kept).rstrip() + "\n" + ctx.current_line + quotes
