"""Drop completions too short to be worth a suggestion: empty, or a lone punctuation
character that the user would type faster than read."""

from __future__ import annotations

from completion.postprocess.context import CompletionContext


def apply(text: str, ctx: CompletionContext) -> str | None:
    stripped = text.strip()
    if not stripped:
        return None
    if len(stripped) == 1 and not stripped.isalnum() and not ctx.multiline:
        return None
    return text
