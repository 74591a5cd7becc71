"""No trailing whitespace or blank lines at the end of a suggestion: accepting it would
leave them in the file."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext


def apply(text: str, ctx: CompletionContext) -> str | None:
    out = "\n".join(line.rstrip() for line in text.rstrip().split("\n"))
    if not ctx.multiline:
        out = out.split("\n", 1)[0]
    # A suggestion's own first characters may be spaces (after "x =" the model writes " 1").
    lead = len(text) - len(text.lstrip(" \t"))
    return (text[:lead] + out.lstrip(" \t")) if out.strip() else None
