"""Editors auto-close brackets and quotes: with `foo(|)` the `)` is already there. A
completion that ends by closing it would double it, so the closers already right of the
cursor are removed from the completion's end, but only those the completion did not open
itself: at `print(|)` the completion `len(x)` keeps its `)`, `x)` loses it."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext
from completion.syntax import own_depths

CLOSERS = ")]}\"'"


def apply(text: str, ctx: CompletionContext) -> str | None:
    rest = ctx.rest_of_line
    closers = rest[:len(rest) - len(rest.lstrip(CLOSERS))]
    if not closers or "\n" in text:
        return text
    body = text.rstrip()
    depths = own_depths(body)
    for n in range(len(closers), 0, -1):
        if body.endswith(closers[:n]) and depths[len(body) - n] == 0:
            return body[:-n]
    return text
