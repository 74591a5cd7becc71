"""Editors auto-close brackets and quotes: with `foo(|)` the `)` is already there. A
completion that ends by closing it would double it, so the closers already right of the
cursor are removed from the completion's end."""

from __future__ import annotations

from server.postprocess.context import CompletionContext

CLOSERS = ")]}\"'"


def apply(text: str, ctx: CompletionContext) -> str | None:
    rest = ctx.rest_of_line
    closers = rest[:len(rest) - len(rest.lstrip(CLOSERS))]
    if not closers or "\n" in text:
        return text
    body = text.rstrip()
    for n in range(len(closers), 0, -1):
        if body.endswith(closers[:n]):
            return body[:-n]
    return text
