"""Stop at the end of the indentation block the completion started in: a multi-line
completion ends before the first non-blank line indented left of the cursor's line."""

from __future__ import annotations

from collections.abc import Callable

from completion.postprocess.context import CompletionContext


def block_end(indent: int) -> Callable[[str], int | None]:
    """A stop function for generation: the index where a non-blank line starts left of
    `indent` columns (the completion's first line is the cursor's own), else None."""

    def stop(text: str) -> int | None:
        pos = 0
        for line in text.split("\n")[1:]:
            pos = text.index("\n", pos) + 1
            if line.strip() and len(line) - len(line.lstrip()) < indent:
                return pos - 1
        return None

    return stop


def apply(text: str, ctx: CompletionContext) -> str | None:
    if not ctx.multiline:
        return text.split("\n", 1)[0]
    cut = block_end(max(1, ctx.indent))(text)
    return text if cut is None else text[:cut]
