"""Post-processing: small pure functions, each `apply(text, ctx) -> text | None`, run as a
chain. None drops the candidate. Adding a rule is adding a module and a line below.

Phase "pre-cache" runs on raw model output before results are cached (they depend only
on the document around the cursor); "post-cache" runs on every answer served, cached or
not (they can depend on what the user typed since).
"""

from __future__ import annotations

from collections.abc import Callable

from completion.postprocess import (
    auto_closed,
    block_scope,
    duplicate_suffix,
    min_length,
    open_string,
    repetition,
    trailing_whitespace,
    whole_statements,
)
from completion.postprocess.context import CompletionContext

Filter = Callable[[str, CompletionContext], str | None]

PRE_CACHE: list[Filter] = [
    block_scope.apply,          # stop at the end of the indentation block
    repetition.apply,           # cut looping output, drop if nothing is left
    open_string.apply,          # never end inside a string the completion opened
    duplicate_suffix.apply,     # never repeat the rest of the line or the next lines
    whole_statements.apply,     # a new block body: only whole lines that parse
    trailing_whitespace.apply,
]
POST_CACHE: list[Filter] = [
    auto_closed.apply,          # the editor already typed the closing bracket/quote
    min_length.apply,           # too short to be worth showing
]


def run_chain(text: str, ctx: CompletionContext, chain: list[Filter]) -> str | None:
    for f in chain:
        out = f(text, ctx)
        if out is None:
            return None
        text = out
    return text


__all__ = ["POST_CACHE", "PRE_CACHE", "CompletionContext", "Filter", "run_chain"]
